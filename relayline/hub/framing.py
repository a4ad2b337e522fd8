"""Reading a client's RFC 6455 frames: the parse loop under the relay's WebSocket protocol.

:class:`FrameReader` turns received bytes into messages and control frames and leaves what to
do with them to its subclass (:class:`relayline.hub.protocol.RelayWebSocketProtocol`). Client
frames must be masked and carry no extension bits; control frames are final and at most 125
bytes; a message over the size limit is refused on its frame header (1009) and the rest of its
payload skipped as it arrives, never buffered; text must be UTF-8 (1007).

What one connection holds is bounded whatever the frames look like: a message being
reassembled is one buffer of at most the size limit, and it may have at most
:func:`max_fragments` frames (a flood of empty continuation frames is refused with 1009 like an
oversized message). Text is checked as it arrives — each fragment, and the received part of a
frame still incomplete — so invalid UTF-8 is refused where it appears, not when the message
ends.
"""

from __future__ import annotations

import asyncio
import codecs

from relayline.protocol.close_codes import Close

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3
"""Connection states: before ``accept``; open; a close frame sent or received; gone (or an
HTTP answer on its way out): nothing more is read."""

# RFC 6455 §7.4: the codes a peer may put in a close frame.
VALID_CLOSE_CODES = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015))
VALID_CLOSE_CODES |= frozenset(range(3000, 5000))

MIN_FRAGMENTS = 1024
FRAGMENT_BYTES = 64

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def max_fragments(max_size: int) -> int:
    """How many frames one message may span: one per :data:`FRAGMENT_BYTES` of the size limit,
    at least :data:`MIN_FRAGMENTS` (1,024 at the default 64 KiB limit, 262,144 at 16 MiB)."""
    return max(MIN_FRAGMENTS, max_size // FRAGMENT_BYTES)


class FrameReader(asyncio.Protocol):
    """Frame parsing state and loop; subclasses implement the ``_on_*`` hooks and ``_fail``."""

    __slots__ = (
        *("_buf", "_checked", "_frag", "_frag_count", "_max_size", "_skip", "_state", "_utf8"),
    )

    def __init__(self, max_size: int) -> None:
        self._state = CONNECTING
        self._max_size = max_size
        self._buf: bytearray | None = None  # an incomplete frame, kept for the next chunk
        self._skip = 0  # bytes still to drop of a refused frame
        self._frag: bytearray | None = None  # a fragmented message being collected
        self._frag_count = 0  # its frames so far
        # The UTF-8 check of the text message in progress (fragmented, or one frame received
        # in part), and how much of the pending frame's payload it has seen.
        self._utf8: codecs.IncrementalDecoder | None = None
        self._checked = 0

    # Hooks

    def _hold(self) -> bool:
        """True when the app is behind: stop parsing (and reading) for now."""
        return False

    def _on_message(self, text: str | None, data: bytes) -> None:
        """A complete message: ``text`` for a text message, else ``data``."""

    def _on_close_frame(self, code: int, reason: str) -> None:
        """The peer's close frame (code 1005 when it carried none)."""

    def _on_ping(self, payload: bytes) -> None:
        """A ping to answer."""

    def _fail(self, code: int, reason: str, *, final: bool = False) -> None:
        """The peer broke the protocol; close with ``code``. ``final``: the offence was in the
        peer's close frame, so nothing more will come: end the connection at once."""

    # Parsing

    def _feed(self, data: bytes) -> None:
        held = self._buf
        if held is None:
            self._parse(data)
        else:
            held += data
            self._buf = None
            self._parse(held)

    def _parse(self, buf: bytes | bytearray) -> None:
        """Handle every complete frame in ``buf``; keep the rest for the next chunk."""
        n = len(buf)
        pos = min(self._skip, n)
        self._skip -= pos
        while n - pos >= 2 and self._state != CLOSED:
            if self._hold():
                break
            first, second = buf[pos], buf[pos + 1]
            size = second & 0x7F
            at = pos + 2
            if size == 126:
                if n - at < 2:
                    break
                size = (buf[at] << 8) | buf[at + 1]
                at += 2
            elif size == 127:
                if n - at < 8:
                    break
                size = int.from_bytes(buf[at : at + 8], "big")
                at += 8
            opcode = first & 0x0F
            if not second & 0x80 or first & 0x70:
                self._fail(Close.PROTOCOL_ERROR, "frames must be masked, without extensions")
                return
            if opcode >= 8:
                if size > 125 or not first & 0x80 or opcode > 10:
                    self._fail(Close.PROTOCOL_ERROR, "invalid control frame")
                    return
            elif opcode > 2:
                self._fail(Close.PROTOCOL_ERROR, "unknown opcode")
                return
            elif size > self._max_size - (len(self._frag) if opcode == 0 and self._frag else 0):
                # Parsing goes on after the skipped payload, so the peer's answer to our
                # close frame is still seen.
                if self._state == OPEN:
                    self._fail(Close.TOO_BIG, "frame too big")
                end = at + 4 + size
                pos = min(end, n)
                self._skip = end - pos
                continue
            end = at + 4 + size
            if end > n:
                # A text frame still incomplete: check what has arrived of it.
                if self._state == OPEN and n > at + 4 + self._checked:
                    frag = self._frag
                    text = opcode == 1 if frag is None else opcode == 0 and self._utf8 is not None
                    if text and not self._check_partial(buf, at, n):
                        pos, self._skip = n, end - n  # refused: skip the rest, never buffer it
                break
            if size:
                # Unmasked straight from a view (one copy, not two). The view is released
                # before the loop goes on, so the buffer below can still be resized.
                with memoryview(buf)[at + 4 : end] as masked:
                    payload = apply_mask(masked, bytes(buf[at : at + 4]))
            else:
                payload = b""
            pos = end
            self._frame(first, opcode, payload)
        if pos < n and self._state != CLOSED:
            if isinstance(buf, bytearray):
                del buf[:pos]
                self._buf = buf
            else:
                self._buf = bytearray(buf[pos:])

    def _frame(self, first: int, opcode: int, payload: bytes) -> None:
        if opcode >= 8:
            if opcode == 8:
                self._close_frame(payload)
            elif opcode == 9 and self._state == OPEN:
                self._on_ping(payload)
            return  # a pong: receiving it already counted as a sign of life
        if self._state != OPEN:
            return  # past a close frame the app reads no more messages
        final = first & 0x80
        if opcode:
            if self._frag is not None:
                self._fail(Close.PROTOCOL_ERROR, "expected a continuation frame")
                return
            text = opcode == 1
            if final and self._utf8 is None:
                self._message(text, payload)  # the usual case: one frame, seen whole
                return
            if text and not self._check(payload, bool(final)):
                return
            if final:
                self._utf8 = None
                self._message(text, payload)
            else:
                self._frag, self._frag_count = bytearray(payload), 1
            return
        frag = self._frag
        if frag is None:
            self._fail(Close.PROTOCOL_ERROR, "continuation frame without a message")
            return
        self._frag_count += 1
        if self._frag_count > max_fragments(self._max_size):
            self._fail(Close.TOO_BIG, "too many fragments")
            return
        text = self._utf8 is not None
        if text and not self._check(payload, bool(final)):
            return
        frag += payload
        if final:
            self._reset_message()
            self._message(text, frag)

    def _message(self, text: bool, payload: bytes | bytearray) -> None:
        if not text:
            self._on_message(None, bytes(payload))
            return
        try:
            value = payload.decode()
        except UnicodeDecodeError:
            self._fail(Close.INVALID_DATA, "text is not valid UTF-8")
            return
        self._on_message(value, b"")

    def _check(self, payload: bytes, final: bool) -> bool:
        """Check a text frame's payload (past what was checked while it arrived) as part of
        the message in progress; refuse the message (1007) at the first invalid byte."""
        checked, self._checked = self._checked, 0
        decoder = self._utf8
        if decoder is None:
            decoder = self._utf8 = _utf8_decoder()
        try:
            decoder.decode(memoryview(payload)[checked:] if checked else payload, final)
        except UnicodeDecodeError:
            self._fail(Close.INVALID_DATA, "text is not valid UTF-8")
            return False
        return True

    def _check_partial(self, buf: bytes | bytearray, at: int, n: int) -> bool:
        """Check the received part of a text frame still incomplete (its mask at ``at``)."""
        checked = self._checked
        mask = bytes(buf[at : at + 4])
        if checked & 3:
            mask = mask[checked & 3 :] + mask[: checked & 3]
        with memoryview(buf)[at + 4 + checked : n] as masked:
            part = apply_mask(masked, mask)
        self._checked = n - at - 4
        decoder = self._utf8
        if decoder is None:
            decoder = self._utf8 = _utf8_decoder()
        try:
            decoder.decode(part)
        except UnicodeDecodeError:
            self._fail(Close.INVALID_DATA, "text is not valid UTF-8")
            return False
        return True

    def _reset_message(self) -> None:
        """Forget the message in progress (it ended, or the connection is closing)."""
        self._frag = self._utf8 = None
        self._frag_count = self._checked = 0

    def _close_frame(self, payload: bytes) -> None:
        if not payload:
            self._on_close_frame(1005, "")
            return
        code = int.from_bytes(payload[:2], "big")
        if len(payload) < 2 or code not in VALID_CLOSE_CODES:
            self._fail(Close.PROTOCOL_ERROR, "invalid close code")
            return
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            self._fail(Close.INVALID_DATA, "close reason is not valid UTF-8", final=True)
            return
        self._on_close_frame(code, reason)
