"""ConnectionCaps: concurrent connection caps per key, released on every exit path."""

from __future__ import annotations

import asyncio

import pytest

from relayline.errors import RateLimited
from relayline.limits import (
    TOO_MANY_CONNECTIONS,
    ConnectionCaps,
    ConnectionCapStore,
    MemoryConnectionCapStore,
)


@pytest.fixture
def store() -> MemoryConnectionCapStore:
    return MemoryConnectionCapStore()


@pytest.fixture
def caps(store: MemoryConnectionCapStore) -> ConnectionCaps:
    return ConnectionCaps(store)


async def test_default_store_is_in_process() -> None:
    # The annotation is checked by mypy: the memory store satisfies the protocol.
    store: ConnectionCapStore = ConnectionCaps().store
    assert isinstance(store, MemoryConnectionCapStore)
    assert await store.acquire("ip", "k", 1)


async def test_acquire_up_to_the_limit_then_refuse(caps: ConnectionCaps) -> None:
    assert await caps.acquire("ip", "203.0.113.7", 2)
    assert await caps.acquire("ip", "203.0.113.7", 2)
    assert not await caps.acquire("ip", "203.0.113.7", 2)
    assert await caps.count("ip", "203.0.113.7") == 2


async def test_release_frees_a_slot(caps: ConnectionCaps, store: MemoryConnectionCapStore) -> None:
    assert await caps.acquire("identity", "tenant-a", 1)
    assert not await caps.acquire("identity", "tenant-a", 1)
    await caps.release("identity", "tenant-a")
    assert await caps.count("identity", "tenant-a") == 0
    assert len(store) == 0  # a slot without holders costs nothing
    assert await caps.acquire("identity", "tenant-a", 1)


async def test_release_without_holder_is_a_no_op(caps: ConnectionCaps) -> None:
    await caps.release("ip", "nobody")
    assert await caps.count("ip", "nobody") == 0
    assert await caps.acquire("ip", "nobody", 1)
    assert not await caps.acquire("ip", "nobody", 1)


async def test_kinds_and_keys_are_independent(caps: ConnectionCaps) -> None:
    assert await caps.acquire("ip", "k", 1)
    assert await caps.acquire("identity", "k", 1)
    assert await caps.acquire("ip", "other", 1)


async def test_concurrent_acquires_never_exceed_the_limit(caps: ConnectionCaps) -> None:
    results = await asyncio.gather(*(caps.acquire("ip", "k", 3) for _ in range(20)))
    assert results.count(True) == 3
    assert await caps.count("ip", "k") == 3


async def test_hold_refuses_with_too_many_connections(caps: ConnectionCaps) -> None:
    async with caps.hold("identity", "tenant-a", 1):
        with pytest.raises(RateLimited) as caught:
            async with caps.hold("identity", "tenant-a", 1):
                pytest.fail("the body must not run when the cap is reached")
        assert await caps.count("identity", "tenant-a") == 1  # the refusal took nothing
    error = caught.value
    assert error.code == TOO_MANY_CONNECTIONS == "too_many_connections"
    assert error.status == 429
    assert error.retry_after == 5
    assert "identity" in error.detail


async def test_hold_releases_on_normal_exit(
    caps: ConnectionCaps, store: MemoryConnectionCapStore
) -> None:
    async with caps.hold("ip", "k", 1):
        assert await caps.count("ip", "k") == 1
    assert await caps.count("ip", "k") == 0
    assert len(store) == 0


async def test_hold_releases_on_exception(
    caps: ConnectionCaps, store: MemoryConnectionCapStore
) -> None:
    with pytest.raises(RuntimeError, match="socket closed"):
        async with caps.hold("ip", "k", 1):
            raise RuntimeError("socket closed")
    assert await caps.count("ip", "k") == 0
    assert len(store) == 0
    async with caps.hold("ip", "k", 1):
        pass


async def test_hold_releases_on_cancellation(caps: ConnectionCaps) -> None:
    entered = asyncio.Event()

    async def serve() -> None:
        async with caps.hold("ip", "k", 1):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(serve())
    await entered.wait()
    assert await caps.count("ip", "k") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await caps.count("ip", "k") == 0


async def test_nested_holds_release_the_outer_when_the_inner_is_refused(
    caps: ConnectionCaps,
) -> None:
    # Typical WebSocket admission: per identity, then per IP.
    assert await caps.acquire("ip", "203.0.113.7", 1)
    with pytest.raises(RateLimited):
        async with caps.hold("identity", "tenant-a", 5), caps.hold("ip", "203.0.113.7", 1):
            pass
    assert await caps.count("identity", "tenant-a") == 0


async def test_limit_below_one_is_refused(caps: ConnectionCaps) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await caps.acquire("ip", "k", 0)
    with pytest.raises(ValueError, match="at least 1"):
        async with caps.hold("ip", "k", 0):
            pass


def test_retry_after_is_configurable() -> None:
    assert "retry_after=1" in repr(ConnectionCaps(retry_after=0))
