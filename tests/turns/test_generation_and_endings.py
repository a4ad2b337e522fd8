"""Generation settings travel from the tenant to the model, held to the worker's limits; how an
answer ended (finish_reason) and where its token counts came from (usage source) are stored."""

from __future__ import annotations

from typing import Any

from relayline.protocol.generation import Generation
from relayline.testing import WsHarness
from tests.fixtures import (
    FakeWorker,
    RelayFactory,
    Tenants,
    Workers,
    admin,
    answers,
    post,
    until_event,
)
from tests.turns.test_turns_dispatch import metric_of
from tests.worker.llm_fake_upstream import FakeUpstream, answer, raw_events


async def test_generation_settings_reach_the_model_held_to_the_workers_limits(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    agent = {"model": "m1", "temperature": 1.5, "max_tokens": 4000, "stop": ["END"]}
    r = await tenant.http.put(f"/v1/admin/tenants/{tenant.id}/agent", json=agent, headers=admin())
    assert r.status_code == 200, r.text
    chat = await tenant.chat()
    async with FakeWorker(relay, "inspector") as fake:
        turn_id = await post(tenant, chat, "hi")
        assigned = await fake.expect("turn.assigned")
    assert assigned["generation"] == {"temperature": 1.5, "max_tokens": 4000, "stop": ["END"]}
    assert assigned["model"] == "m1"

    upstream = FakeUpstream()
    upstream.play(answer(["Hello", " there"]))
    try:
        worker = await workers.start(
            relay,
            llm_url=await upstream.start(),
            generation={
                "m1": {"defaults": {"top_p": 0.9}, "limits": {"temperature": 1.0}},
                "*": {"limits": {"max_tokens": 100}},
            },
        )
        async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            await until_event(ws, "message.completed", turn_id=turn_id)
    finally:
        await upstream.close()
    # The model's own policy ("m1"), not the wildcard's: its max_tokens limit does not apply.
    assert worker.model.requests == [
        ("m1", Generation(temperature=1.0, top_p=0.9, max_tokens=4000, stop=["END"]))
    ]
    (sent,) = upstream.requests
    assert sent["model"] == "m1"
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["stop"]) == (
        1.0,
        0.9,
        4000,
        ["END"],
    )


async def test_an_answer_cut_at_the_length_limit_is_stored_and_shown_as_such(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    r = await tenant.http.put(
        f"/v1/admin/tenants/{tenant.id}/agent", json={"max_tokens": 3}, headers=admin()
    )
    assert r.status_code == 200
    chat = await tenant.chat()
    await workers.start(relay)  # the built-in model: a word is a token
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        cut = await post(tenant, chat, "tell me a long story about the sea")
        done = await until_event(ws, "message.completed", turn_id=cut)
    assert done["data"]["finish_reason"] == "length"
    assert len(done["data"]["content"].split()) <= 3
    assert done["data"]["metrics"]["usage_source"] == "reported"
    assert done["data"]["metrics"]["tokens_out"] == 3
    (stored,) = await answers(tenant, chat)
    assert (stored["status"], stored["finish_reason"]) == ("complete", "length")


async def test_usage_the_model_server_does_not_report_is_stored_as_estimated(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    upstream = FakeUpstream()
    reported = (
        '{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}',
        '{"choices":[{"delta":{},"finish_reason":"stop"}]}',
        '{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":1}}',
        "[DONE]",
    )
    unreported = (
        '{"choices":[{"delta":{"content":"Hello you"},"finish_reason":null}]}',
        '{"choices":[{"delta":{},"finish_reason":"stop"}]}',
        "[DONE]",
    )
    upstream.play(raw_events(*reported), raw_events(*unreported))
    try:
        await workers.start(relay, llm_url=await upstream.start())
        async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            first = await post(tenant, chat, "count me")
            one = await until_event(ws, "message.completed", turn_id=first)
            second = await post(tenant, chat, "guess me")
            two = await until_event(ws, "message.completed", turn_id=second)
    finally:
        await upstream.close()
    assert upstream.requests[0]["stream_options"] == {"include_usage": True}
    measured: list[dict[str, Any]] = [one["data"]["metrics"], two["data"]["metrics"]]
    first = measured[0]
    assert (first["tokens_in"], first["tokens_out"], first["usage_source"]) == (11, 1, "reported")
    assert measured[1]["usage_source"] == "estimated" and measured[1]["tokens_out"] >= 1
    assert one["data"]["finish_reason"] == two["data"]["finish_reason"] == "stop"
    for event, source in ((one, "reported"), (two, "estimated")):
        stored = await metric_of(relay, event["data"]["message_id"])
        assert stored is not None and stored.usage_source == source


async def test_a_worker_that_reports_neither_is_taken_as_stop_and_estimated(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    async with (
        WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws,
        FakeWorker(relay) as fake,
    ):
        turn_id = await post(tenant, chat, "old worker")
        await fake.expect("turn.assigned")
        await fake.send({"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "ok"})
        await fake.send(
            {
                "type": "turn.done",
                "turn_id": turn_id,
                "attempt": 1,
                "usage": {"tokens_in": 4, "tokens_out": 1},
                "finish_reason": "bogus",
            }
        )
        done = await until_event(ws, "message.completed", turn_id=turn_id)
    assert done["data"]["finish_reason"] == "stop"
    assert done["data"]["metrics"]["usage_source"] == "estimated"
