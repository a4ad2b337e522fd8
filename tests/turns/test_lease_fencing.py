"""Lease renewal is fenced by attempt: an instance whose turn was taken over by another attempt
(its lease ran out while it could not renew) learns it at its next renewal, and stops that
attempt without writing to the store or streaming into the chat again."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from sqlalchemy import update

from relayline.clock import now_ms
from relayline.store import turn_queue
from relayline.store.models import Turn
from relayline.testing import RelayServer, WsHarness
from tests.fixtures import (
    FakeWorker,
    RelayFactory,
    Tenants,
    dispatcher_of,
    post,
    until_event,
)

FAR_LEASE_MS = 3_600_000


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Relay settings for the store under test (PostgreSQL: a database of this test's own)."""
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("own_pg_url")}


async def set_turn(relay: RelayServer, turn_id: str, **values: Any) -> None:
    async with relay.app.http.state.relay.db.write() as session:
        await session.execute(update(Turn).where(Turn.id == turn_id).values(**values))


async def stored_turn(relay: RelayServer, turn_id: str) -> Turn:
    async with relay.app.http.state.relay.db.read() as session:
        turn = await session.get(Turn, turn_id)
    assert turn is not None
    return turn


async def test_attempt_taken_over_elsewhere_is_stopped_here_without_store_writes(
    turn_relay: RelayFactory, tenants: Tenants, backend: dict[str, Any]
) -> None:
    relay = await turn_relay(turn_lease_s=1.0, delta_coalesce_ms=0, **backend)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    dispatcher = dispatcher_of(relay)
    async with (
        WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
        FakeWorker(relay, "holder") as holder,
    ):

        async def keep_alive() -> None:
            # The worker stays alive and talkative: its in-memory lease never runs out, so only
            # the store can tell this instance that the turn is no longer its attempt's.
            while True:
                await holder.send({"type": "state", "status": "busy"})
                await asyncio.sleep(0.1)

        alive = asyncio.get_running_loop().create_task(keep_alive())
        try:
            turn_id = await post(tenant, chat, "who holds me?")
            assigned = await holder.expect("turn.assigned")
            assert assigned["turn_id"] == turn_id and assigned["attempt"] == 1
            frame = {"turn_id": turn_id, "attempt": 1}
            await holder.send({"type": "turn.delta", **frame, "text": "mine "})
            await until_event(ws, "message.delta", turn_id=turn_id, text="mine ")
            await holder.send(
                {
                    "type": "tool.approval_request",
                    **frame,
                    "approval_id": "old-ask",
                    "tool": "edit_file",
                    "arguments": {"path": "x.md"},
                }
            )
            await until_event(ws, "tool.approval_requested", approval_id="old-ask")
            # Meanwhile, its lease having run out, another instance reclaimed the turn and
            # started attempt 2 (and vouches for it).
            lease = now_ms() + FAR_LEASE_MS
            await set_turn(
                relay,
                turn_id,
                attempt=Turn.attempt + 1,
                worker_id="elsewhere",
                lease_expires_at=lease,
            )
            seen_before = len(ws.events(topic))
            cancel = await holder.expect("turn.cancel", 5)
            assert cancel == {"type": "turn.cancel", "turn_id": turn_id, "attempt": 1}
            assert turn_id not in dispatcher.running
            assert chat not in dispatcher.turns.by_chat
            # The old attempt's later frames are refused and publish nothing.
            await holder.send({"type": "turn.delta", **frame, "text": "STALE"})
            assert (await holder.expect("error", 5))["code"] == "stale_attempt"
            await holder.send({"type": "turn.done", **frame, "usage": {}})
            assert (await holder.expect("error", 5))["code"] == "stale_attempt"
            # Its open approval request went with it: nothing here decides it any more.
            assert dispatcher.approvals.open_for(chat) == []
            # Renewals keep running: the attempt it no longer holds is not renewed again.
            await asyncio.sleep(0.5)
        finally:
            alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await alive
    assert ws.events(topic)[seen_before:] == []
    texts = [e["data"]["text"] for e in ws.events(topic, "message.delta")]
    assert texts == ["mine "]
    turn = await stored_turn(relay, turn_id)
    assert (turn.state, turn.attempt, turn.worker_id) == ("running", 2, "elsewhere")
    assert turn.lease_expires_at == lease
    assert [f["attempt"] for f in holder.seen if f.get("type") == "turn.cancel"] == [1]


async def test_renewal_extends_only_the_held_attempt_and_reports_the_others(
    turn_relay: RelayFactory, tenants: Tenants, backend: dict[str, Any]
) -> None:
    relay = await turn_relay(**backend)
    tenant = await tenants.new(relay)
    kept, cancelled, taken, requeued, finished = [
        await post(tenant, await tenant.chat(), f"turn {n}") for n in range(5)
    ]
    soon = now_ms() + 60_000  # unexpired: the relay's own sweep leaves these rows alone
    await set_turn(relay, kept, state="running", attempt=1, lease_expires_at=soon)
    await set_turn(relay, cancelled, state="cancelled", attempt=1)
    await set_turn(relay, taken, state="running", attempt=2, lease_expires_at=soon)
    await set_turn(relay, requeued, state="queued", attempt=1)
    await set_turn(relay, finished, state="failed", attempt=1)
    held = {t: 1 for t in (kept, cancelled, taken, requeued, finished, "no-such-turn")}
    db = relay.app.http.state.relay.db
    renewal = await turn_queue.renew(db, held, FAR_LEASE_MS)
    assert renewal.cancelled == {cancelled}
    assert renewal.lost == {taken, requeued, finished, "no-such-turn"}
    kept_row = await stored_turn(relay, kept)
    assert kept_row.lease_expires_at is not None and kept_row.lease_expires_at > soon
    taken_row = await stored_turn(relay, taken)
    assert (taken_row.state, taken_row.attempt, taken_row.lease_expires_at) == (
        "running",
        2,
        soon,
    )
    assert await turn_queue.renew(db, {}, FAR_LEASE_MS) == turn_queue.Renewal()


async def test_a_turn_claimed_while_the_sweep_waits_for_the_store_is_not_requeued(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    """The sweep reads which turns this instance holds when the store answers it, not when it
    starts: on a slow host a turn can be claimed here, and its store lease run out, while the
    sweep waits for SQLite's write lock. That turn is this live instance's, not a dead one's."""
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    dispatcher = dispatcher_of(relay)
    db = relay.app.http.state.relay.db
    async with FakeWorker(relay, "holder") as holder:
        turn_id = await post(tenant, chat, "mine, though slow")
        assert (await holder.expect("turn.assigned"))["attempt"] == 1
        running = dispatcher.running[turn_id]
        async with db.write() as session:
            await session.execute(
                update(Turn).where(Turn.id == turn_id).values(lease_expires_at=now_ms() - 1)
            )
            # The sweep starts before the claim has put the turn among those held here...
            del dispatcher.turns.by_turn[turn_id]
            sweep = asyncio.get_running_loop().create_task(dispatcher.leases.reclaim())
            await asyncio.sleep(0.05)
            assert not sweep.done()  # ...waits for the store...
            dispatcher.turns.by_turn[turn_id] = running  # ...while the claim registers it.
        await sweep
        turn = await stored_turn(relay, turn_id)
        assert (turn.state, turn.attempt, turn.worker_id) == ("running", 1, "holder")
        assert dispatcher.running[turn_id] is running
        assert not [f for f in holder.seen if f.get("type") == "turn.cancel"]
