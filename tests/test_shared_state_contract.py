"""One contract per shared-state family, run against every implementation the factories pick:
in-process (no Redis URL) and Redis (the real server). The bus has its own contract suite
(tests/bus/test_bus_contract.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from relayline.backends import backend_kind
from relayline.bus.redis_streams import shared_client
from relayline.limits import create_cap_store
from relayline.turns.coordination import create_coordinator
from relayline.turns.signing import create_nonce_store
from tests.scaleout.test_shared_instances import REDIS, _redis_up


@pytest.fixture(params=["memory", "redis"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, str]]:
    """The process's one client (None in memory mode) and a key prefix of this test's own."""
    if request.param == "memory":
        yield None, "rltest:"
        return
    if not _redis_up():
        pytest.skip(f"Redis not reachable at {REDIS}")
    client = shared_client(REDIS)
    prefix = f"rltest:{secrets.token_hex(4)}:"
    try:
        yield client, prefix
    finally:
        cleaner = aredis.Redis.from_url(REDIS)
        keys = [key async for key in cleaner.scan_iter(match=f"{prefix}*")]
        if keys:
            await cleaner.delete(*keys)
        await cleaner.aclose()
        await client.aclose()


def test_the_url_picks_the_kind_and_refuses_others() -> None:
    assert backend_kind(None) == "memory" and backend_kind("memory://") == "memory"
    assert backend_kind("redis://h/0") == "redis" and backend_kind("rediss://h/0") == "redis"
    with pytest.raises(ValueError, match="redis://"):
        backend_kind("nats://h")


async def test_nonces_are_accepted_once_within_their_window(redis: tuple[Any, str]) -> None:
    client, prefix = redis
    store = create_nonce_store(client, prefix)
    assert await store.add("k1", "n1", 60)
    assert not await store.add("k1", "n1", 60)  # a replay
    assert await store.add("k2", "n1", 60)  # another key's nonce is its own
    # Check-and-record is atomic: of racing adds of one nonce, exactly one wins.
    results = await asyncio.gather(*(store.add("k1", "race", 60) for _ in range(20)))
    assert results.count(True) == 1


async def test_connection_caps_count_every_holder(redis: tuple[Any, str]) -> None:
    client, prefix = redis
    store = create_cap_store(client, prefix)
    if hasattr(store, "start"):
        await store.start()
    try:
        assert await store.acquire("ws_ip", "a", 2)
        assert await store.acquire("ws_ip", "a", 2)
        assert not await store.acquire("ws_ip", "a", 2)
        assert await store.acquire("ws_ip", "b", 2)
        assert await store.count("ws_ip", "a") == 2
        await store.release("ws_ip", "a")
        assert await store.count("ws_ip", "a") == 1
        assert await store.acquire("ws_ip", "a", 2)
        if client is not None:
            # A second instance on the same Redis sees the first one's holders.
            other = create_cap_store(client, prefix)
            await other.start()  # type: ignore[attr-defined]
            try:
                assert await other.count("ws_ip", "a") == 2
                assert not await other.acquire("ws_ip", "a", 2)
            finally:
                await other.close()  # type: ignore[attr-defined]
    finally:
        if hasattr(store, "close"):
            await store.close()


async def test_a_stopping_instance_drops_its_holds_in_one_step(
    redis: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, prefix = redis
    store = create_cap_store(client, prefix)
    if hasattr(store, "start"):
        await store.start()
    other = None
    try:
        for _ in range(3):
            assert await store.acquire("ws_ip", "a", 5)
        store.drop_all()
        if client is not None:
            # The releases of the closing sockets send nothing...
            sent: list[object] = []
            real = client.execute_command

            async def counting(*args: object, **kwargs: object) -> object:
                sent.append(args[0])
                return await real(*args, **kwargs)

            monkeypatch.setattr(client, "execute_command", counting)
            for _ in range(3):
                await store.release("ws_ip", "a")
            assert sent == []
            monkeypatch.undo()
            # ... and closing the store ends every hold at once, as another instance sees.
            await store.close()  # type: ignore[attr-defined]
            other = create_cap_store(client, prefix)
            await other.start()  # type: ignore[attr-defined]
            assert await other.count("ws_ip", "a") == 0
        else:
            assert await store.count("ws_ip", "a") == 0
            await store.release("ws_ip", "a")  # still a no-op
            assert await store.count("ws_ip", "a") == 0
    finally:
        if other is not None:
            await other.close()  # type: ignore[attr-defined]
        elif hasattr(store, "close"):
            await store.close()


async def test_coordinators_tell_the_other_instances_only(redis: tuple[Any, str]) -> None:
    client, prefix = redis
    first = create_coordinator(client, prefix, "instance-1")
    second = create_coordinator(client, prefix, "instance-2")
    assert first.instance_id == "instance-1" and first.shared == (client is not None)
    got_first: list[dict[str, Any]] = []
    got_second: list[dict[str, Any]] = []

    async def on_first(message: dict[str, Any]) -> None:
        got_first.append(message)

    async def on_second(message: dict[str, Any]) -> None:
        got_second.append(message)

    await first.start(on_first)
    await second.start(on_second)
    try:
        await first.set_approvals("chat", [{"approval_id": "a1", "deadline": 0}])
        if client is None:
            await first.broadcast({"kind": "wake"})
            assert got_first == [] and got_second == []
            assert await second.approvals("chat") == []  # nothing is shared by one instance
            return
        async with asyncio.timeout(10):
            while not got_second:
                await first.broadcast({"kind": "wake"})
                await asyncio.sleep(0.05)
        assert got_second[0]["kind"] == "wake" and got_second[0]["from"] == "instance-1"
        assert got_first == []  # never told its own broadcasts
        assert [a["approval_id"] for a in await second.approvals("chat")] == ["a1"]
        await first.set_approvals("chat", [])
        assert await second.approvals("chat") == []
    finally:
        await first.close()
        await second.close()
