"""A revocation made on one instance ends the live connections held by the other, through the
shared control channel (not a store poll: the re-validation interval is set far above the
bound checked here)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from relayline.protocol.close_codes import Close
from relayline.testing import RelayServer, WsHarness
from tests.conftest import ADMIN_KEY
from tests.fixtures import new_tenant
from tests.hub.test_credential_revocation import SseReader, key_id_of, second_key
from tests.scaleout.test_shared_instances import REDIS, _redis_up, pair

__all__ = ["pair"]  # the fixture, shared with the other two-instance tests

pytestmark = pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}")
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("pair", [{"auth_revalidate_s": 300}], indirect=True)
async def test_revoking_a_key_on_one_instance_closes_its_sockets_on_the_other(
    pair: tuple[RelayServer, RelayServer],
) -> None:
    a, b = pair
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as on_b,
    ):
        tenant = await new_tenant(a, on_a)
        chat = await tenant.chat()
        topic = f"chat:{chat}"
        other = await second_key(on_a, tenant)
        key_id = await key_id_of(on_a, tenant)
        token = await tenant.session([chat])
        async with (
            WsHarness(b, token=tenant.key, topics=[topic]) as ws_key,
            WsHarness(b, token=token, topics=[topic]) as ws_session,
            on_b.stream("GET", "/v1/events", params={"topics": topic}, headers=tenant.auth) as resp,
        ):
            assert resp.status_code == 200
            sse = SseReader(resp)
            r = await on_a.delete(f"/v1/admin/keys/{key_id}", headers=ADMIN)
            assert r.status_code == 200
            assert await ws_key.expect_closed(timeout=5) == Close.UNAUTHENTICATED
            async with asyncio.timeout(5):
                await sse.ended.wait()
            # The session token is not the revoked key: it keeps working.
            assert "ts" in await ws_session.send_op("ping")
            # B's credential cache heard of it too: a new request there is refused at once.
            r = await on_b.get(f"/v1/chats/{chat}", headers=tenant.auth)
            assert r.status_code == 401
            assert (await on_b.get(f"/v1/chats/{chat}", headers=other.auth)).status_code == 200

            r = await on_a.post(f"/v1/admin/tenants/{tenant.id}/disable", headers=ADMIN)
            assert r.status_code == 200
            assert await ws_session.expect_closed(timeout=5) == Close.UNAUTHENTICATED
