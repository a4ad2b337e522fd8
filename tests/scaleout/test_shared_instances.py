"""Two relay instances sharing PostgreSQL and Redis behave as one relay."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from relayline.protocol.close_codes import Close
from relayline.protocol.signing import signed_headers
from relayline.testing import RelayServer, WsHarness
from tests.conftest import SettingsFactory
from tests.fixtures import Tenant, new_tenant

REDIS = "redis://127.0.0.1:6379/14"
WORKER = ("w1", "w" * 32)


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS, socket_connect_timeout=1).ping())
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}")


@contextlib.asynccontextmanager
async def two_instances(
    make_settings: SettingsFactory, **overrides: Any
) -> AsyncIterator[tuple[RelayServer, RelayServer]]:
    """Two relay instances sharing Redis (under a key prefix of their own, deleted at the end)
    and whatever database ``overrides`` name."""
    prefix = f"rltest:{secrets.token_hex(4)}:"
    settings = {"redis_url": REDIS, "redis_prefix": prefix, "instances": 2, **overrides}
    first = RelayServer(make_settings(**settings))
    second = RelayServer(make_settings(**settings))
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await second.stop()
        await first.stop()
        import redis.asyncio as aredis

        client = aredis.Redis.from_url(REDIS)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def pair(
    request: pytest.FixtureRequest, make_settings: SettingsFactory, own_pg_url: str
) -> AsyncIterator[tuple[RelayServer, RelayServer]]:
    async with two_instances(
        make_settings,
        database_url=own_pg_url,
        worker_keys=[f"{WORKER[0]}:{WORKER[1]}"],
        **getattr(request, "param", {}),  # a test's own settings, through indirect parametrize
    ) as relays:
        yield relays


async def tenant_on(server: RelayServer, http: httpx.AsyncClient) -> Tenant:
    return await new_tenant(server, http)


async def test_events_published_on_one_instance_reach_clients_of_the_other(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        tenant = await tenant_on(a, http)
        topic = f"chat:{await tenant.chat()}"
        async with (
            WsHarness(b, token=tenant.key, topics=[topic]) as on_b,
            WsHarness(a, token=tenant.key, topics=[topic]) as on_a,
        ):
            body = await tenant.publish(
                topic, [{"type": "custom.n", "data": {"i": i}} for i in range(50)]
            )
            for ws in (on_a, on_b):
                for _ in range(50):
                    await ws.expect("custom.n", timeout=5)
                ws.assert_in_order(topic)
                ws.assert_no_duplicates()
        # Resume on the other instance with the epoch the first one handed out.
        async with WsHarness(b, token=tenant.key) as ws:
            ack = await ws.subscribe(topic, epoch=body["epoch"], after_seq=40)
            assert ack["replayed"] == 10 and not ack["missed"]


async def test_duplicate_client_msg_id_on_two_instances_creates_one_message(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as http_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as http_b,
    ):
        tenant = await tenant_on(a, http_a)
        chat = await tenant.chat()
        body = {"content": "once", "client_msg_id": "dup-1"}
        results = await asyncio.gather(
            http_a.post(f"/v1/chats/{chat}/messages", json=body, headers=tenant.auth),
            http_b.post(f"/v1/chats/{chat}/messages", json=body, headers=tenant.auth),
        )
        assert {r.status_code for r in results} == {202}
        assert len({r.json()["message"]["id"] for r in results}) == 1
        listed = await http_b.get(f"/v1/chats/{chat}/messages", headers=tenant.auth)
        assert [m["content"] for m in listed.json()["items"]] == ["once"]


async def test_connection_caps_are_shared(make_settings: SettingsFactory, own_pg_url: str) -> None:
    prefix = f"rltest:{secrets.token_hex(4)}:"
    settings = make_settings(
        database_url=own_pg_url, redis_url=REDIS, redis_prefix=prefix, max_ws_per_identity=1
    )
    async with (
        RelayServer(settings) as a,
        RelayServer(settings) as b,
        httpx.AsyncClient(base_url=a.url, timeout=10) as http,
    ):
        tenant = await tenant_on(a, http)
        async with WsHarness(a, token=tenant.key) as first:
            await first.send_op("ping")
            async with WsHarness(b, token=tenant.key) as second:
                assert await second.expect_closed() == Close.RATE_LIMITED


async def test_rate_limit_is_shared(make_settings: SettingsFactory, own_pg_url: str) -> None:
    prefix = f"rltest:{secrets.token_hex(4)}:"
    settings = make_settings(
        database_url=own_pg_url, redis_url=REDIS, redis_prefix=prefix, rate_limit_ip="6/minute"
    )
    async with (
        RelayServer(settings) as a,
        RelayServer(settings) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        codes = []
        for i in range(8):
            server = a if i % 2 else b
            codes.append((await http.get(f"{server.url}/v1/chats")).status_code)
        assert codes[:6] == [401] * 6 and codes[6:] == [429, 429]


async def test_worker_nonce_replayed_on_another_instance_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    headers = signed_headers(WORKER[0], WORKER[1], "GET", "/v1/worker/ws")
    async with connect(f"ws://127.0.0.1:{a.port}/v1/worker/ws", additional_headers=headers):
        pass
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{b.port}/v1/worker/ws", additional_headers=headers):
            pass
    assert refused.value.response.status_code == 401
    assert b"nonce_reused" in refused.value.response.body
