"""A fault-injecting TCP proxy on 127.0.0.1, between a client (a browser's socket, a worker) and
the relay.

Every connection through it can be slowed (``latency_s`` on each forwarded piece), stalled
(nothing forwarded, both sockets left open), reset (both sides aborted: an RST, no FIN) or cut
half-open (``blackhole``: from then on nothing is forwarded and nothing is closed, as when a NAT
forgets the connection; neither side ever sees a FIN). New connections get the faults set at the
time they are made, unless ``only_existing``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class Link:
    """One proxied connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    latency_s: float = 0.0
    stalled: asyncio.Event = field(default_factory=asyncio.Event)  # set: forwarding is paused
    holed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()

    def blackhole(self) -> None:
        self.holed = True


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.links: list[Link] = []
        self.latency_s = 0.0
        self.refuse = False  # new connections are reset at once
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self.links:
            link.reset()
            for task in link.tasks:
                task.cancel()
        for link in self.links:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def open_links(self) -> list[Link]:
        return [link for link in self.links if not link.client.transport.is_closing()]

    def reset_all(self) -> None:
        for link in self.open_links():
            link.reset()

    def blackhole_all(self) -> None:
        for link in self.open_links():
            link.blackhole()

    def stall_all(self) -> None:
        for link in self.open_links():
            link.stalled.set()

    def resume_all(self) -> None:
        for link in self.links:
            link.stalled.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = Link(writer, up_writer, self.latency_s)
        self.links.append(link)
        link.tasks = [
            asyncio.ensure_future(self._pump(link, reader, up_writer)),
            asyncio.ensure_future(self._pump(link, up_reader, writer)),
        ]

    async def _pump(
        self, link: Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await source.read(65536)
                if link.holed:
                    # Half-open: swallow everything, forward nothing, close nothing.
                    if not data:
                        await asyncio.Event().wait()
                    continue
                if not data:
                    with contextlib.suppress(OSError):
                        sink.write_eof()
                    return
                while link.stalled.is_set() and not link.holed:
                    await asyncio.sleep(0.01)
                if link.holed:
                    continue
                if link.latency_s:
                    await asyncio.sleep(link.latency_s)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            link.reset()
