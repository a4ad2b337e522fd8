"""RateLimiter: limits per category and key, retry hints, and failing open on storage faults."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from relayline.config import ConfigError, Settings
from relayline.errors import RateLimited
from relayline.limits import CATEGORIES, RateLimiter, storage_for_url

REDIS_URL = "redis://127.0.0.1:6379/15"


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "rate_limit_storage_url": "memory://",
        "rate_limit_ip": "3/minute",
        "rate_limit_identity": "3/minute",
        "rate_limit_chat": "3/minute",
        "rate_limit_health": "3/minute",
        "rate_limit_public_sessions": "3/minute",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def limiter() -> AsyncIterator[RateLimiter]:
    async with RateLimiter(_settings()) as rl:
        yield rl


def _storage_errors(category: str) -> float:
    value = REGISTRY.get_sample_value(
        "relayline_rate_limit_storage_errors_total", {"category": category}
    )
    return value or 0.0


async def _cancel_timer(storage: MemoryStorage) -> None:
    # An injected storage stays open after the limiter closes; its expiry task is ours to stop.
    if storage.timer is not None and not storage.timer.done():
        storage.timer.cancel()
        await asyncio.gather(storage.timer, return_exceptions=True)


# --- limits ----------------------------------------------------------------------------------


async def test_raises_after_n_hits_with_sensible_retry_after(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.hit("ip", "203.0.113.7")
    with pytest.raises(RateLimited) as caught:
        await limiter.hit("ip", "203.0.113.7")
    assert caught.value.status == 429
    assert caught.value.code == "rate_limited"
    # The oldest of the three hits leaves the one-minute window in just under 60 s.
    assert 55 <= caught.value.retry_after <= 60


async def test_refused_hits_keep_being_refused(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.hit("chat", "c1")
    for _ in range(5):
        with pytest.raises(RateLimited):
            await limiter.hit("chat", "c1")


async def exhaust(limiter: RateLimiter, category: str, key: str, budget: int = 3) -> None:
    """Spend the whole budget (every hit accepted), then check the next one is refused."""
    for _ in range(budget):
        await limiter.hit(category, key)
    with pytest.raises(RateLimited):
        await limiter.hit(category, key)


async def test_separate_keys_are_independent(limiter: RateLimiter) -> None:
    await exhaust(limiter, "ip", "203.0.113.7")
    # The neighbour still has its whole budget, no more and no less.
    await exhaust(limiter, "ip", "203.0.113.8")


async def test_categories_are_independent(limiter: RateLimiter) -> None:
    await exhaust(limiter, "ip", "same")
    others = [category for category in CATEGORIES if category != "ip"]
    assert others
    for category in others:
        await exhaust(limiter, category, "same")


async def test_shortest_window_of_several_limits() -> None:
    # Listed longest first on purpose: the order in the setting must not matter.
    async with RateLimiter(_settings(rate_limit_chat="5/minute;2/second")) as rl:
        await rl.hit("chat", "k")
        await rl.hit("chat", "k")
        with pytest.raises(RateLimited) as caught:
            await rl.hit("chat", "k")
    assert caught.value.retry_after == 1


async def test_longest_window_of_several_limits() -> None:
    async with RateLimiter(_settings(rate_limit_chat="10/second;3/hour")) as rl:
        for _ in range(3):
            await rl.hit("chat", "k")
        with pytest.raises(RateLimited) as caught:
            await rl.hit("chat", "k")
    assert 3500 <= caught.value.retry_after <= 3600


async def test_retry_after_covers_every_exhausted_window() -> None:
    # Both windows are full; advertising the minute alone would invite a certain refusal.
    async with RateLimiter(_settings(rate_limit_chat="3/minute;3/hour")) as rl:
        for _ in range(3):
            await rl.hit("chat", "k")
        with pytest.raises(RateLimited) as caught:
            await rl.hit("chat", "k")
    assert caught.value.retry_after > 60


async def test_cost_counts_several_requests(limiter: RateLimiter) -> None:
    await limiter.hit("identity", "tenant-a", cost=2)
    with pytest.raises(RateLimited):
        await limiter.hit("identity", "tenant-a", cost=2)
    await limiter.hit("identity", "tenant-a")


async def test_default_settings_parse() -> None:
    async with RateLimiter(Settings(rate_limit_storage_url="memory://")) as rl:
        assert [str(item) for item in rl.limits_for("ip")] == [
            "60 per 1 second",
            "600 per 1 minute",
        ]
        for category in CATEGORIES:
            await rl.hit(category, "k")


async def test_programming_errors_raise(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="unknown rate-limit category"):
        await limiter.hit("nope", "k")
    with pytest.raises(ValueError, match="cost"):
        await limiter.hit("ip", "k", cost=0)


async def test_key_prefix_separates_limiters_sharing_a_storage() -> None:
    storage = MemoryStorage()
    settings = _settings()
    first = RateLimiter(settings, storage=storage, key_prefix="instance-a")
    second = RateLimiter(settings, storage=storage, key_prefix="instance-b")
    try:
        assert first.storage_key("ip", "1.2.3.4") == "instance-a:rl:ip:1.2.3.4"
        assert RateLimiter(settings, storage=storage).storage_key("ip", "x") == "rl:ip:x"
        for _ in range(3):
            await first.hit("ip", "1.2.3.4")
        with pytest.raises(RateLimited):
            await first.hit("ip", "1.2.3.4")
        await second.hit("ip", "1.2.3.4")
    finally:
        await first.close()
        await second.close()
        await _cancel_timer(storage)


# --- storage selection -----------------------------------------------------------------------


async def test_storage_for_url() -> None:
    memory = storage_for_url("memory://")  # the sync scheme is mapped to the async storage
    assert isinstance(memory, MemoryStorage)
    assert isinstance(memory, Storage)
    assert isinstance(storage_for_url("async+memory://"), MemoryStorage)
    storage = storage_for_url(REDIS_URL)  # builds the client lazily: no server needed
    assert isinstance(storage, RedisStorage)
    await storage.bridge.storage.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "url", ["memcached://127.0.0.1:11211", "mongodb://user:s3cret@db/x", "nonsense", ""]
)
def test_unsupported_storage_url_fails_at_start_up(url: str) -> None:
    with pytest.raises(ConfigError, match="RELAYLINE_RATE_LIMIT_STORAGE_URL") as caught:
        storage_for_url(url)
    assert "s3cret" not in str(caught.value)


# --- failing open ----------------------------------------------------------------------------


class BrokenStorage(MemoryStorage):
    """Every operation fails as a lost Redis connection would."""

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        raise ConnectionError("storage down")

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        raise ConnectionError("storage down")

    async def check(self) -> bool:
        raise ConnectionError("storage down")


class HangingStorage(MemoryStorage):
    """Never answers, as a Redis behind a dropped route would."""

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        await asyncio.Event().wait()
        return True


async def test_storage_failure_fails_open() -> None:
    limiter = RateLimiter(_settings(), storage=BrokenStorage())
    before = _storage_errors("chat")
    with capture_logs() as logs:
        for _ in range(10):  # far beyond the 3/minute limit
            await limiter.hit("chat", "k")
    assert _storage_errors("chat") == before + 10
    warnings = [entry for entry in logs if entry["event"] == "rate_limit_storage_failed"]
    # One line for the outage, not one per request.
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["error"] == "ConnectionError"
    assert warnings[0]["category"] == "chat"
    assert await limiter.check_ready() is False
    await limiter.close()


async def test_stalled_storage_fails_open_within_the_timeout() -> None:
    limiter = RateLimiter(_settings(), storage=HangingStorage(), timeout_s=0.05)
    before = _storage_errors("ip")
    async with asyncio.timeout(2):
        await limiter.hit("ip", "k")
    assert _storage_errors("ip") == before + 1


async def test_stats_failure_after_a_refusal_still_refuses() -> None:
    class NoStats(MemoryStorage):
        async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
            raise ConnectionError("storage down")

    storage = NoStats()
    limiter = RateLimiter(_settings(), storage=storage)
    try:
        for _ in range(3):
            await limiter.hit("ip", "k")
        with pytest.raises(RateLimited) as caught:
            await limiter.hit("ip", "k")
        assert caught.value.retry_after == 60  # a whole window: the longest a slot can take
    finally:
        await _cancel_timer(storage)


async def test_unreachable_redis_fails_open() -> None:
    # Nothing listens on port 1: every command fails with a refused connection.
    async with RateLimiter(_settings(rate_limit_storage_url="redis://127.0.0.1:1/0")) as rl:
        before = _storage_errors("identity")
        for _ in range(5):
            await rl.hit("identity", "k")
        assert _storage_errors("identity") == before + 5
        assert await rl.check_ready() is False


async def test_memory_storage_is_ready(limiter: RateLimiter) -> None:
    assert await limiter.check_ready() is True


async def test_close_is_idempotent() -> None:
    limiter = RateLimiter(_settings())
    await limiter.hit("ip", "k")
    await limiter.close()
    await limiter.close()


# --- the real Redis --------------------------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    except (OSError, redis_asyncio.RedisError):
        await client.aclose()
        pytest.skip("redis not reachable at 127.0.0.1:6379")
    try:
        yield client
    finally:
        await client.aclose()


async def _keys(client: redis_asyncio.Redis, prefix: str) -> list[bytes]:
    return [key async for key in client.scan_iter(match=f"*{prefix}:rl:*")]


@pytest.mark.redis
async def test_redis_storage(redis_client: redis_asyncio.Redis) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    settings = _settings(rate_limit_storage_url="async+" + REDIS_URL)
    try:
        async with RateLimiter(settings, key_prefix=prefix) as first:
            assert await first.check_ready() is True
            for _ in range(3):
                await first.hit("chat", "room-1")
            with pytest.raises(RateLimited) as caught:
                await first.hit("chat", "room-1")
            assert 55 <= caught.value.retry_after <= 60
            await first.hit("chat", "room-2")
            # A second instance sharing the Redis and the prefix sees the same counters.
            async with RateLimiter(settings, key_prefix=prefix) as second:
                with pytest.raises(RateLimited):
                    await second.hit("chat", "room-1")
        assert len(await _keys(redis_client, prefix)) == 2
    finally:
        keys = await _keys(redis_client, prefix)
        if keys:
            await redis_client.delete(*keys)
    assert await _keys(redis_client, prefix) == []
