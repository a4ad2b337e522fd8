"""The relay's WebSocket protocol for uvicorn: stock sans-I/O handling plus a :class:`Wire`.

uvicorn takes the protocol class through ``ws=``. This subclass keeps uvicorn's handshake and
ASGI plumbing and adds the side channel the hub writes through (see :mod:`relayline.hub.wire`).
It leans on uvicorn internals, which is why uvicorn is pinned to one minor version.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.http11 import Request

from relayline.hub.wire import WIRE_EXTENSION

CLOSE_GRACE_S = 2.0


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with a non-blocking write side channel."""

    send_buffer: int = 0  # SO_SNDBUF; 0 keeps the OS default
    high_water: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused = False
        self.last_seen = self.loop.time()
        self.on_drain: Callable[[], None] | None = None
        self._abort_timer: Any = None

    # uvicorn hooks

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=self.high_water)
        if self.send_buffer:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # A small kernel buffer makes a peer that stopped reading visible in
                # milliseconds instead of after megabytes.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.paused = False
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self.on_drain = None

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        super().data_received(data)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][WIRE_EXTENSION] = self

    def handle_pong(self, event: Frame) -> None:
        self.last_seen = self.loop.time()
        super().handle_pong(event)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self.paused = False
        if self.on_drain is not None:
            self.on_drain()

    # Wire

    @property
    def closed(self) -> bool:
        return self.close_sent or self.disconnected or self.transport.is_closing()

    def write(self, frame: bytes) -> None:
        if not self.closed:
            self.transport.write(frame)

    def writelines(self, frames: list[bytes]) -> None:
        if not self.closed:
            self.transport.writelines(frames)

    def ping(self) -> None:
        if self.closed:
            return
        self.conn.send_ping(struct.pack("!I", int.from_bytes(os.urandom(4), "big")))
        self.transport.write(b"".join(self.conn.data_to_send()))

    def close(self, code: int, reason: str = "") -> None:
        if self.closed or not self.handshake_complete:
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # A peer that stopped reading never drains our buffer, and transport.close() would
        # wait for it forever: give the close frame a moment, then abort.
        self._abort_timer = self.loop.call_later(CLOSE_GRACE_S, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            self.transport.abort()


def protocol_class(send_buffer: int, high_water: int) -> type[RelayWebSocketProtocol]:
    """A protocol class carrying this process's socket settings (uvicorn instantiates it)."""
    return type(
        "ConfiguredRelayWebSocketProtocol",
        (RelayWebSocketProtocol,),
        {"send_buffer": send_buffer, "high_water": high_water},
    )
