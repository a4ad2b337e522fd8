"""Terminal frames on their way to the relay: one queue, one writer, a bound that pauses readers.

Sessions push frames here without waiting. One task writes them to the relay connection in
order (``await send(text)``, which itself waits while the socket's buffer is full, so a relay
that reads slowly slows this writer down). When more than ``max_bytes`` wait, :attr:`over`
turns true and sessions stop reading their PTY: the programs then block on their own writes
instead of the worker buffering without bound. Once the queue has drained below half the
bound, every paused session is called back to read again.

While no relay is connected, frames wait here (still bounded the same way: the sessions are
paused, not the frames dropped). A frame whose send fails with the connection is lost; the
worker sends each session's screen (a snapshot) when a connection comes back, which repairs
what viewers saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger("relayline.worker.terminals")

# A frame's JSON: str, or bytes already in UTF-8 (sent as a text frame all the same).
Frame = str | bytes
Send = Callable[[Frame], Awaitable[None]]


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


class TerminalOutbox:
    """Frames for the relay, in order; bounded by pausing their producers (never by dropping)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.queued: deque[Frame] = deque()
        self.queued_bytes = 0
        self._send: Send | None = None
        self._wake = asyncio.Event()
        self._resume: list[Callable[[], None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def over(self) -> bool:
        """Whether producers should stop until :meth:`when_drained` calls them back."""
        return self.queued_bytes > self.max_bytes

    @property
    def linked(self) -> bool:
        """Whether a relay connection takes the frames now."""
        return self._send is not None

    def push(self, frame: dict[str, Any]) -> None:
        self.push_encoded(encode(frame))

    def push_encoded(self, text: Frame) -> None:
        """Queue a frame already encoded as JSON (see :func:`encode`; bytes: in UTF-8)."""
        self.queued.append(text)
        self.queued_bytes += len(text)
        self._idle.clear()
        self._wake.set()

    def when_drained(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` once the queue is below half its bound."""
        self._resume.append(resume)

    def attach(self, send: Send) -> None:
        """A relay connection is up: write through ``send`` from now on."""
        self._send = send
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def detach(self) -> None:
        """The relay connection is gone: frames wait for the next one."""
        self._send = None

    async def drained(self, timeout_s: float) -> bool:
        """Wait until everything queued was written (or ``timeout_s``); whether it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self._idle.is_set()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    async def _write(self) -> None:
        while True:
            send = self._send
            if not self.queued or send is None:
                if not self.queued:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            text = self.queued[0]
            try:
                await send(text)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection went away mid-send: the frame is lost
                log.info("terminal_frame_lost", error=type(exc).__name__)
                if self._send is send:
                    self._send = None
            self.queued.popleft()
            self.queued_bytes -= len(text)
            if self._resume and self.queued_bytes <= self.max_bytes // 2:
                waiting, self._resume = self._resume, []
                for resume in waiting:
                    resume()
