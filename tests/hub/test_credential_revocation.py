"""Live connections end with their credential: a revoked key, a disabled tenant, an expired
session token (WebSocket close 4401, SSE stream ended), on one instance and across two."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
from sqlalchemy import update
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relayline import session_tokens
from relayline.protocol.close_codes import Close
from relayline.store.database import Database
from relayline.store.models import ApiKey
from relayline.testing import RelayServer, WsHarness
from tests.conftest import ADMIN_KEY, SettingsFactory
from tests.fixtures import RelayFactory, Tenant, new_tenant

SECRET_KEY = "test-secret-key-" + "y" * 32  # make_settings' secret key
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def key_id_of(http: httpx.AsyncClient, tenant: Tenant) -> str:
    r = await http.get(f"/v1/admin/tenants/{tenant.id}/keys", headers=ADMIN)
    assert r.status_code == 200, r.text
    (item,) = [k for k in r.json()["items"] if tenant.key.startswith(f"rl_{k['prefix']}_")]
    return str(item["id"])


async def second_key(http: httpx.AsyncClient, tenant: Tenant) -> Tenant:
    r = await http.post(f"/v1/admin/tenants/{tenant.id}/keys", json={}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return Tenant(tenant.id, r.json()["key"], http)


async def stored_contents(other: Tenant, chat_id: str) -> list[str]:
    r = await other.http.get(f"/v1/chats/{chat_id}/messages", headers=other.auth)
    assert r.status_code == 200, r.text
    return [m["content"] for m in r.json()["items"]]


class SseReader:
    """Reads an SSE response in the background; ``ended`` is set when the server ends it."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events: list[dict[str, Any]] = []
        self.ended = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for line in self.response.aiter_lines():
                if line.startswith("data: "):
                    self.events.append(json.loads(line[6:]))
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()


async def test_revoked_key_closes_its_socket_and_nothing_sent_after_is_stored(
    relay: RelayServer, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    other = await second_key(http, tenant)
    key_id = await key_id_of(http, tenant)
    async with WsHarness(relay, token=tenant.key, topics=[topic]) as ws:
        before = await ws.send_op("send", topic=topic, content="before", client_msg_id="m-1")
        assert before["message"]["content"] == "before"
        r = await http.delete(f"/v1/admin/keys/{key_id}", headers=ADMIN)
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        # Sent after the revocation took effect: never acknowledged, never stored.
        with_ref = {"op": "send", "topic": topic, "content": "after", "ref": "late"}
        with contextlib.suppress(ConnectionClosed):  # the close may already be here
            await ws.send_raw(json.dumps({**with_ref, "client_msg_id": "m-2"}))
        assert await ws.expect_closed(timeout=5) == Close.UNAUTHENTICATED
        assert not [f for f in ws.frames if f.get("ref") == "late"]
        # Events published after the revocation do not reach it either.
        await other.publish(topic, [{"type": "custom.after", "data": {}}])
        await ws.assert_silent(0.3, type="custom.after")
    assert await stored_contents(other, chat) == ["before"]
    # A new connection with the revoked key is refused as well.
    async with WsHarness(relay, token=tenant.key) as again:
        assert await again.expect_closed() == Close.UNAUTHENTICATED


async def test_revoked_key_ends_its_sse_stream(
    relay: RelayServer, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    topic = f"chat:{await tenant.chat()}"
    other = await second_key(http, tenant)
    key_id = await key_id_of(http, tenant)
    async with http.stream(
        "GET", "/v1/events", params={"topics": topic}, headers=tenant.auth
    ) as resp:
        assert resp.status_code == 200
        sse = SseReader(resp)
        await other.publish(topic, [{"type": "custom.before", "data": {}}])
        async with asyncio.timeout(5):
            while not sse.events:
                await asyncio.sleep(0.02)
        r = await http.delete(f"/v1/admin/keys/{key_id}", headers=ADMIN)
        assert r.status_code == 200
        async with asyncio.timeout(5):
            await sse.ended.wait()
    assert [e["type"] for e in sse.events] == ["custom.before"]


async def test_disabled_tenant_ends_session_sockets_and_sse(
    relay: RelayServer, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    token = await tenant.session([chat])
    async with (
        WsHarness(relay, token=token, topics=[topic]) as ws,
        http.stream("GET", "/v1/events", params={"topics": topic, "access_token": token}) as resp,
    ):
        assert resp.status_code == 200
        sse = SseReader(resp)
        r = await http.post(f"/v1/admin/tenants/{tenant.id}/disable", headers=ADMIN)
        assert r.status_code == 200 and r.json()["disabled"] is True
        assert await ws.expect_closed(timeout=5) == Close.UNAUTHENTICATED
        async with asyncio.timeout(5):
            await sse.ended.wait()
    r = await http.post(f"/v1/admin/tenants/{tenant.id}/enable", headers=ADMIN)
    assert r.status_code == 200
    async with WsHarness(relay, token=token, topics=[topic]) as ws:
        assert "ts" in await ws.send_op("ping")


async def test_session_token_expiring_while_open_closes_the_socket(
    relay: RelayServer, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    # Shorter than any TTL the API hands out, minted with the relay's own secret.
    token, expires_at = session_tokens.mint(SECRET_KEY, tenant.id, [chat], 2, int(time.time()))
    async with (
        WsHarness(relay, token=token, topics=[topic]) as ws,
        http.stream("GET", "/v1/events", params={"topics": topic, "access_token": token}) as resp,
    ):
        assert resp.status_code == 200
        sse = SseReader(resp)
        assert "ts" in await ws.send_op("ping")
        assert await ws.expect_closed(timeout=8) == Close.UNAUTHENTICATED
        assert time.time() >= expires_at
        async with asyncio.timeout(5):
            await sse.ended.wait()


async def test_revocation_the_broadcast_missed_is_found_by_revalidation(
    start_relay: RelayFactory,
) -> None:
    relay = await start_relay(auth_revalidate_s=1.0)
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        tenant = await new_tenant(relay, http)
        key_id = await key_id_of(http, tenant)
        async with WsHarness(relay, token=tenant.key) as ws:
            # Revoked straight in the store, as another tool or a lost broadcast would leave it.
            db = Database(relay.settings)
            try:
                async with db.write() as session:
                    await session.execute(
                        update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=1)
                    )
            finally:
                await db.dispose()
            assert await ws.expect_closed(timeout=6) == Close.UNAUTHENTICATED


async def test_keys_are_refused_in_urls(
    relay: RelayServer, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    chat = await tenant.chat()
    topic = f"chat:{chat}"
    for key in (tenant.key, ADMIN_KEY):
        r = await http.get("/v1/events", params={"topics": topic, "access_token": key})
        assert r.status_code == 401, r.text
        error = r.json()["error"]
        assert error["code"] == "unauthorized" and "session token" in error["detail"]
        # Even beside a good Authorization header: the key has leaked into a URL.
        r = await http.get(f"/v1/chats/{chat}", params={"access_token": key}, headers=tenant.auth)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        async with connect(f"{relay.ws_url}?access_token={key}") as ws:
            await ws.wait_closed()
            assert ws.close_code == Close.UNAUTHENTICATED
            assert ws.close_reason is not None and "session token" in ws.close_reason
    # A session token may ride in the WebSocket URL, as on SSE.
    token = await tenant.session([chat])
    async with WsHarness(f"{relay.ws_url}?access_token={token}", topics=[topic]) as ws:
        assert "ts" in await ws.send_op("ping")


async def test_admin_key_rotated_away_is_refused_after_the_restart(
    make_settings: SettingsFactory,
) -> None:
    old_key, new_key = ADMIN_KEY, "rotated-admin-key-" + "n" * 32
    first = RelayServer(make_settings())
    await first.start()
    try:
        async with WsHarness(first, token=old_key, topics=["admin"]) as ws:
            await first.stop()
            # The restart closes every socket; the client comes back with the old key.
            assert await ws.expect_closed() == Close.RESTARTING
    finally:
        await first.stop()
    second = RelayServer(make_settings(admin_key=new_key))
    await second.start()
    try:
        async with WsHarness(second, token=old_key) as ws:
            assert await ws.expect_closed() == Close.UNAUTHENTICATED
        async with WsHarness(second, token=new_key, topics=["admin"]) as ws:
            assert "ts" in await ws.send_op("ping")
    finally:
        await second.stop()
