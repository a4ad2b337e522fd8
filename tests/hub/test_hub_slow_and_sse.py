"""Slow-client isolation and the SSE endpoint."""

from __future__ import annotations

import asyncio
import json

import httpx

from relayline.observability import hub_metrics as m
from relayline.protocol.close_codes import Close
from relayline.testing import RelayServer, WsHarness
from tests.fixtures import RelayFactory, Tenant, new_tenant
from tests.hub.rawws import RawWs

PAD = "x" * 900


def padded(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"type": "custom.n", "data": {"i": start + i, "pad": PAD}} for i in range(n)]


def slow_closes() -> float:
    return m.SLOW_CLIENT_CLOSES._value.get()


async def test_slow_client_is_closed_4009_and_others_get_everything(
    start_relay: RelayFactory,
) -> None:
    # Each burst (500 events, ~0.5 MB) fits the queue; the slow client's backlog does not.
    relay = await start_relay(
        ws_queue_max_bytes=1024 * 1024,
        ws_queue_max_events=5000,
        ws_send_buffer=4096,
        ws_write_high_water=4096,
    )
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        tenant = await new_tenant(relay, http)
        topic = f"chat:{await tenant.chat()}"
        healthy = [WsHarness(relay, token=tenant.key, topics=[topic]) for _ in range(3)]
        for ws in healthy:
            await ws.__aenter__()
        slow = await RawWs.connect(relay.port, tenant.key, rcvbuf=4096)
        await slow.send_frame(json.dumps({"op": "subscribe", "topic": topic, "ref": 1}).encode())
        ack = json.loads((await slow.read_frame())[1])
        assert ack["type"] == "ack"
        before = slow_closes()
        gateway = relay.app.http.state.relay.gateway
        try:
            # 2,000 events of ~1 KB while the slow client reads nothing; the healthy ones read
            # each burst (they share this process's CPU with the relay, so pace the bursts).
            for k in range(4):
                await tenant.publish(topic, padded(500, start=500 * k))
                for ws in healthy:
                    while len(ws.events(topic)) < 500 * (k + 1):
                        await ws.expect("custom.n", timeout=10)
            for ws in healthy:
                assert ws.close_code is None
                assert [f["data"]["i"] for f in ws.events(topic)] == list(range(2000))
                ws.assert_in_order(topic)
            assert slow_closes() == before + 1
            # Memory stayed bounded: no client holds more than the configured queue.
            for client in gateway.clients:
                assert client.outbox.pending_bytes <= 1024 * 1024
            # Reading now, the slow client finds the events it had buffered, then 4009.
            code, texts = await slow.read_until_close(timeout=5)
            assert code in (Close.SLOW, None)  # None: aborted after the grace period
            seqs = [json.loads(t)["seq"] for t in texts if b'"seq"' in t]
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < 2000
        finally:
            slow.close()
            for ws in healthy:
                await ws.__aexit__(None, None, None)
    await asyncio.sleep(0)
    assert len(gateway.clients) == 0


async def test_slow_client_drop_policy_sends_events_missed(start_relay: RelayFactory) -> None:
    relay = await start_relay(
        ws_slow_policy="drop",
        ws_queue_max_bytes=32 * 1024,
        ws_send_buffer=4096,
        ws_write_high_water=4096,
    )
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        tenant = await new_tenant(relay, http)
        topic = f"chat:{await tenant.chat()}"
        slow = await RawWs.connect(relay.port, tenant.key, rcvbuf=4096)
        await slow.send_frame(json.dumps({"op": "subscribe", "topic": topic, "ref": 1}).encode())
        assert json.loads((await slow.read_frame())[1])["type"] == "ack"
        await tenant.publish(topic, padded(600))
        await asyncio.sleep(0.2)
        frames: list[dict[str, object]] = []
        try:
            async with asyncio.timeout(5):
                while not any(f.get("type") == "events.missed" for f in frames):
                    opcode, payload = await slow.read_frame()
                    if opcode == 0x1:
                        frames.append(json.loads(payload))
        finally:
            slow.close()
        missed = [f for f in frames if f.get("type") == "events.missed"]
        assert missed and missed[0]["topic"] == topic
        assert len([f for f in frames if f.get("type") == "custom.n"]) < 600


async def read_sse(response: httpx.Response, count: int) -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    event_id = ""
    async with asyncio.timeout(10):
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                out.append((event_id, json.loads(line[6:])))
                if len(out) == count:
                    return out
    return out


async def test_sse_streams_and_resumes_with_last_event_id(
    relay: RelayServer, tenant: Tenant
) -> None:
    topic = f"chat:{await tenant.chat()}"
    async with (
        httpx.AsyncClient(base_url=relay.url, timeout=10) as http,
        http.stream("GET", "/v1/events", params={"topics": topic}, headers=tenant.auth) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        await tenant.publish(topic, padded(5))
        got = await read_sse(resp, 5)
    assert [d["seq"] for _, d in got] == [1, 2, 3, 4, 5]
    last_id = got[2][0]  # resume after seq 3
    assert last_id.endswith(":3")
    await tenant.publish(topic, padded(2, start=5))
    async with (
        httpx.AsyncClient(base_url=relay.url, timeout=10) as http,
        http.stream(
            "GET",
            "/v1/events",
            params={"topics": topic},
            headers={**tenant.auth, "Last-Event-ID": last_id},
        ) as resp,
    ):
        got = await read_sse(resp, 4)
    assert [d["seq"] for _, d in got] == [4, 5, 6, 7]


async def test_sse_foreign_epoch_sends_events_missed(relay: RelayServer, tenant: Tenant) -> None:
    topic = f"chat:{await tenant.chat()}"
    await tenant.publish(topic, padded(2))
    async with (
        httpx.AsyncClient(base_url=relay.url, timeout=10) as http,
        http.stream(
            "GET",
            "/v1/events",
            params={"topics": topic},
            headers={**tenant.auth, "Last-Event-ID": "oldepoch:1"},
        ) as resp,
    ):
        ((_, frame),) = await read_sse(resp, 1)
    assert frame["type"] == "events.missed"


async def test_sse_refuses_foreign_topics_and_bad_auth(relay: RelayServer, tenant: Tenant) -> None:
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        other = await new_tenant(relay, http, "other")
        theirs = await other.chat()
        r = await http.get("/v1/events", params={"topics": f"chat:{theirs}"}, headers=tenant.auth)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await http.get("/v1/events", params={"topics": "bad topic"}, headers=tenant.auth)
        assert r.status_code == 422
        r = await http.get("/v1/events", params={"topics": f"chat:{theirs}"})
        assert r.status_code == 401


async def test_sse_session_token_in_query(relay: RelayServer, tenant: Tenant) -> None:
    chat = await tenant.chat()
    token = await tenant.session([chat])
    topic = f"chat:{chat}"
    async with (
        httpx.AsyncClient(base_url=relay.url, timeout=10) as http,
        http.stream("GET", "/v1/events", params={"topics": topic, "access_token": token}) as resp,
    ):
        assert resp.status_code == 200
        await tenant.publish(topic, padded(1))
        ((_, frame),) = await read_sse(resp, 1)
    assert frame["type"] == "custom.n"
