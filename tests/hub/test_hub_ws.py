"""The client protocol over real sockets: auth, ACL, ops, replay, limits, heartbeats."""

from __future__ import annotations

import asyncio
import json

import pytest

from relayline.observability.metrics import RATE_LIMITED
from relayline.protocol.close_codes import Close
from relayline.testing import OpError, RelayServer, WsHarness
from tests.fixtures import RelayFactory, Tenant, new_tenant
from tests.hub.rawws import RawWs


def custom(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"type": "custom.n", "data": {"i": start + i}} for i in range(n)]


async def test_unauthenticated_socket_is_closed_4401(relay: RelayServer) -> None:
    async with WsHarness(relay, token="not-a-token") as ws:
        assert await ws.expect_closed() == Close.UNAUTHENTICATED


async def test_missing_credentials_time_out_with_4401(start_relay: RelayFactory) -> None:
    relay = await start_relay(ws_auth_timeout_s=0.2)
    async with WsHarness(relay) as ws:
        assert await ws.expect_closed() == Close.UNAUTHENTICATED


async def test_first_frame_and_header_auth(relay: RelayServer, tenant: Tenant) -> None:
    chat = await tenant.chat()
    for mode in ("first_frame", "header"):
        async with WsHarness(relay, token=tenant.key, auth=mode, topics=[f"chat:{chat}"]) as ws:
            assert (await ws.send_op("ping"))["ts"] > 0


async def test_disallowed_origin_is_closed_4403(relay: RelayServer, tenant: Tenant) -> None:
    async with WsHarness(relay, token=tenant.key, origin="https://evil.example") as ws:
        assert await ws.expect_closed() == Close.FORBIDDEN
    async with WsHarness(relay, token=tenant.key, origin="http://localhost:8080") as ws:
        await ws.send_op("ping")


async def test_topic_of_another_tenant_is_refused(relay: RelayServer, tenant: Tenant, http) -> None:  # type: ignore[no-untyped-def]
    other = await new_tenant(relay, http, "other")
    theirs = await other.chat()
    async with WsHarness(relay, token=tenant.key) as ws:
        for topic in (f"chat:{theirs}", f"tenant:{other.id}", "admin", "chat:doesnotexist"):
            with pytest.raises(OpError) as err:
                await ws.subscribe(topic)
            assert err.value.code == "forbidden"
        with pytest.raises(OpError) as err:
            await ws.send_op("send", topic=f"chat:{theirs}", content="x", client_msg_id="a")
        assert err.value.code == "forbidden"
        await ws.subscribe(f"tenant:{tenant.id}")


async def test_session_token_reaches_only_its_chats(relay: RelayServer, tenant: Tenant) -> None:
    mine, other = await tenant.chat(), await tenant.chat()
    token = await tenant.session([mine])
    async with WsHarness(relay, token=token, topics=[f"chat:{mine}"]) as ws:
        with pytest.raises(OpError) as err:
            await ws.subscribe(f"chat:{other}")
        assert err.value.code == "forbidden"
        with pytest.raises(OpError):
            await ws.subscribe(f"tenant:{tenant.id}")


async def test_bad_frames_get_error_frames_not_a_crash(relay: RelayServer, tenant: Tenant) -> None:
    async with WsHarness(relay, token=tenant.key) as ws:
        await ws.send_raw("{not json")
        frame = await ws.recv()
        assert frame["type"] == "error" and frame["data"]["code"] == "invalid_json"
        await ws.send_raw(json.dumps({"op": "fly", "ref": "r1"}))
        frame = await ws.recv()
        assert frame == {
            "type": "error",
            "ref": "r1",
            "data": {"code": "unknown_op", "detail": "unknown op"},
        }
        await ws.send_raw("[1, 2]")
        assert (await ws.recv())["data"]["code"] == "validation_error"
        with pytest.raises(OpError) as err:
            await ws.send_op("subscribe", topic="nope:")
        assert err.value.code == "validation_error"
        with pytest.raises(OpError) as err:
            await ws.send_op("subscribe", topic=f"tenant:{tenant.id}", after_seq=-1, epoch="e")
        assert err.value.code == "validation_error"
        assert (await ws.send_op("ping"))["ts"] > 0  # still serving


async def test_oversize_frame_closes_1009(start_relay: RelayFactory, make_settings) -> None:  # type: ignore[no-untyped-def]
    relay = await start_relay(ws_max_frame_bytes=2048)
    async with WsHarness(relay, token="x" * 10, auth="first_frame") as ws:
        await ws.send_raw("x" * 4096)
        assert await ws.expect_closed() in (Close.TOO_BIG, Close.UNAUTHENTICATED)
    async with __import__("httpx").AsyncClient(base_url=relay.url) as http:
        tenant = await new_tenant(relay, http)
        async with WsHarness(relay, token=tenant.key) as ws:
            await ws.send_op("ping")
            await ws.send_raw(json.dumps({"op": "ping", "pad": "x" * 4096}))
            assert await ws.expect_closed() == Close.TOO_BIG


async def test_invalid_utf8_closes_1007(relay: RelayServer, tenant: Tenant) -> None:
    raw = await RawWs.connect(relay.port, tenant.key)
    await raw.send_frame(b"\xff\xfe\xfd")
    code, _ = await raw.read_until_close()
    raw.close()
    assert code == Close.INVALID_DATA


async def test_op_flood_closes_4429(start_relay: RelayFactory) -> None:
    relay = await start_relay(ws_op_rate=5, ws_op_burst=5, ws_op_violations=5)
    async with __import__("httpx").AsyncClient(base_url=relay.url) as http:
        tenant = await new_tenant(relay, http)
    counted = RATE_LIMITED.labels("ws_ops")._value.get()
    async with WsHarness(relay, token=tenant.key) as ws:
        for _ in range(30):
            await ws.send_raw(json.dumps({"op": "ping"}))
        assert await ws.expect_closed() == Close.RATE_LIMITED
        limited = [f for f in ws.frames if f.get("type") == "error"]
        assert limited and all(f["data"]["code"] == "rate_limited" for f in limited)
    assert RATE_LIMITED.labels("ws_ops")._value.get() - counted == len(limited) + 1


async def test_silent_client_is_closed_4408(start_relay: RelayFactory) -> None:
    relay = await start_relay(heartbeat_interval_s=0.1, heartbeat_timeout_s=0.4)
    async with __import__("httpx").AsyncClient(base_url=relay.url) as http:
        tenant = await new_tenant(relay, http)
    # The harness's client answers pings on its own, so it stays connected...
    async with WsHarness(relay, token=tenant.key) as alive:
        raw = await RawWs.connect(relay.port, tenant.key)
        # ...while this one reads pings but never answers them.
        code, _ = await raw.read_until_close(timeout=5)
        raw.close()
        assert code == Close.HEARTBEAT_TIMEOUT
        assert (await alive.send_op("ping"))["ts"] > 0
    assert not relay.app.http.state.relay.gateway.clients


async def test_connection_caps_per_identity(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_ws_per_identity=2)
    async with __import__("httpx").AsyncClient(base_url=relay.url) as http:
        tenant = await new_tenant(relay, http)
    async with WsHarness(relay, token=tenant.key) as a, WsHarness(relay, token=tenant.key) as b:
        await a.send_op("ping")
        await b.send_op("ping")
        async with WsHarness(relay, token=tenant.key) as c:
            assert await c.expect_closed() == Close.RATE_LIMITED
    async with WsHarness(relay, token=tenant.key) as d:  # released on close
        await d.send_op("ping")


async def test_live_fanout_to_every_tab_in_order(relay: RelayServer, tenant: Tenant) -> None:
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    tabs = [WsHarness(relay, token=tenant.key, topics=[topic]) for _ in range(3)]
    for tab in tabs:
        await tab.__aenter__()
    try:
        await tenant.publish(topic, custom(300))
        for tab in tabs:
            for _ in range(300):
                await tab.expect("custom.n", timeout=5)
            tab.assert_in_order(topic)
            tab.assert_no_duplicates()
            assert [f["data"]["i"] for f in tab.events(topic)] == list(range(300))
    finally:
        for tab in tabs:
            await tab.__aexit__(None, None, None)


async def test_replay_after_a_gap_is_exact(relay: RelayServer, tenant: Tenant) -> None:
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        await tenant.publish(topic, custom(5))
        for _ in range(5):
            await ws.expect("custom.n")
        epoch, seq = ws.positions[topic]
    await tenant.publish(topic, custom(7, start=5))  # missed while away
    async with WsHarness(relay, token=tenant.key) as ws:
        ack = await ws.subscribe(topic, epoch=epoch, after_seq=seq)
        assert ack["replayed"] == 7 and ack["missed"] is False
        await tenant.publish(topic, custom(3, start=12))  # live again
        for _ in range(10):
            await ws.expect("custom.n")
        assert [f["data"]["i"] for f in ws.events(topic)] == list(range(5, 15))
        ws.assert_in_order(topic)
        ws.assert_no_duplicates()


async def test_replay_concurrent_with_publishing_has_no_gap_or_dup(
    relay: RelayServer, tenant: Tenant
) -> None:
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    first = await tenant.publish(topic, custom(50))
    epoch = first["epoch"]

    async def publish_more() -> None:
        for k in range(10):
            await tenant.publish(topic, custom(20, start=50 + 20 * k))

    async with WsHarness(relay, token=tenant.key) as ws:
        publisher = asyncio.create_task(publish_more())
        await ws.subscribe(topic, epoch=epoch, after_seq=10)
        await publisher
        while len(ws.events(topic)) < 240:
            await ws.expect("custom.n", timeout=5)
        assert [f["data"]["i"] for f in ws.events(topic)] == list(range(10, 250))
        ws.assert_in_order(topic)


async def test_trimmed_history_sends_events_missed(start_relay: RelayFactory) -> None:
    relay = await start_relay(history_max_events=10)
    async with __import__("httpx").AsyncClient(base_url=relay.url) as http:
        tenant = await new_tenant(relay, http)
        chat = await tenant.chat()
        topic = f"chat:{chat}"
        body = await tenant.publish(topic, custom(30))
        async with WsHarness(relay, token=tenant.key) as ws:
            ack = await ws.subscribe(topic, epoch=body["epoch"], after_seq=3)
            assert ack["missed"] is True and ack["replayed"] == 0
            missed = await ws.expect("events.missed")
            assert missed["data"]["reason"] == "gap" and missed["seq"] == 30
            await tenant.publish(topic, custom(1, start=30))
            assert (await ws.expect("custom.n"))["seq"] == 31


async def test_replay_beyond_the_maximum_sends_events_missed(start_relay: RelayFactory) -> None:
    relay = await start_relay(replay_max_events=5)
    async with __import__("httpx").AsyncClient(base_url=relay.url) as http:
        tenant = await new_tenant(relay, http)
        topic = f"chat:{await tenant.chat()}"
        body = await tenant.publish(topic, custom(20))
        async with WsHarness(relay, token=tenant.key) as ws:
            assert (await ws.subscribe(topic, epoch=body["epoch"], after_seq=10))["missed"]
            await ws.expect("events.missed")
            assert not ws.events(topic)


async def test_epoch_change_sends_events_missed(
    start_relay: RelayFactory,
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    relay = await start_relay()
    async with __import__("httpx").AsyncClient(base_url=relay.url) as http:
        tenant = await new_tenant(relay, http)
        topic = f"chat:{await tenant.chat()}"
        body = await tenant.publish(topic, custom(3))
    await relay.stop()
    # Same store, new process: the in-process log is gone, so its epoch is new.
    restarted = await start_relay(database_url=relay.settings.database_url)
    async with WsHarness(restarted, token=tenant.key) as ws:
        ack = await ws.subscribe(topic, epoch=body["epoch"], after_seq=3)
        assert ack["missed"] is True and ack["epoch"] != body["epoch"]
        missed = await ws.expect("events.missed")
        assert missed["data"]["reason"] == "epoch_changed"


async def test_duplicate_send_returns_the_original(relay: RelayServer, tenant: Tenant) -> None:
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        first = await ws.send_op("send", topic=topic, content="hi", client_msg_id="m-1")
        again = await ws.send_op("send", topic=topic, content="hi", client_msg_id="m-1")
        assert first["duplicate"] is False and again["duplicate"] is True
        assert again["message"]["id"] == first["message"]["id"]
        await ws.expect("message.created")
        await ws.assert_silent(0.3, type="message.created")
    r = await tenant.http.get(f"/v1/chats/{chat}/messages", headers=tenant.auth)
    assert [m["content"] for m in r.json()["items"]] == ["hi"]


async def test_cancel_op(relay: RelayServer, tenant: Tenant) -> None:
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        sent = await ws.send_op("send", topic=topic, content="hi", client_msg_id="c")
        ack = await ws.send_op("cancel", topic=topic)
        assert ack == {"cancelled": True, "turn_id": sent["turn_id"]}
        assert (await ws.expect("turn.cancelled"))["data"]["turn_id"] == sent["turn_id"]


async def test_shutdown_closes_clients_with_1012(start_relay: RelayFactory) -> None:
    relay = await start_relay()
    async with __import__("httpx").AsyncClient(base_url=relay.url) as http:
        tenant = await new_tenant(relay, http)
    async with WsHarness(relay, token=tenant.key) as ws:
        await ws.send_op("ping")
        await relay.stop()
        assert await ws.expect_closed() == Close.RESTARTING


@pytest.mark.redis
async def test_a_redis_error_reply_is_an_unavailable_error_frame(
    start_relay: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that answers with an error (READONLY after a failover) fails the op with the
    stable code ``unavailable``; the socket stays open."""
    import os
    import uuid

    from redis.asyncio import Redis
    from redis.exceptions import ResponseError

    from relayline.bus.redis_streams import RedisStreamsBus

    url = os.environ.get("RELAYLINE_TEST_REDIS", "redis://127.0.0.1:6379/15")
    client = Redis.from_url(url, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:  # no server to test against
        await client.aclose()
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    prefix = f"rltest:{uuid.uuid4().hex}:"
    try:
        relay = await start_relay(redis_url=url, redis_prefix=prefix)
        bus = relay.app.http.state.relay.bus
        assert isinstance(bus, RedisStreamsBus)

        async def refused(*args: object, **kwargs: object) -> object:
            raise ResponseError("READONLY You can't write against a read only replica.")

        async with __import__("httpx").AsyncClient(base_url=relay.url) as http:
            tenant = await new_tenant(relay, http)
            async with WsHarness(relay, token=tenant.key) as ws:
                monkeypatch.setattr(bus, "_position_script", refused)
                with pytest.raises(OpError) as err:
                    await ws.subscribe(f"tenant:{tenant.id}")
                assert err.value.code == "unavailable"
                assert (await ws.send_op("ping"))["ts"] > 0  # still serving
                monkeypatch.undo()
                await ws.subscribe(f"tenant:{tenant.id}")
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
