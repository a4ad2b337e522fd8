"""The rate limiter's in-process storage: the library's answers, its clean-up in the event loop
(no thread per key), bounded by what is still counted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter

from relayline.limits import memory_storage
from relayline.limits.memory_storage import InlineExpiryMemoryStorage
from relayline.limits.rate_limiter import storage_for_url


def test_memory_urls_get_the_inline_storage() -> None:
    assert isinstance(storage_for_url("memory://"), InlineExpiryMemoryStorage)
    assert isinstance(storage_for_url("async+memory://"), InlineExpiryMemoryStorage)


async def test_hits_use_no_thread_and_start_no_library_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the storage hopped to a thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    storage = InlineExpiryMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    item = parse("3/second")
    for key in ("a", "b", "c"):
        assert await limiter.hit(item, key)
    await asyncio.sleep(0)
    assert storage.timer is None  # the library's clean-up task was never started


async def test_the_moving_window_answers_as_the_library_does() -> None:
    storage = InlineExpiryMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    item = parse("3/second")
    assert [await limiter.hit(item, "k") for _ in range(4)] == [True, True, True, False]
    stats = await limiter.get_window_stats(item, "k")
    assert stats.remaining == 0
    assert 0 < stats.reset_time - time.time() <= 1.0
    assert await limiter.hit(item, "other")  # keys are apart


async def test_a_round_drops_expired_entries_and_keeps_live_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = InlineExpiryMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    short, long = parse("5/second"), parse("5/hour")
    for i in range(1000):
        assert await limiter.hit(short, f"short-{i}")
    assert await limiter.hit(long, "long")
    assert await limiter.hit(long, "long")
    assert len(storage.events) == 1001
    later = time.time() + 2  # the one-second entries have expired; the hour's have not
    storage._round, storage._next_round = [], 0.0  # a round is due
    monkeypatch.setattr(memory_storage, "PASS_EVERY_S", 3600.0)
    slices = []
    for _ in range(10):
        slices.append(storage.expire_some(later))
        if not storage._round:
            break
    assert slices == [256, 256, 256, 233]  # one round over every key, in slices
    kept = long.key_for("long")
    assert list(storage.events) == [kept]
    assert len(storage.events[kept]) == 2
    assert set(storage.locks) <= {kept}
    # What is left still counts.
    stats = await limiter.get_window_stats(long, "long")
    assert stats.remaining == 3


async def test_a_slice_looks_at_a_bounded_number_of_keys() -> None:
    storage = InlineExpiryMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    item = parse("5/second")
    storage._next_round = time.monotonic() + 3600  # no round while the keys are added
    for i in range(1000):
        await limiter.hit(item, f"k{i}")
    storage._next_round = 0.0
    assert storage.expire_some() == memory_storage.SLICE_KEYS
    assert len(storage._round) == 1000 - memory_storage.SLICE_KEYS


async def test_rounds_start_at_most_every_pass_interval() -> None:
    storage = InlineExpiryMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    item = parse("5/second")
    await limiter.hit(item, "k")  # starts a round (the first is due at once) and ends it
    assert storage._round == []
    assert storage.expire_some() == 0  # the next round is not due yet
    storage._next_round = time.monotonic()
    assert storage.expire_some() == 1


async def test_the_library_calls_the_hook_on_every_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook is the library's private ``__schedule_expiry``: if a release stops calling it,
    expired entries would pile up; this fails first."""
    calls: list[int] = []
    real = InlineExpiryMemoryStorage.expire_some

    def counting(self: InlineExpiryMemoryStorage, now: float | None = None) -> int:
        calls.append(1)
        return real(self, now)

    monkeypatch.setattr(InlineExpiryMemoryStorage, "expire_some", counting)
    limiter = MovingWindowRateLimiter(InlineExpiryMemoryStorage())
    item = parse("5/second")
    for _ in range(3):
        await limiter.hit(item, "k")
    assert len(calls) == 3
