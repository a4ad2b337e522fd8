"""Run a relay in the current event loop on a free 127.0.0.1 port, for tests."""

from __future__ import annotations

import asyncio
import socket
from types import TracebackType
from typing import Self

from relayline.api.app import RelayApp
from relayline.config import Settings
from relayline.server import RelayUvicornServer, server_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RelayServer:
    """``async with RelayServer(settings) as server:`` serves the relay at ``server.url``."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.settings = settings
        self.port = port or free_port()
        self.server = RelayUvicornServer(server_config(settings, "127.0.0.1", self.port))
        self._task: asyncio.Task[None] | None = None

    @property
    def app(self) -> RelayApp:
        app = self.server.config.app
        assert isinstance(app, RelayApp)
        return app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def start(self) -> None:
        # capture_signals is a no-op outside the main thread and restores handlers on exit.
        self._task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("relay exited during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self._task, self.settings.shutdown_drain_s + 10)
        finally:
            self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
