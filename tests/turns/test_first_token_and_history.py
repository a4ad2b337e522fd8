"""The first text of an answer leaves at once; what the next prompt carries of earlier answers."""

from __future__ import annotations

import asyncio
import time

from relayline.testing import WsHarness
from tests.fixtures import FakeWorker, RelayFactory, Tenants, post, until_event


async def test_the_first_delta_is_not_held_for_the_coalescing_window(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    # A window far longer than the bounds below: only an immediate first flush passes.
    relay = await turn_relay(delta_coalesce_ms=5000, delta_coalesce_chars=100_000)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws, FakeWorker(relay) as fake:
        turn_id = await post(tenant, chat, "quick?")
        await fake.expect("turn.assigned")
        sent = time.monotonic()
        await fake.send({"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "Hel"})
        first = await ws.expect("message.delta", 2.5)
        assert first["data"]["text"] == "Hel" and first["data"]["offset"] == 0
        assert time.monotonic() - sent < 2.5
        # The ones after it are coalesced as before.
        await fake.send({"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "lo"})
        await ws.assert_silent(0.5, type="message.delta")
        await fake.send({"type": "turn.done", "turn_id": turn_id, "attempt": 1, "usage": {}})
        done = await until_event(ws, "message.completed", turn_id=turn_id)
    assert done["data"]["content"] == "Hello"


async def test_a_failed_answer_is_not_sent_back_a_stopped_one_is(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws, FakeWorker(relay) as fake:
        first = await post(tenant, chat, "first question")
        await fake.expect("turn.assigned")
        await fake.send(
            {"type": "turn.delta", "turn_id": first, "attempt": 1, "text": "cut off mid"}
        )
        await fake.send(
            {
                "type": "turn.failed",
                "turn_id": first,
                "attempt": 1,
                "category": "upstream_5xx",
                "detail": "upstream lost",
            }
        )
        await until_event(ws, "turn.failed", turn_id=first)

        second = await post(tenant, chat, "second question")
        assigned = await fake.expect("turn.assigned")
        assert assigned["turn_id"] == second
        assert assigned["messages"] == [
            {"role": "user", "content": "first question"},
            {"role": "user", "content": "second question"},
        ]
        await fake.send({"type": "turn.delta", "turn_id": second, "attempt": 1, "text": "stopped"})
        await ws.expect("message.delta", 5)
        r = await tenant.http.post(f"/v1/chats/{chat}/cancel", headers=tenant.auth)
        assert r.status_code == 200 and r.json()["cancelled"] is True
        await fake.expect("turn.cancel", 5)
        await until_event(ws, "turn.cancelled", turn_id=second)

        third = await post(tenant, chat, "third question")
        assigned = await asyncio.wait_for(fake.expect("turn.assigned"), 10)
        assert assigned["turn_id"] == third
        assert assigned["messages"] == [
            {"role": "user", "content": "first question"},
            {"role": "user", "content": "second question"},
            {"role": "assistant", "content": "stopped"},
            {"role": "user", "content": "third question"},
        ]


async def test_an_operator_may_send_failed_answers_back(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0, turn_history_failed=True)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws, FakeWorker(relay) as fake:
        first = await post(tenant, chat, "first question")
        await fake.expect("turn.assigned")
        await fake.send({"type": "turn.delta", "turn_id": first, "attempt": 1, "text": "cut"})
        await fake.send(
            {
                "type": "turn.failed",
                "turn_id": first,
                "attempt": 1,
                "category": "incomplete",
                "detail": "no finish_reason",
            }
        )
        failed = await until_event(ws, "turn.failed", turn_id=first)
        assert failed["data"]["category"] == "incomplete"
        second = await post(tenant, chat, "second question")
        assigned = await fake.expect("turn.assigned", 5)
        assert assigned["turn_id"] == second
        assert assigned["messages"] == [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "cut"},
            {"role": "user", "content": "second question"},
        ]
