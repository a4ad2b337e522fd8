"""A cancel stored while the attempt's worker is finishing: the cancel wins, everywhere.

The chat was told ``turn.cancelled`` as soon as the cancel was stored, so an answer that
completes (or fails) a moment later must not turn into a completed (or failed) one in the store:
it is kept, whole, as cancelled, and no ``message.completed`` or ``turn.failed`` follows.
"""

from __future__ import annotations

from typing import Any

import pytest

from relayline.store import chats
from relayline.store.models import Turn
from relayline.testing import RelayServer, WsHarness
from tests.fixtures import (
    FakeWorker,
    RelayFactory,
    Tenants,
    answers,
    eventually,
    post,
    until_event,
)


async def cancel_in_store_only(relay: RelayServer, chat: str) -> None:
    """What a cancel request does first (on this or another instance), before the instance
    holding the turn hears of it."""
    async with relay.app.http.state.relay.db.write() as session:
        assert await chats.cancel_active_turn(session, chat) is not None


@pytest.mark.parametrize("ending", ["done", "failed"])
async def test_an_ending_that_races_a_stored_cancel_is_kept_as_cancelled(
    turn_relay: RelayFactory, tenants: Tenants, ending: str
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with (
        FakeWorker(relay, "racer") as fake,
        WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
    ):
        turn_id = await post(tenant, chat, "race me")
        assigned = await fake.expect("turn.assigned", 10)
        frame: dict[str, Any] = {"turn_id": turn_id, "attempt": assigned["attempt"]}
        await fake.send({"type": "turn.delta", **frame, "text": "all of "})
        await until_event(ws, "message.delta", turn_id=turn_id)
        await cancel_in_store_only(relay, chat)
        await fake.send({"type": "turn.delta", **frame, "text": "it"})
        if ending == "done":
            await fake.send({"type": "turn.done", **frame, "usage": {}})
        else:
            await fake.send({"type": "turn.failed", **frame, "category": "timeout", "detail": "x"})

        async def settled() -> bool:
            found = await answers(tenant, chat)
            return len(found) == 1 and found[0]["status"] != "streaming"

        await eventually(settled)
        await ws.assert_silent(0.3, "message.completed")
    assert not ws.events(topic, "turn.failed")
    (answer,) = await answers(tenant, chat)
    shown = "".join(e["data"]["text"] for e in ws.events(topic, "message.delta"))
    assert answer["status"] == "cancelled"
    assert answer["content"] == shown  # what the chat saw, nothing more, nothing less
    assert shown == "all of it"
    async with relay.app.http.state.relay.db.read() as session:
        turn = await session.get(Turn, turn_id)
    assert turn is not None and turn.state == "cancelled"


async def test_a_turn_cancelled_between_its_claim_and_assignment_never_reaches_the_worker(
    turn_relay: RelayFactory, tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relayline.store import turn_queue

    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    real_claim = turn_queue.claim_next
    cancels: list[dict[str, Any]] = []

    async def claim_then_cancel(*args: Any, **kwargs: Any) -> Any:
        assignment = await real_claim(*args, **kwargs)
        if assignment is not None and not cancels:
            # The user presses stop right after this instance claimed the turn.
            r = await tenant.http.post(f"/v1/chats/{chat}/cancel", headers=tenant.auth)
            cancels.append(r.json())
        return assignment

    monkeypatch.setattr(turn_queue, "claim_next", claim_then_cancel)
    async with (
        FakeWorker(relay, "never-told", capacity=1) as fake,
        WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
    ):
        first = await post(tenant, chat, "stop before you start")
        await until_event(ws, "turn.cancelled", turn_id=first)
        assert cancels == [{"cancelled": True, "turn_id": first}]
        # The chat is free again and the worker's credit too: the next turn is assigned.
        second = await post(tenant, chat, "now go")
        assigned = await fake.expect("turn.assigned", 10)
        assert assigned["turn_id"] == second
    assert [f["turn_id"] for f in fake.seen if f.get("type") == "turn.assigned"] == [second]
    assert not [e for e in ws.events(topic, "turn.started") if e["data"]["turn_id"] == first]
    async with relay.app.http.state.relay.db.read() as session:
        turn = await session.get(Turn, first)
    assert turn is not None and turn.state == "cancelled"
    (answer, *_) = await answers(tenant, chat)
    assert answer["turn_id"] == first and answer["status"] == "cancelled"


def test_early_cancels_are_remembered_briefly_and_boundedly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relayline.turns import running

    monkeypatch.setattr(running, "EARLY_CANCEL_MAX", 3)
    turns = running.RunningTurns()
    for n in range(5):
        turns.note_cancel(f"t{n}")
    assert not turns.take_cancel("t0") and not turns.take_cancel("t1")  # the oldest made room
    assert turns.take_cancel("t4") and not turns.take_cancel("t4")  # taken once
    clock = [1000.0]

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return clock[0]

    monkeypatch.setattr(running, "time", Clock)
    turns = running.RunningTurns()
    turns.note_cancel("old")
    clock[0] += running.EARLY_CANCEL_TTL_S + 1
    turns.note_cancel("new")
    assert not turns.take_cancel("old") and turns.take_cancel("new")
