"""GET /v1/analytics with a browser session token: only a token minted with ``analytics``
reads, only its own tenant's figures, and the right survives a chat the session creates; a
public chat's visitor never holds it."""

from __future__ import annotations

from typing import Any

from relayline.store import analytics
from relayline.store.database import Database
from tests.api.test_analytics_api import TODAY, key_of
from tests.conftest import Api, assert_error, bearer
from tests.store.analytics_data import SEEDED_DAYS, brute_force, seed

RANGE = {"from": "2024-03-30", "to": "2024-04-01"}


async def seeded(api: Api) -> dict[str, str]:
    db: Database = api.app.http.state.relay.db
    ids = (await seed(db)).tenant_ids
    for day in SEEDED_DAYS:
        await analytics.aggregate_day(db, day, today=TODAY, retention_days=0)
    return ids


async def session_of(api: Api, key: str, **body: Any) -> str:
    r = await api.client.post("/v1/sessions", json={"ttl_s": 600, **body}, headers=bearer(key))
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def test_a_session_minted_with_analytics_reads_its_own_tenant(api: Api) -> None:
    ids = await seeded(api)
    key = await key_of(api, ids["globex"])
    token = await session_of(api, key, can_create_chats=True, analytics=True)
    r = await api.client.get("/v1/analytics", params=RANGE, headers=bearer(token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenant_id"] == ids["globex"]
    expected = await brute_force(api.app.http.state.relay.db)
    assert [d["messages"] for d in body["days"]] == [
        expected[(ids["globex"], d.isoformat())]["messages"] for d in SEEDED_DAYS
    ]
    # Asking for another tenant changes nothing: the token decides.
    r = await api.client.get(
        "/v1/analytics", params={**RANGE, "tenant_id": ids["acme"]}, headers=bearer(token)
    )
    assert r.json()["tenant_id"] == ids["globex"]
    # Nor does it open the operator's route.
    assert_error(
        await api.client.get("/v1/admin/analytics", params=RANGE, headers=bearer(token)),
        403,
        "forbidden",
    )
    # The token a new chat brings keeps the right.
    r = await api.client.post("/v1/chats", json={"title": "t"}, headers=bearer(token))
    assert r.status_code == 201, r.text
    renewed = r.json()["session_token"]
    r = await api.client.get("/v1/analytics", params=RANGE, headers=bearer(renewed))
    assert r.status_code == 200 and r.json()["tenant_id"] == ids["globex"]


async def test_a_session_without_analytics_is_refused(api: Api) -> None:
    ids = await seeded(api)
    key = await key_of(api, ids["acme"])
    token = await session_of(api, key, can_create_chats=True)
    error = assert_error(
        await api.client.get("/v1/analytics", params=RANGE, headers=bearer(token)),
        403,
        "forbidden",
    )
    assert "analytics" in error["detail"]
    # Nor does a chat it creates bring the right.
    r = await api.client.post("/v1/chats", json={"title": "t"}, headers=bearer(token))
    renewed = r.json()["session_token"]
    assert_error(
        await api.client.get("/v1/analytics", params=RANGE, headers=bearer(renewed)),
        403,
        "forbidden",
    )


async def test_a_public_chats_visitor_cannot_read_the_tenants_figures(api: Api) -> None:
    ids = await seeded(api)
    key = await key_of(api, ids["acme"])
    r = await api.client.post("/v1/public/codes", json={}, headers=bearer(key))
    assert r.status_code == 201, r.text
    visitor = await api.client.post("/v1/public/sessions", json={"code": r.json()["code"]})
    assert visitor.status_code == 201, visitor.text
    assert_error(
        await api.client.get("/v1/analytics", headers=bearer(visitor.json()["token"])),
        403,
        "forbidden",
    )


async def test_analytics_must_be_a_boolean(api: Api) -> None:
    ids = await seeded(api)
    key = await key_of(api, ids["acme"])
    r = await api.client.post(
        "/v1/sessions",
        json={"can_create_chats": True, "analytics": "please"},
        headers=bearer(key),
    )
    assert_error(r, 422, "validation_error")
