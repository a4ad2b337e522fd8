"""A turn's correlation id is the request id of the post (or send op) that created it: in
turn.assigned, in the data of turn.* and message.completed, and sent upstream."""

from __future__ import annotations

import pytest

from relayline.ids import valid_request_id
from relayline.testing import WsHarness
from tests.fixtures import FakeWorker, RelayFactory, Tenants, Workers, until_event
from tests.worker.llm_fake_upstream import FakeUpstream, answer


async def test_a_posts_request_id_is_the_turns_correlation_id_everywhere(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    upstream = FakeUpstream()
    upstream.play(answer(("Hi",)))
    try:
        await workers.start(relay, llm_url=await upstream.start())
        async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            r = await tenant.http.post(
                f"/v1/chats/{chat}/messages",
                json={"content": "trace me"},
                headers={**tenant.auth, "X-Request-ID": "req-from-the-client-1"},
            )
            assert r.status_code == 202, r.text
            turn_id = r.json()["turn_id"]
            seen = {}
            for kind in ("turn.queued", "turn.started", "message.completed"):
                seen[kind] = await until_event(ws, kind, turn_id=turn_id)
    finally:
        await upstream.close()
    for kind, frame in seen.items():
        assert frame["data"]["correlation_id"] == "req-from-the-client-1", kind
    assert upstream.headers[0]["x-request-id"] == "req-from-the-client-1"


async def test_without_a_request_id_the_relays_own_is_used(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    async with FakeWorker(relay) as fake:
        r = await tenant.http.post(
            f"/v1/chats/{chat}/messages", json={"content": "hi"}, headers=tenant.auth
        )
        assigned = await fake.expect("turn.assigned")
    assert assigned["correlation_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("given", "adopted"),
    [("ws-op-request-0001", True), ("bad id!", False), ("short", False), (12345678, False)],
)
async def test_a_send_ops_request_id_is_adopted_when_well_formed(
    turn_relay: RelayFactory, tenants: Tenants, given: object, adopted: bool
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with (
        FakeWorker(relay) as fake,
        WsHarness(relay, token=tenant.key, topics=[topic]) as ws,
    ):
        ack = await ws.send_op("send", topic=topic, content="over ws", request_id=given)
        assigned = await fake.expect("turn.assigned")
        failed_frame = {
            "type": "turn.failed",
            "turn_id": ack["turn_id"],
            "attempt": 1,
            "category": "timeout",
            "detail": "slow",
        }
        await fake.send(failed_frame)
        failed = await until_event(ws, "turn.failed", turn_id=ack["turn_id"])
    correlation = assigned["correlation_id"]
    assert (correlation == given) is adopted
    assert valid_request_id(correlation)
    assert failed["data"]["correlation_id"] == correlation
