"""Frames to the relay written together: one socket write per event-loop pass, not per frame.

A worker streaming many answers sends a ``turn.delta`` frame per token of each, and each frame
was its own ``send`` system call (on loopback the sender's CPU also pays for the receiving side
of TCP). :class:`CorkedTransport` sits between a WebSocket connection and its transport: what the
connection writes during one pass of the event loop is kept, in order, and handed to the real
transport in one write at the start of the next pass (``call_soon``), so a pass that produced
many frames costs one system call. Nothing waits longer than that pass, and flow control is
unchanged: the real transport still pauses the connection when its buffer passes the high-water
mark, and :meth:`get_write_buffer_size` counts what is kept. Closing, half-closing and aborting
hand over (or, aborting, drop) what is kept first, so the order of bytes and ending is kept.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast


class CorkedTransport:
    """Wraps ``transport`` (see the module docstring); everything else is delegated."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._kept: list[bytes] = []
        self._size = 0

    @property
    def wrapped(self) -> asyncio.Transport:
        return self._transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._kept:
            self._loop.call_soon(self.flush)
        self._kept.append(bytes(data))
        self._size += len(data)

    def writelines(self, pieces: Any) -> None:
        for data in pieces:
            self.write(data)

    def flush(self) -> None:
        """Hand what is kept to the real transport now."""
        if not self._kept:
            return
        kept, self._kept, self._size = self._kept, [], 0
        if self._transport.is_closing():
            return  # the connection is gone; the transport would only count the attempt
        self._transport.write(kept[0] if len(kept) == 1 else b"".join(kept))

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._kept, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def cork(connection: Any) -> bool:
    """Put a :class:`CorkedTransport` under ``connection`` (a ``websockets`` asyncio connection)
    once it is open; False, and nothing changed, when it has no asyncio transport to wrap."""
    transport = getattr(connection, "transport", None)
    if isinstance(transport, CorkedTransport):
        return True
    # A stream transport: asyncio's, or uvloop's (which are not subclasses of asyncio.Transport).
    if not isinstance(transport, asyncio.Transport) and not callable(
        getattr(transport, "get_write_buffer_size", None)
    ):
        return False
    connection.transport = CorkedTransport(cast(asyncio.Transport, transport))
    return True
