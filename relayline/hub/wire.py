"""The raw side of a client WebSocket: frames encoded once, written straight to the transport.

The relay's protocol class (:mod:`relayline.hub.protocol`) puts a :class:`Wire` into the ASGI
scope under :data:`WIRE_EXTENSION`. The hub writes pre-framed bytes through it, so one event
is framed once and the same bytes go to every subscriber (server frames are unmasked), and it
never awaits a socket: back-pressure is read from the transport's pause/resume signals.
Frames written during one turn of the event loop go out together at its end
(:class:`WriteBatch`), so a burst of events costs one system call per socket.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Protocol
from weakref import WeakKeyDictionary

import structlog

WIRE_EXTENSION = "relayline.wire"

log = structlog.get_logger("relayline.ws")

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def _frame(first: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return _SHORT.pack(first, size) + payload
    if size < 65536:
        return _MEDIUM.pack(first, 126, size) + payload
    return _LONG.pack(first, 127, size) + payload


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked, uncompressed text frame carrying ``payload`` (valid UTF-8)."""
    return _frame(0x81, payload)


def binary_frame(payload: bytes) -> bytes:
    """A final, unmasked binary frame."""
    return _frame(0x82, payload)


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame; ``code`` None sends an empty body (the peer then reports 1005)."""
    if code is None:
        return b"\x88\x00"
    # A control frame carries at most 125 bytes; cut the reason on a character boundary.
    body = code.to_bytes(2, "big") + reason.encode()[:123].decode(errors="ignore").encode()
    return _frame(0x88, body)


def pong_frame(payload: bytes) -> bytes:
    return _frame(0x8A, payload)


PING_FRAME = b"\x89\x00"
"""A ping with an empty body: the answer only has to arrive, its content is never checked."""


class Wire(Protocol):
    """What the hub may do with a client socket, all without awaiting."""

    paused: bool
    """True while the transport's buffer is above its high-water mark."""

    last_seen: float
    """Loop time of the last bytes received from the peer (frames, pongs)."""

    on_drain: Callable[[], None] | None
    """Called when the transport drops below its low-water mark again."""

    def write(self, frame: bytes) -> None:
        """Write one or more complete frames; a closed or closing socket ignores it."""

    def writelines(self, frames: list[bytes]) -> None:
        """Write several complete frames in one call."""

    def ping(self) -> None:
        """Send a protocol ping (browsers answer with a pong on their own)."""

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame with ``code`` and drop the connection after a short grace
        period even if the peer never reads (so a stalled peer cannot hold memory)."""

    @property
    def closed(self) -> bool:
        """True once a close was sent or the connection was lost."""


class Corked(Protocol):
    """A socket holding frames written this turn of the loop."""

    transport: asyncio.Transport

    def flush(self) -> None:
        """Write the held frames now."""


class WriteBatch:
    """The sockets written to during this turn of the event loop, each flushed once at its
    end: a burst of frames leaves a socket in one system call instead of one per frame."""

    __slots__ = ("__weakref__", "dirty")

    def __init__(self) -> None:
        self.dirty: list[Corked] = []

    def add(self, wire: Corked) -> None:
        if not self.dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self.dirty.append(wire)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for wire in dirty:
            try:
                wire.flush()
            except Exception:  # one broken socket must not hold back the others' frames
                log.exception("ws_flush_failed")
                wire.transport.abort()


_batches: WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch] = WeakKeyDictionary()


def write_batch(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """The loop's write batch (one per event loop)."""
    batch = _batches.get(loop)
    if batch is None:
        batch = _batches[loop] = WriteBatch()
    return batch
