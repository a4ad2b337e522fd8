"""What a terminal program prints, on its way to the relay.

Bytes from the PTY are decoded incrementally (a character split across reads waits for its
other bytes; invalid bytes become U+FFFD), fed to the screen mirror, then coalesced into
``term.output`` frames by time and size, each frame within :data:`FRAME_MAX_BYTES` of JSON:
the first text after a quiet moment (no flush for ``flush_s``), and the first after a key was
typed (:meth:`TerminalOutput.typed`: most likely its echo), go at once; what follows within
``flush_s`` waits for the window to end, or for ``flush_chars`` characters. The screen is fed with
each flush, in one piece (which lets it skip what a flood scrolls off), before anything is
sent, so a snapshot taken after a flush describes exactly what was sent.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import Callable
from typing import Any

import orjson

from relayline.protocol.names import WorkerFrame
from relayline.worker.terminals.outbox import TerminalOutbox, encode
from relayline.worker.terminals.screen import ScreenMirror

FRAME_MAX_BYTES = 48 * 1024  # a term.output frame's JSON, well within the relay's frame limit


def escape(text: str) -> bytes:
    """``text`` as a JSON string, in UTF-8 (what :func:`json.dumps` with ``ensure_ascii=False``
    gives, at several times its speed). A lone surrogate, which UTF-8 cannot carry, is escaped
    as ``\\udXXX``."""
    try:
        return orjson.dumps(text)
    except orjson.JSONEncodeError:
        return json.dumps(text).encode()


def split_output(frame: dict[str, Any], text: str) -> list[bytes]:
    """``term.output`` frames carrying ``text`` as their last key, ``data``: JSON in UTF-8,
    each within :data:`FRAME_MAX_BYTES`."""
    head = encode(frame)[:-1].encode() + b',"data":'
    pieces = [text]
    frames: list[bytes] = []
    while pieces:
        piece = pieces.pop()
        encoded = b"%b%b}" % (head, escape(piece))
        if len(encoded) <= FRAME_MAX_BYTES or len(piece) < 2:
            frames.append(encoded)
        else:
            middle = len(piece) // 2
            pieces += [piece[middle:], piece[:middle]]  # popped first half first
    return frames


class TerminalOutput:
    """One session's output: decoder, screen, coalescing (see the module docstring).
    ``after_flush`` is called after every flush (the session checks the outbox's bound)."""

    def __init__(
        self,
        session_id: str,
        cols: int,
        rows: int,
        outbox: TerminalOutbox,
        *,
        flush_s: float,
        flush_chars: int,
        after_flush: Callable[[], None],
    ) -> None:
        self.session_id = session_id
        self.screen = ScreenMirror(cols, rows)
        self.cols, self.rows = cols, rows
        self.outbox = outbox
        self.flush_s = flush_s
        self.flush_chars = flush_chars
        self.after_flush = after_flush
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []
        self._pending_chars = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._last_flush = float("-inf")
        self._typed = False

    def take(self, data: bytes, *, final: bool = False) -> bool:
        """Decode and keep ``data`` (``final``: no more will come); whether any text came."""
        text = self._decoder.decode(data, final=final)
        if not text:
            return False
        self._pending.append(text)
        self._pending_chars += len(text)
        if self._pending_chars >= self.flush_chars:
            self.flush()
        elif self._typed:
            self.flush()  # most likely the echo of what was typed: at once
        elif self._timer is None:
            quiet = self._loop.time() - self._last_flush
            if quiet >= self.flush_s:
                self.flush()  # the first output after a quiet moment: at once
            else:
                self._timer = self._loop.call_later(self.flush_s - quiet, self.flush)
        return True

    def flush(self) -> None:
        """Send what waits as ``term.output`` frames."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        self._last_flush = self._loop.time()
        self._typed = False
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        self.screen.feed(text)
        base = {"type": WorkerFrame.TERM_OUTPUT, "id": self.session_id}
        for encoded in split_output(base, text):
            self.outbox.push_encoded(encoded)
        self.after_flush()

    def typed(self) -> None:
        """Input was written to the program: send the next output at once."""
        self._typed = True

    def snapshot(self) -> None:
        """Send the screen as it is after everything sent so far (``snapshot: true``)."""
        self.flush()
        frame = {
            "type": WorkerFrame.TERM_OUTPUT,
            "id": self.session_id,
            "snapshot": True,
            "cols": self.cols,
            "rows": self.rows,
        }
        for encoded in split_output(frame, self.screen.redraw()):
            self.outbox.push_encoded(encoded)

    def resize(self, cols: int, rows: int) -> None:
        self.flush()  # output so far was laid out for the old size
        self.cols, self.rows = cols, rows
        self.screen.resize(cols, rows)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
