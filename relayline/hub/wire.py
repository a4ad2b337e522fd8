"""The raw side of a client WebSocket: frames encoded once, written straight to the transport.

The relay's protocol class (:mod:`relayline.hub.protocol`) puts a :class:`Wire` into the ASGI
scope under :data:`WIRE_EXTENSION`. The hub writes pre-framed bytes through it, so one event
is framed once and the same bytes go to every subscriber (server frames are unmasked), and it
never awaits a socket: back-pressure is read from the transport's pause/resume signals.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

WIRE_EXTENSION = "relayline.wire"

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked, uncompressed text frame carrying ``payload`` (valid UTF-8)."""
    size = len(payload)
    if size < 126:
        return _SHORT.pack(0x81, size) + payload
    if size < 65536:
        return _MEDIUM.pack(0x81, 126, size) + payload
    return _LONG.pack(0x81, 127, size) + payload


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
