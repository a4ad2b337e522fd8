"""``relayline worker`` runs on uvloop when it is installed, on asyncio's own loop otherwise."""

from __future__ import annotations

import asyncio
import socket
import sys
from types import SimpleNamespace

import pytest

from relayline.worker.cork import CorkedTransport, cork
from relayline.worker.daemon import run_loop


def _loop_module() -> str:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_loop(main())
    assert len(seen) == 1
    return seen[0]


def test_the_worker_runs_on_uvloop_when_it_is_installed() -> None:
    pytest.importorskip("uvloop", reason="uvloop comes with the relay's server extra")
    assert _loop_module().startswith("uvloop")


def test_without_uvloop_the_worker_runs_on_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert _loop_module().startswith("asyncio")


def test_on_uvloop_the_frames_to_the_relay_are_still_corked() -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop comes with the relay's server extra")

    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
            try:
                # uvloop's transports are not subclasses of asyncio.Transport; corked all the same.
                assert not isinstance(transport, asyncio.Transport)
                connection = SimpleNamespace(transport=transport)
                assert cork(connection) is True
                assert isinstance(connection.transport, CorkedTransport)
            finally:
                transport.close()
                await asyncio.sleep(0.01)

    uvloop.run(main())
