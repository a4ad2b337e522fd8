""":pypi:`limits`' in-process storage (``memory://``) with its clean-up done in the event loop.

The library's asynchronous memory storage starts a clean-up pass after a hit whenever none is
running, and that pass hops to a worker thread once per key (a ``bisect`` on the key's entries)
before it trims: with fifty chats' keys, every hit at a quiet moment paid fifty thread round
trips. Measured in ``bench/turns.py``: 5% of the relay's CPU, and the threads' hand-offs of the
GIL on top. :class:`InlineExpiryMemoryStorage` keeps the library's counters, entries, strategy
and answers, and replaces only that pass: it runs where the hit runs, at most
:data:`SLICE_KEYS` keys at a time, and a new round over all keys starts at most every
:data:`PASS_EVERY_S`. Nothing it trims is still counted by a window: an entry leaves once its
own expiry (its window's length after its hit) has passed, as in the library's pass.

The hook is the library's private ``__schedule_expiry`` (called by every method that adds to
the storage); ``tests/limits/test_memory_storage.py`` fails if a release of the library stops
calling it.
"""

from __future__ import annotations

import bisect
import time
from typing import Final

from limits.aio.storage import MemoryStorage

PASS_EVERY_S: Final = 1.0
SLICE_KEYS: Final = 256


class InlineExpiryMemoryStorage(MemoryStorage):
    """``memory://`` for the rate limiter (see the module docstring)."""

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._round: list[str] = []  # keys still to look at in this round, last first
        self._next_round = 0.0  # time.monotonic() at which the next round may start

    async def _MemoryStorage__schedule_expiry(self) -> None:
        self.expire_some()

    def expire_some(self, now: float | None = None) -> int:
        """Look at the next slice of keys of the current round (starting a round when one is
        due); drop what has expired. The number of keys looked at."""
        if not self._round:
            started = time.monotonic()
            if started < self._next_round:
                return 0
            self._next_round = started + PASS_EVERY_S
            self._round = [*self.events, *self.expirations]
        wall = time.time() if now is None else now
        keys = self._round[-SLICE_KEYS:]
        del self._round[-SLICE_KEYS:]
        for key in keys:
            self._expire(key, wall)
        return len(keys)

    def _expire(self, key: str, now: float) -> None:
        # The entries are newest first, so their expiries fall along the list; no await here,
        # so no other task is inside this key's lock meanwhile.
        events = self.events.get(key)
        if events is not None:
            live = bisect.bisect_left(events, -now, key=lambda entry: -entry.expiry)
            del events[live:]
            if not events:
                del self.events[key]
                if key not in self.expirations:
                    self.locks.pop(key, None)
        expires = self.expirations.get(key)
        if expires is not None and expires <= now:
            self.storage.pop(key, None)
            del self.expirations[key]
            if key not in self.events:
                self.locks.pop(key, None)
