"""An answer's texts coalesced on the worker, before they become ``turn.delta`` frames.

The relay sends an answer to its viewers as at most one ``message.delta`` event per
``RELAYLINE_DELTA_COALESCE_MS`` (unless ``RELAYLINE_DELTA_COALESCE_CHARS`` of text wait), and
says so in each ``turn.assigned`` (``coalesce_ms`` and ``coalesce_chars``; a window of 0 or
none: every text as it comes, as for a completion of the OpenAI-compatible gateway). A worker
applying the same rule itself sends the relay one frame per event instead of one per token: at
30 words a second the relay reads, checks and publishes half the frames, and the worker writes
half. The worker says so in its ``hello`` (``"coalesces": true``), so that the relay publishes
its frames as they come (unless they come closer together than half a window, the slack for the
network's jitter).

The rule is the relay's (:mod:`relayline.turns.streaming`): the first text leaves at once, and
so does any text that finds the last frame a window old; a text that does not waits, with what
comes meanwhile, until the next text that does, or a window after its own arrival, or until
``max_chars`` wait. So frames are at least a window apart (but for the size) and no text waits
longer than one. :meth:`DeltaCoalescer.flush` sends what waits at once (before the turn's
ending, or a request for approval, so that the relay sees them in order);
:meth:`DeltaCoalescer.discard` drops it (a cancelled attempt's text is refused by the relay
anyway). Frames are sent in the order their texts came: a send puts its frame on the
connection before it first awaits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class DeltaCoalescer:
    __slots__ = (
        *("_chars", "_flushes", "_last", "_loop", "_max_chars", "_pending", "_send", "_timer"),
        "_window",
    )

    def __init__(
        self, window_s: float, max_chars: int, send: Callable[[str], Awaitable[None]]
    ) -> None:
        self._window = window_s
        self._max_chars = max_chars
        self._chars = 0  # of the pending texts
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._pending: list[str] = []
        self._last = float("-inf")  # loop time of the last text sent
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def add(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        self._chars += len(text)
        if self._chars >= self._max_chars or self._loop.time() - self._last >= self._window:
            await self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._window, self._timed_flush)

    async def flush(self) -> None:
        """Send whatever waits now (nothing when nothing does)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._chars = 0
        self._last = self._loop.time()
        await self._send(text)

    def discard(self) -> None:
        """Drop what waits, and the timer that would have sent it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        self._chars = 0

    def _timed_flush(self) -> None:
        self._timer = None
        task = self._loop.create_task(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)
