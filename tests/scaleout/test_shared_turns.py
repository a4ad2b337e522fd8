"""Turn dispatch shared by two relay instances on PostgreSQL and Redis: a turn posted to one
instance is served by a worker of the other, survives the death of the instance that
dispatched it, and is cancelled from either."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from relayline.store.models import Turn
from relayline.testing import OpError, RelayServer, WsHarness
from tests.conftest import SettingsFactory
from tests.fixtures import (
    KEY_ID,
    SECRET,
    FakeWorker,
    Tenants,
    Workers,
    answers,
    dispatcher_of,
    eventually,
    local_answer,
    new_tenant,
    post,
    until_event,
)
from tests.scaleout.test_shared_instances import REDIS, _redis_up

pytestmark = pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}")

PairFactory = Callable[..., Awaitable[tuple[RelayServer, RelayServer]]]


@pytest.fixture
async def make_pair(make_settings: SettingsFactory, own_pg_url: str) -> AsyncIterator[PairFactory]:
    prefix = f"rltest:{secrets.token_hex(4)}:"
    started: list[RelayServer] = []

    async def make(**overrides: Any) -> tuple[RelayServer, RelayServer]:
        values: dict[str, Any] = {
            "database_url": own_pg_url,
            "redis_url": REDIS,
            "redis_prefix": prefix,
            "worker_keys": [f"{KEY_ID}:{SECRET}"],
            "instances": 2,
            **overrides,
        }
        first = RelayServer(make_settings(**values))
        second = RelayServer(make_settings(**values))
        for server in (first, second):
            await server.start()
            started.append(server)
        return first, second

    yield make
    for server in reversed(started):
        await server.stop()
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(REDIS)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Workers]:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    made = Workers(workspace)
    yield made
    await made.close()


@pytest.fixture
async def tenants() -> AsyncIterator[Tenants]:
    made = Tenants()
    yield made
    await made.close()


async def stored_turn(relay: RelayServer, turn_id: str) -> Turn:
    async with relay.app.http.state.relay.db.read() as session:
        turn = await session.get(Turn, turn_id)
    assert turn is not None
    return turn


async def test_turn_posted_on_one_instance_is_answered_by_a_worker_of_the_other(
    make_pair: PairFactory, pool: Workers, tenants: Tenants
) -> None:
    a, b = await make_pair()
    await pool.start(b)
    tenant = await new_tenant(a, await tenants.client(a))
    chat = await tenant.chat()
    async with WsHarness(a, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        turn_id = await post(tenant, chat, "hello there")
        await until_event(ws, "message.delta", turn_id=turn_id)
        completed = await until_event(ws, "message.completed", turn_id=turn_id)
    expected = local_answer(("user", "hello there"))
    assert completed["data"]["content"] == expected
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "complete" and answer["content"] == expected
    assert dispatcher_of(a).running == {}


async def test_turn_of_an_instance_that_died_is_reclaimed_and_answered_once(
    make_pair: PairFactory, pool: Workers, tenants: Tenants
) -> None:
    a, b = await make_pair(turn_lease_s=1.0)
    tenant = await new_tenant(b, await tenants.client(b))
    chat = await tenant.chat()
    async with (
        FakeWorker(a, "doomed") as fake,
        WsHarness(b, token=tenant.key, topics=[f"chat:{chat}"]) as ws,
    ):
        turn_id = await post(tenant, chat, "survive this")
        assigned = await fake.expect("turn.assigned", 10)
        assert assigned["turn_id"] == turn_id and assigned["attempt"] == 1
        # Instance A dies: nothing renews its lease or notices its worker any more.
        await dispatcher_of(a).stop()
        await pool.start(b)
        retrying = await until_event(ws, "turn.retrying", turn_id=turn_id)
        assert retrying["data"] == {
            "turn_id": turn_id,
            "attempt": 2,
            "reason": "relay instance lost",
            "correlation_id": assigned["correlation_id"],  # the reclaim keeps it
        }
        completed = await until_event(ws, "message.completed", turn_id=turn_id)
        # The first attempt's worker answering late is refused by the attempt fence.
        await fake.send({"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "x"})
        await fake.send({"type": "turn.done", "turn_id": turn_id, "attempt": 1, "usage": {}})
    expected = local_answer(("user", "survive this"))
    assert completed["data"]["content"] == expected
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "complete" and answer["content"] == expected
    turn = await stored_turn(b, turn_id)
    assert turn.state == "completed" and turn.attempt == 2


async def test_cancel_posted_on_one_instance_stops_the_turn_running_on_the_other(
    make_pair: PairFactory, tenants: Tenants
) -> None:
    a, b = await make_pair()
    tenant = await new_tenant(a, await tenants.client(a))
    chat = await tenant.chat()
    async with (
        FakeWorker(b, "holder") as fake,
        WsHarness(a, token=tenant.key, topics=[f"chat:{chat}"]) as ws,
    ):
        turn_id = await post(tenant, chat, "stop me")
        assigned = await fake.expect("turn.assigned", 10)
        await fake.send(
            {
                "type": "turn.delta",
                "turn_id": turn_id,
                "attempt": assigned["attempt"],
                "text": "so far ",
            }
        )
        await until_event(ws, "message.delta", turn_id=turn_id)
        # A snapshot served by A shows the partial answer streamed through B.
        snapshot = (await tenant.http.get(f"/v1/chats/{chat}", headers=tenant.auth)).json()
        assert snapshot["partial_text"] == "so far "
        r = await tenant.http.post(f"/v1/chats/{chat}/cancel", headers=tenant.auth)
        assert r.json() == {"cancelled": True, "turn_id": turn_id}
        cancel = await fake.expect("turn.cancel", 10)
        assert cancel == {"type": "turn.cancel", "turn_id": turn_id, "attempt": 1}
        await until_event(ws, "turn.cancelled", turn_id=turn_id)

    async def partial_stored() -> bool:
        found = await answers(tenant, chat)
        return len(found) == 1 and found[0]["status"] == "cancelled"

    await eventually(partial_stored)
    (answer,) = await answers(tenant, chat)
    assert answer["content"] == "so far "
    assert (await stored_turn(a, turn_id)).state == "cancelled"
    assert dispatcher_of(b).running == {}


async def test_snapshot_served_by_one_instance_lists_approvals_asked_on_the_other(
    make_pair: PairFactory, tenants: Tenants
) -> None:
    a, b = await make_pair()
    tenant = await new_tenant(a, await tenants.client(a))
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    prefix = dispatcher_of(a).settings.redis_prefix
    import redis.asyncio as aredis

    redis = aredis.Redis.from_url(REDIS)
    key = f"{prefix}turns:approvals:{chat}"

    async def pending() -> list[dict[str, Any]]:
        r = await tenant.http.get(f"/v1/chats/{chat}", headers=tenant.auth)
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["pending_approvals"]
        return items

    async def ask(fake: FakeWorker, turn_id: str, approval_id: str) -> dict[str, Any]:
        await fake.send(
            {
                "type": "tool.approval_request",
                "turn_id": turn_id,
                "attempt": 1,
                "approval_id": approval_id,
                "tool": "run_command",
                "arguments": {"command": f"echo {approval_id}"},
                "deadline": int(time.time() * 1000) + 60_000,
            }
        )
        event = await until_event(ws, "tool.approval_requested", approval_id=approval_id)
        data: dict[str, Any] = event["data"]
        return data

    try:
        async with (
            FakeWorker(b, "asker") as fake,
            WsHarness(a, token=tenant.key, topics=[topic]) as ws,
        ):
            turn_id = await post(tenant, chat, "may I?")
            await fake.expect("turn.assigned", 10)
            assert turn_id in dispatcher_of(b).running and dispatcher_of(a).running == {}
            first = await ask(fake, turn_id, "first")
            # Served by A, which holds nothing of the turn: the request asked through B shows.
            assert await pending() == [first]
            assert await redis.ttl(key) > 0
            # An id B does not list is refused by A as B would refuse it: not found.
            with pytest.raises(OpError) as unknown:
                await ws.send_op("approve", topic=topic, approval_id="made-up", decision="deny")
            assert unknown.value.code == "not_found"
            # Decided through A and forwarded by B: no longer listed.
            await ws.send_op("approve", topic=topic, approval_id="first", decision="approve")
            assert (await fake.expect("tool.approval", 10))["approval_id"] == "first"
            await until_event(ws, "tool.approval_resolved", approval_id="first")
            assert await pending() == []
            assert not await redis.exists(key)
            # Still undecided when the turn ends: gone too, and so is the shared copy.
            second = await ask(fake, turn_id, "second")
            assert await pending() == [second]
            await fake.send({"type": "turn.done", "turn_id": turn_id, "attempt": 1, "usage": {}})
            await until_event(ws, "message.completed", turn_id=turn_id)
            assert await pending() == []

            async def copy_dropped() -> bool:
                return not await redis.exists(key)

            await eventually(copy_dropped)
    finally:
        await redis.aclose()


async def test_a_new_attempt_drops_approvals_an_instance_that_died_left_behind(
    make_pair: PairFactory, tenants: Tenants
) -> None:
    a, b = await make_pair()
    tenant = await new_tenant(a, await tenants.client(a))
    chat = await tenant.chat()
    turn_id = await post(tenant, chat, "start over")  # queued: no worker yet
    # What an instance that died mid-approval leaves in Redis for this turn: a request of its
    # attempt, which nobody can decide any more.
    stale = {
        "approval_id": "orphan",
        "turn_id": turn_id,
        "tool": "run_command",
        "arguments": {"command": "true"},
        "deadline": int(time.time() * 1000) + 600_000,
    }
    await dispatcher_of(a).coordinator.set_approvals(chat, [stale])
    async with FakeWorker(b, "fresh") as fake:
        assigned = await fake.expect("turn.assigned", 10)
        assert assigned["turn_id"] == turn_id
        r = await tenant.http.get(f"/v1/chats/{chat}", headers=tenant.auth)
        assert r.status_code == 200, r.text
        assert r.json()["turn"]["state"] == "running"
        assert r.json()["pending_approvals"] == []


async def test_the_operators_worker_list_shows_the_workers_of_every_instance(
    make_pair: PairFactory,
) -> None:
    import httpx

    from tests.conftest import ADMIN_KEY

    a, b = await make_pair()

    async def listed_by(relay: RelayServer) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=relay.url) as http:
            r = await http.get(
                "/v1/admin/workers", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            )
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async with FakeWorker(a, "on-a") as on_a, FakeWorker(b, "on-b") as on_b:
        ids = {on_a.worker_id: dispatcher_of(a), on_b.worker_id: dispatcher_of(b)}

        async def both_listed_by_both() -> bool:
            for relay in (a, b):
                listed = {w["worker_id"]: w["instance"] for w in await listed_by(relay)}
                expected = {w: d.coordinator.instance_id for w, d in ids.items()}
                if listed != expected:
                    return False
            return True

        await eventually(both_listed_by_both)
        gone = on_b.worker_id
        await on_b.close()

        async def dropped() -> bool:
            for relay in (a, b):
                if gone in {w["worker_id"] for w in await listed_by(relay)}:
                    return False
            return True

        await eventually(dropped)
