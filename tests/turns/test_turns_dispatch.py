"""Turns end to end: a real relay, real worker daemons (built-in model) or a scripted fake
worker, and browsers over WebSocket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from relayline.store.models import MessageMetric, Turn
from relayline.testing import OpError, RelayServer, WsHarness, free_port
from tests.conftest import ADMIN_KEY, SettingsFactory
from tests.fixtures import (
    KEY_ID,
    SECRET,
    FakeWorker,
    RelayFactory,
    Tenant,
    Tenants,
    Workers,
    admin,
    answers,
    completions,
    dispatcher_of,
    eventually,
    local_answer,
    post,
    until_event,
)
from tests.worker.llm_fake_upstream import FakeUpstream, status


async def stored_turn(relay: RelayServer, turn_id: str) -> Turn:
    async with relay.app.http.state.relay.db.read() as session:
        turn = await session.get(Turn, turn_id)
    assert turn is not None
    return turn


async def metric_of(relay: RelayServer, message_id: str) -> MessageMetric | None:
    async with relay.app.http.state.relay.db.read() as session:
        query = select(MessageMetric).where(MessageMetric.message_id == message_id)
        return (await session.scalars(query)).first()


async def test_message_streams_to_a_stored_answer(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    await workers.start(relay, local_model_delay_s=0.005)
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        turn_id = await post(tenant, chat, "hello there, relay")
        completed = await ws.expect("message.completed", 10)
        ws.assert_in_order(topic)
        ws.assert_no_duplicates(topic)
    expected = local_answer(("user", "hello there, relay"))
    types = [e["type"] for e in ws.events(topic)]
    assert types[:3] == ["message.created", "turn.queued", "turn.started"], types
    assert types[-1] == "message.completed"
    assert set(types[3:-1]) == {"message.delta"}, types
    started = ws.events(topic, "turn.started")[0]["data"]
    assert started["turn_id"] == turn_id and started["attempt"] == 1
    deltas = [e["data"] for e in ws.events(topic, "message.delta")]
    assert len(deltas) > 1
    offset = 0
    for delta in deltas:
        assert delta["offset"] == offset and delta["message_id"] == started["message_id"]
        offset += len(delta["text"])
    assert "".join(d["text"] for d in deltas) == expected
    assert completed["data"]["content"] == expected
    assert completed["data"]["message_id"] == started["message_id"]
    (answer,) = await answers(tenant, chat)
    assert answer["id"] == started["message_id"]
    assert answer["status"] == "complete" and answer["content"] == expected
    assert (await stored_turn(relay, turn_id)).state == "completed"
    metric = await metric_of(relay, answer["id"])
    assert metric is not None and metric.status == "complete"
    assert metric.latency_ms is not None and metric.first_token_ms is not None
    assert 0 <= metric.first_token_ms <= metric.latency_ms
    assert metric.tokens_in and metric.tokens_in > 0
    assert metric.tokens_out == len(expected.split())


async def test_one_turn_at_a_time_per_chat_in_order(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    questions = ["first question", "second question", "third question"]
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        # Queued before any worker exists, so all three wait together.
        turn_ids = [await post(tenant, chat, q) for q in questions]
        worker = await workers.start(relay, worker_capacity=4)
        await completions(ws, *turn_ids)
    events = [
        (e["type"], e["data"].get("turn_id"))
        for e in ws.events(topic)
        if e["type"] in ("turn.started", "message.completed")
    ]
    assert events == [
        (kind, turn_id) for turn_id in turn_ids for kind in ("turn.started", "message.completed")
    ]
    assert worker.model.max_active == 1
    # Each answer answers its own question, with the earlier exchange as history.
    history: list[tuple[str, str]] = []
    stored = {a["turn_id"]: a for a in await answers(tenant, chat)}
    for question, turn_id in zip(questions, turn_ids, strict=True):
        history.append(("user", question))
        expected = local_answer(*history)
        assert stored[turn_id]["content"] == expected
        history.append(("assistant", expected))


async def test_snapshot_shows_the_partial_answer_while_running(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    await workers.start(relay, local_model_delay_s=0.02)
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        turn_id = await post(tenant, chat, "tell me something")
        started = await ws.expect("turn.started", 5)
        await ws.expect("message.delta", 5)
        await ws.expect("message.delta", 5)
        r = await tenant.http.get(f"/v1/chats/{chat}", headers=tenant.auth)
        assert r.status_code == 200, r.text
        snapshot = r.json()
        completed = await until_event(ws, "message.completed", turn_id=turn_id)
    assert snapshot["turn"]["id"] == turn_id and snapshot["turn"]["state"] == "running"
    assert snapshot["partial_message_id"] == started["data"]["message_id"]
    partial = snapshot["partial_text"]
    final = completed["data"]["content"]
    assert partial and len(partial) < len(final) and final.startswith(partial)
    r = await tenant.http.get(f"/v1/chats/{chat}", headers=tenant.auth)
    assert r.json()["partial_message_id"] is None and r.json()["turn"] is None


async def test_browser_that_leaves_does_not_cancel_the_turn(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    worker = await workers.start(relay, local_model_delay_s=0.01)
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        turn_id = await post(tenant, chat, "are you still there?")
        await ws.expect("message.delta", 5)
    await eventually(lambda: worker.model.finished == 1)

    async def answered() -> bool:
        return [a["status"] for a in await answers(tenant, chat)] == ["complete"]

    await eventually(answered)
    (answer,) = await answers(tenant, chat)
    assert answer["content"] == local_answer(("user", "are you still there?"))
    assert (await stored_turn(relay, turn_id)).state == "completed"
    assert worker.model.stopped_early == 0


@pytest.mark.parametrize("door", ["rest", "ws"])
async def test_cancel_stops_the_worker_and_keeps_the_partial(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, door: str
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    worker = await workers.start(relay, local_model_delay_s=0.05)
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        turn_id = await post(tenant, chat, "write me a long story")
        for _ in range(3):
            await ws.expect("message.delta", 5)
        if door == "rest":
            r = await tenant.http.post(f"/v1/chats/{chat}/cancel", headers=tenant.auth)
            assert r.status_code == 200, r.text
            assert r.json() == {"cancelled": True, "turn_id": turn_id}
        else:
            ack = await ws.send_op("cancel", topic=topic)
            assert ack == {"cancelled": True, "turn_id": turn_id}
        await until_event(ws, "turn.cancelled", turn_id=turn_id)
        await eventually(lambda: worker.model.stopped_early == 1, 5)
        assert worker.connection.turns == {}
        # Nothing of the cancelled turn comes after the cancel.
        await ws.assert_silent(0.3, "message.delta")
    published = "".join(e["data"]["text"] for e in ws.events(topic, "message.delta"))
    assert not ws.events(topic, "message.completed")
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "cancelled"
    assert answer["content"] == published
    full = local_answer(("user", "write me a long story"))
    assert published and len(published) < len(full) and full.startswith(published)
    assert (await stored_turn(relay, turn_id)).state == "cancelled"
    metric = await metric_of(relay, answer["id"])
    assert metric is not None and metric.status == "cancelled"
    r = await tenant.http.post(f"/v1/chats/{chat}/cancel", headers=tenant.auth)
    assert r.json() == {"cancelled": False, "turn_id": None}


async def test_turn_waits_for_a_worker_and_runs_when_one_connects(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        turn_id = await post(tenant, chat, "anyone home?")
        state = await ws.expect("worker.state", 5)
        assert state["data"] == {"status": "no_worker", "turn_id": turn_id}
        await ws.assert_silent(0.2, "turn.started")
        await workers.start(relay)
        started = await ws.expect("turn.started", 5)
        assert started["data"]["turn_id"] == turn_id
        await until_event(ws, "message.completed", turn_id=turn_id)
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "complete"


async def test_capacity_bounds_inflight_turns_and_all_are_answered(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chats = [await tenant.chat() for _ in range(10)]
    dispatcher = dispatcher_of(relay)
    worker = await workers.start(relay, worker_capacity=2, local_model_delay_s=0.001)
    link = dispatcher.workers[worker.worker_id]
    samples: list[int] = []
    on_delta = dispatcher.on_delta

    async def sampled(running: Any, text: str) -> None:
        samples.append(len(link.inflight))
        await on_delta(running, text)

    dispatcher.on_delta = sampled
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{c}" for c in chats]) as ws:
        turn_ids = [await post(tenant, c, f"question number {i}") for i, c in enumerate(chats)]
        await completions(ws, *turn_ids)
    assert samples and max(samples) == 2
    assert worker.model.max_active == 2
    for i, chat in enumerate(chats):
        (answer,) = await answers(tenant, chat)
        assert answer["status"] == "complete"
        assert answer["content"] == local_answer(("user", f"question number {i}"))
    # Nothing was handed back for lack of room on the worker.
    assert [(await stored_turn(relay, t)).attempt for t in turn_ids] == [1] * 10
    assert not [e for e in ws.frames if e.get("type") == "turn.retrying"]


@pytest.mark.parametrize("death", ["cancelled", "socket_dropped"])
async def test_turn_of_a_dead_worker_goes_to_another_worker(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, death: str
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    first = await workers.start(relay, worker_id="first", local_model_delay_s=0.02)
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        turn_id = await post(tenant, chat, "survive this")
        started = await ws.expect("turn.started", 5)
        assert started["data"]["worker_id"] == "first"
        await ws.expect("message.delta", 5)
        second = await workers.start(relay, worker_id="second", local_model_delay_s=0.002)
        if death == "socket_dropped":
            assert first.connection.ws is not None
            first.connection.ws.transport.abort()
        await first.kill()
        retrying = await ws.expect("turn.retrying", 5)
        assert retrying["data"]["turn_id"] == turn_id and retrying["data"]["attempt"] == 2
        again = await ws.expect("turn.started", 5)
        assert again["data"]["attempt"] == 2 and again["data"]["worker_id"] == second.worker_id
        assert again["data"]["message_id"] == started["data"]["message_id"]
        completed = await until_event(ws, "message.completed", turn_id=turn_id)
    expected = local_answer(("user", "survive this"))
    assert completed["data"]["content"] == expected
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "complete" and answer["content"] == expected
    assert (await stored_turn(relay, turn_id)).attempt == 2


async def test_retried_turn_keeps_its_place_before_later_messages(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    first = await workers.start(relay, worker_id="first", local_model_delay_s=0.02)
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        earlier = await post(tenant, chat, "earlier question")
        await ws.expect("message.delta", 5)
        later = await post(tenant, chat, "later question")
        await workers.start(relay, worker_id="second", local_model_delay_s=0.002)
        await first.kill()
        await completions(ws, earlier, later)
    started = [
        (e["data"]["turn_id"], e["data"]["attempt"]) for e in ws.events(topic, "turn.started")
    ]
    assert started == [(earlier, 1), (earlier, 2), (later, 1)]
    stored = {a["turn_id"]: a["content"] for a in await answers(tenant, chat)}
    first_answer = local_answer(("user", "earlier question"))
    assert stored[earlier] == first_answer
    assert stored[later] == local_answer(
        ("user", "earlier question"), ("assistant", first_answer), ("user", "later question")
    )


async def test_frames_of_a_dead_attempt_are_refused(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        stale = FakeWorker(relay, "partitioned")
        await stale.connect()
        turn_id = await post(tenant, chat, "who answers?")
        assigned = await stale.expect("turn.assigned")
        assert assigned["turn_id"] == turn_id and assigned["attempt"] == 1
        await stale.send({"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "old "})
        await ws.expect("message.delta", 5)
        # The worker's connection drops; a real worker takes the turn over.
        stale.abort()
        await stale.close()
        await ws.expect("turn.retrying", 5)
        live = await workers.start(relay, local_model_delay_s=0.02)
        again = await ws.expect("turn.started", 5)
        assert again["data"]["attempt"] == 2 and again["data"]["worker_id"] == live.worker_id
        await ws.expect("message.delta", 5)
        # The old worker comes back and finishes its attempt, and the live one mixes up its
        # attempt number: both are fenced off while attempt 2 runs.
        async with FakeWorker(relay, "partitioned") as back:
            for frame in (
                {"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "STALE"},
                {"type": "turn.done", "turn_id": turn_id, "attempt": 1, "usage": {}},
                {"type": "turn.failed", "turn_id": turn_id, "attempt": 1, "category": "internal"},
            ):
                await back.send(frame)
                error = await back.expect("error", 5)
                assert error["code"] == "stale_attempt" and error["turn_id"] == turn_id
            assert live.connection.ws is not None
            await live.connection._send({"type": "turn.done", "turn_id": turn_id, "attempt": 1})
            completed = await until_event(ws, "message.completed", turn_id=turn_id)
            await back.send({"type": "turn.done", "turn_id": turn_id, "attempt": 2, "usage": {}})
            assert (await back.expect("error", 5))["code"] == "stale_attempt"
    expected = local_answer(("user", "who answers?"))
    assert completed["data"]["content"] == expected
    attempt_2 = [
        e["data"]["text"] for e in ws.events(topic, "message.delta") if e["seq"] > again["seq"]
    ]
    assert "".join(attempt_2) == expected
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "complete" and answer["content"] == expected
    assert len(ws.events(topic, "message.completed")) == 1


async def test_silent_worker_loses_its_lease_then_the_turn_fails(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    relay = await turn_relay(turn_lease_s=0.3, turn_max_attempts=2, delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with (
        WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
        FakeWorker(relay, "silent") as silent,
    ):
        turn_id = await post(tenant, chat, "hello?")
        first = await silent.expect("turn.assigned")
        await silent.send({"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "um"})
        cancel = await silent.expect("turn.cancel", 5)
        assert cancel == {"type": "turn.cancel", "turn_id": turn_id, "attempt": 1}
        retrying = await ws.expect("turn.retrying", 5)
        assert retrying["data"]["attempt"] == 2
        # Silent for a whole lease: its link is dead to the relay, closed, and never given
        # the retry (a NAT that forgot a connection sends no FIN).
        assert silent.ws is not None
        await asyncio.wait_for(silent.ws.wait_closed(), 5)
        assert silent.ws.close_code == 4408
        async with FakeWorker(relay, "silent-too") as other:
            second = await other.expect("turn.assigned")
            assert (first["attempt"], second["attempt"]) == (1, 2)
            # A late frame of attempt 1 is refused, and does not renew attempt 2's lease.
            await other.send({"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "x"})
            assert (await other.expect("error"))["code"] == "stale_attempt"
            failed = await ws.expect("turn.failed", 5)
            assert (await other.expect("turn.cancel", 5))["attempt"] == 2
    assert failed["data"]["turn_id"] == turn_id
    assert failed["data"]["category"] == "timeout"
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "failed"
    turn = await stored_turn(relay, turn_id)
    assert (turn.state, turn.attempt, turn.error_category) == ("failed", 2, "timeout")
    r = await tenant.http.get(f"/v1/chats/{chat}", headers=tenant.auth)
    assert r.json()["turn"] is None


async def test_model_failures_reach_the_chat_and_the_admin_view(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    upstream = FakeUpstream()
    upstream.play(status(500, "model exploded"))
    llm_url = await upstream.start()
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    try:
        async with (
            WsHarness(relay, token=ADMIN_KEY, topics=["admin"]) as admin_ws,
            WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
        ):
            worker = await workers.start(
                relay,
                llm_url=llm_url,
                llm_max_attempts=1,
                breaker_failures=1,
                breaker_recovery_s=60,
                state_interval_s=60,
            )
            first = await post(tenant, chat, "please answer")
            failed = await until_event(ws, "turn.failed", turn_id=first)
            assert failed["data"]["category"] == "upstream_5xx"
            # Reported when it happens, not at the next periodic report (a minute away).
            state = await until_event(admin_ws, "worker.state", last_error="upstream_5xx")
            assert state["data"]["worker_id"] == worker.worker_id
            assert state["data"]["breaker"] == "open"
            # The open breaker fails the next turn at once, without calling the model.
            second = await post(tenant, chat, "and now?")
            failed = await until_event(ws, "turn.failed", turn_id=second)
            assert failed["data"]["category"] == "circuit_open"
            await until_event(admin_ws, "worker.state", last_error="circuit_open")
    finally:
        await upstream.close()
    assert upstream.hits == 1
    assert [a["status"] for a in await answers(tenant, chat)] == ["failed", "failed"]
    turn = await stored_turn(relay, first)
    assert (turn.state, turn.error_category) == ("failed", "upstream_5xx")
    r = await tenant.http.get("/v1/admin/workers", headers=admin())
    (listed,) = r.json()["items"]
    assert (listed["breaker"], listed["last_error"]) == ("open", "circuit_open")


async def enable_tools(relay: RelayServer, tenant: Tenant, **agent: Any) -> None:
    r = await tenant.http.put(f"/v1/admin/tenants/{tenant.id}/agent", json=agent, headers=admin())
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("decision", ["approve", "deny", "no_answer"])
async def test_tool_call_waits_for_the_users_approval(
    turn_relay: RelayFactory,
    tenants: Tenants,
    workers: Workers,
    workspace: Path,
    decision: str,
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    await enable_tools(relay, tenant, tools=["edit_file"])
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    await workers.start(relay, approval_timeout_s=0.5 if decision == "no_answer" else 30)
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        turn_id = await post(tenant, chat, "/edit notes.md hello from the chat")
        asked = await ws.expect("tool.approval_requested", 5)
        assert asked["data"]["turn_id"] == turn_id
        assert asked["data"]["tool"] == "edit_file"
        assert asked["data"]["arguments"]["path"] == "notes.md"
        assert not (workspace / "notes.md").exists()
        approval_id = asked["data"]["approval_id"]
        if decision != "no_answer":
            ack = await ws.send_op(
                "approve", topic=topic, approval_id=approval_id, decision=decision
            )
            assert ack == {"approval_id": approval_id, "decision": decision}
            resolved = await ws.expect("tool.approval_resolved", 5)
            assert resolved["data"] == {"approval_id": approval_id, "decision": decision}
        completed = await until_event(ws, "message.completed", turn_id=turn_id)
        if decision != "no_answer":
            # Answered once; a second answer finds nothing waiting.
            with pytest.raises(OpError) as err:
                await ws.send_op("approve", topic=topic, approval_id=approval_id, decision=decision)
            assert err.value.code == "not_found"
    content = completed["data"]["content"]
    if decision == "approve":
        assert (workspace / "notes.md").read_text() == "hello from the chat"
        assert "Here is what `edit_file` returned" in content
    else:
        assert not (workspace / "notes.md").exists()
        assert "You declined `edit_file`" in content
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "complete" and answer["content"] == content


async def test_tenant_agent_settings_reach_the_worker(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    await enable_tools(
        relay, tenant, system_prompt="You are terse.", tools=["read_file", "list_dir"], model="m1"
    )
    chat = await tenant.chat()
    async with FakeWorker(relay, "inspector") as fake:
        turn_id = await post(tenant, chat, "hi")
        assigned = await fake.expect("turn.assigned")
    assert assigned["turn_id"] == turn_id and assigned["chat_id"] == chat
    assert assigned["system_prompt"] == "You are terse."
    assert sorted(assigned["tools"]) == ["list_dir", "read_file"]
    assert assigned["model"] == "m1"
    assert assigned["messages"] == [{"role": "user", "content": "hi"}]
    assert assigned["correlation_id"] and assigned["deadline"] > 0
    # And a real worker applies them: the prompt leads the conversation, only those tools.
    worker = await workers.start(relay)
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        await until_event(ws, "message.completed", turn_id=turn_id)
    (messages_seen, tools_offered) = worker.model.calls[0]
    assert [(m.role, m.content) for m in messages_seen] == [
        ("system", "You are terse."),
        ("user", "hi"),
    ]
    assert sorted(tools_offered) == ["list_dir", "read_file"]


async def test_stopping_worker_finishes_its_turn_within_the_grace(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    worker = await workers.start(relay, local_model_delay_s=0.01, shutdown_grace_s=30)
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        turn_id = await post(tenant, chat, "finish before you go")
        await ws.expect("message.delta", 5)
        stopping = asyncio.ensure_future(worker.stop())
        completed = await until_event(ws, "message.completed", turn_id=turn_id)
        await stopping
    assert worker.task.done() and worker.model.stopped_early == 0
    assert not ws.events(topic, "turn.retrying")
    assert completed["data"]["content"] == local_answer(("user", "finish before you go"))
    assert (await stored_turn(relay, turn_id)).attempt == 1
    assert dispatcher_of(relay).workers == {}


async def test_stopping_worker_hands_back_what_it_cannot_finish(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    leaving = await workers.start(
        relay, worker_id="leaving", local_model_delay_s=0.05, shutdown_grace_s=0.1
    )
    topic = f"chat:{chat}"
    async with (
        WsHarness(relay, token=ADMIN_KEY, topics=["admin"]) as admin_ws,
        WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
    ):
        turn_id = await post(tenant, chat, "hand this over")
        await ws.expect("message.delta", 5)
        staying = await workers.start(relay, worker_id="staying", local_model_delay_s=0.001)
        await leaving.stop()
        draining = await until_event(admin_ws, "worker.state", worker_id="leaving")
        retrying = await ws.expect("turn.retrying", 5)
        assert retrying["data"]["attempt"] == 2
        assert retrying["data"]["reason"] == "worker released the turn"
        again = await ws.expect("turn.started", 5)
        assert again["data"]["worker_id"] == staying.worker_id
        completed = await until_event(ws, "message.completed", turn_id=turn_id)
    assert draining["data"]["status"] in ("draining", "offline")
    assert leaving.model.stopped_early == 1
    expected = local_answer(("user", "hand this over"))
    assert completed["data"]["content"] == expected
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "complete" and answer["content"] == expected


async def test_queued_turn_survives_a_relay_restart(
    make_settings: SettingsFactory, tenants: Tenants, workers: Workers
) -> None:
    settings = make_settings(worker_keys=[f"{KEY_ID}:{SECRET}"])
    async with RelayServer(settings) as before:
        tenant = await tenants.new(before)
        chat = await tenant.chat()
        turn_id = await post(tenant, chat, "remember me")
        await tenant.http.aclose()
    async with RelayServer(settings) as after:
        tenant.http = await tenants.client(after)
        assert (await stored_turn(after, turn_id)).state == "queued"
        async with WsHarness(after, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            worker = await workers.start(after)
            completed = await until_event(ws, "message.completed", turn_id=turn_id)
            await worker.kill()
        (answer,) = await answers(tenant, chat)
    assert completed["data"]["content"] == local_answer(("user", "remember me"))
    assert answer["status"] == "complete"


async def test_running_turn_is_answered_after_a_relay_restart(
    make_settings: SettingsFactory, tenants: Tenants, workers: Workers
) -> None:
    settings = make_settings(worker_keys=[f"{KEY_ID}:{SECRET}"])
    port = free_port()
    async with RelayServer(settings, port=port) as before:
        tenant = await tenants.new(before)
        chat = await tenant.chat()
        worker = await workers.start(before, local_model_delay_s=0.02)
        async with WsHarness(before, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            turn_id = await post(tenant, chat, "keep going")
            await ws.expect("message.delta", 5)
    assert worker.model.stopped_early == 1
    async with RelayServer(settings, port=port) as after:
        tenant.http = await tenants.client(after)
        async with WsHarness(after, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            # The same worker daemon reconnects by itself and gets the turn again.
            completed = await until_event(ws, "message.completed", turn_id=turn_id)
            await worker.kill()
        (answer,) = await answers(tenant, chat)
        assert (await stored_turn(after, turn_id)).attempt == 2
    assert completed["data"]["content"] == local_answer(("user", "keep going"))
    assert answer["status"] == "complete" and answer["content"] == completed["data"]["content"]


async def test_a_decision_after_the_approval_deadline_is_refused(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with (
        WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
        FakeWorker(relay, "asker") as worker,
    ):
        turn_id = await post(tenant, chat, "/edit notes.md x")
        await worker.expect("turn.assigned")
        past = int(time.time() * 1000) - 1000  # the worker has already counted it as denied
        for approval_id, deadline in (("late", past), ("timely", past + 60_000)):
            await worker.send(
                {
                    "type": "tool.approval_request",
                    "turn_id": turn_id,
                    "attempt": 1,
                    "approval_id": approval_id,
                    "tool": "edit_file",
                    "arguments": {"path": "notes.md"},
                    "deadline": deadline,
                }
            )
            asked = await ws.expect("tool.approval_requested", 5)
            assert asked["data"]["deadline"] == deadline
        with pytest.raises(OpError) as err:
            await ws.send_op("approve", topic=topic, approval_id="late", decision="approve")
        assert err.value.code == "not_found"
        await ws.send_op("approve", topic=topic, approval_id="timely", decision="approve")
        forwarded = await worker.expect("tool.approval", 5)
        assert forwarded["approval_id"] == "timely"
        assert all(f.get("approval_id") != "late" for f in worker.seen)


async def test_snapshot_lists_the_open_approval_requests_of_the_running_turn(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"

    async def pending() -> list[dict[str, Any]]:
        r = await tenant.http.get(f"/v1/chats/{chat}", headers=tenant.auth)
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["pending_approvals"]
        return items

    async with (
        WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
        FakeWorker(relay, "asker") as worker,
    ):
        turn_id = await post(tenant, chat, "/edit notes.md x")
        await worker.expect("turn.assigned")
        assert await pending() == []
        deadline = int(time.time() * 1000) + 60_000
        asked = {}
        for approval_id in ("first", "second"):
            await worker.send(
                {
                    "type": "tool.approval_request",
                    "turn_id": turn_id,
                    "attempt": 1,
                    "approval_id": approval_id,
                    "tool": "edit_file",
                    "arguments": {"path": f"{approval_id}.md"},
                    "deadline": deadline,
                }
            )
            event = await until_event(ws, "tool.approval_requested", approval_id=approval_id)
            asked[approval_id] = event["data"]
        # Exactly what was announced, oldest first: a reloaded page shows the same cards.
        assert await pending() == [asked["first"], asked["second"]]
        assert asked["first"] == {
            "approval_id": "first",
            "turn_id": turn_id,
            "tool": "edit_file",
            "arguments": {"path": "first.md"},
            "deadline": deadline,
        }
        # A decided request is no longer listed.
        await ws.send_op("approve", topic=topic, approval_id="first", decision="deny")
        assert (await worker.expect("tool.approval", 5))["approval_id"] == "first"
        assert await pending() == [asked["second"]]
        # Nor is one whose attempt ended, even undecided.
        await worker.send({"type": "turn.done", "turn_id": turn_id, "attempt": 1, "usage": {}})
        await until_event(ws, "message.completed", turn_id=turn_id)
        assert await pending() == []


async def test_approval_requests_past_the_cap_or_with_a_taken_id_are_denied_unannounced(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    from relayline.turns.approvals import MAX_OPEN_PER_ATTEMPT

    relay = await turn_relay()
    tenant = await tenants.new(relay)
    topic_of = {}
    async with FakeWorker(relay, "asker", capacity=2) as worker:
        turns = []
        for n in range(2):
            chat = await tenant.chat()
            turn_id = await post(tenant, chat, f"/edit notes{n}.md x")
            topic_of[turn_id] = f"chat:{chat}"
            turns.append(turn_id)
        assigned = {(await worker.expect("turn.assigned"))["turn_id"] for _ in range(2)}
        assert assigned == set(turns)
        first, second = turns

        async def ask(turn_id: str, approval_id: str) -> None:
            await worker.send(
                {
                    "type": "tool.approval_request",
                    "turn_id": turn_id,
                    "attempt": 1,
                    "approval_id": approval_id,
                    "tool": "edit_file",
                    "arguments": {"path": "x.md"},
                    "deadline": int(time.time() * 1000) + 60_000,
                }
            )

        async with WsHarness(relay, token=tenant.key, topics=list(topic_of.values())) as ws:
            for n in range(MAX_OPEN_PER_ATTEMPT + 1):
                await ask(first, f"a{n}")
            denied = await worker.expect("tool.approval", 5)
            assert denied["approval_id"] == f"a{MAX_OPEN_PER_ATTEMPT}"
            assert denied["decision"] == "deny" and denied["turn_id"] == first
            # The other turn cannot take over an id the first one holds.
            await ask(second, "a0")
            taken = await worker.expect("tool.approval", 5)
            assert (taken["approval_id"], taken["turn_id"], taken["decision"]) == (
                "a0",
                second,
                "deny",
            )
            await ws.assert_silent(0.3, "tool.approval_resolved")
            requested = ws.events(type="tool.approval_requested")
            announced = [e["data"]["approval_id"] for e in requested]
            assert announced == [f"a{n}" for n in range(MAX_OPEN_PER_ATTEMPT)]
            # The first turn's a0 is still its own, and still decidable.
            ack = await ws.send_op(
                "approve", topic=topic_of[first], approval_id="a0", decision="approve"
            )
            assert ack
            decided = await worker.expect("tool.approval", 5)
            assert (decided["approval_id"], decided["turn_id"]) == ("a0", first)


async def test_an_answer_past_the_length_limit_ends_the_attempt_and_keeps_the_text(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    relay = await turn_relay(max_answer_chars=1000, delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with (
        FakeWorker(relay, "talker") as worker,
        WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
    ):
        turn_id = await post(tenant, chat, "say a lot")
        assigned = await worker.expect("turn.assigned")
        frame = {"type": "turn.delta", "turn_id": turn_id, "attempt": assigned["attempt"]}
        for part in ("a" * 400, "b" * 400, "c" * 400):
            await worker.send({**frame, "text": part})
        stop = await worker.expect("turn.cancel", 5)
        assert (stop["turn_id"], stop["attempt"]) == (turn_id, assigned["attempt"])
        failed = await until_event(ws, "turn.failed", turn_id=turn_id)
        assert failed["data"]["category"] == "internal"
        assert "RELAYLINE_MAX_ANSWER_CHARS" in failed["data"]["detail"]
    (answer,) = await answers(tenant, chat)
    assert answer["status"] == "failed" and answer["content"] == "a" * 400 + "b" * 400
