"""Operator API: tenants and their keys, and how the admin routes refuse everyone else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY, Api, admin_headers, assert_error, bearer

UNKNOWN_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # well formed, never created


async def _create_tenant(api: Api, name: str) -> dict[str, object]:
    r = await api.client.post("/v1/admin/tenants", json={"name": name}, headers=admin_headers())
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


async def test_create_tenant_returns_it(api: Api) -> None:
    body = await _create_tenant(api, "acme")

    assert body["name"] == "acme"
    assert body["disabled"] is False
    assert isinstance(body["id"], str) and body["id"]
    assert isinstance(body["created_at"], int) and body["created_at"] > 0


async def test_list_tenants_pages_with_next_after(api: Api) -> None:
    created = [str((await _create_tenant(api, f"t{i}"))["id"]) for i in range(5)]

    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if after is not None:
            params["after"] = after
        r = await api.client.get("/v1/admin/tenants", params=params, headers=admin_headers())
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        pages += 1
        after = page["next_after"]
        if after is None:
            break
        assert after == page["items"][-1]["id"]
        assert pages < 10, "pagination does not end"

    assert seen == sorted(created)
    assert pages == 3  # 2 + 2 + 1


async def test_list_tenants_full_page_then_empty_page(api: Api) -> None:
    for i in range(2):
        await _create_tenant(api, f"t{i}")

    r = await api.client.get("/v1/admin/tenants", params={"limit": 2}, headers=admin_headers())
    first = r.json()
    assert len(first["items"]) == 2 and first["next_after"] == first["items"][-1]["id"]
    r = await api.client.get(
        "/v1/admin/tenants",
        params={"limit": 2, "after": first["next_after"]},
        headers=admin_headers(),
    )
    assert r.json() == {"items": [], "next_after": None}


async def test_disable_refuses_the_tenants_key_and_enable_restores_it(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    # A first use caches the key's decision; disabling must not wait for the cache to expire.
    assert (await api.client.get("/v1/chats", headers=bearer(key))).status_code == 200

    r = await api.client.post(f"/v1/admin/tenants/{tenant_id}/disable", headers=admin_headers())
    assert r.status_code == 200, r.text
    assert r.json()["disabled"] is True
    assert_error(await api.client.get("/v1/chats", headers=bearer(key)), 401, "unauthorized")

    listed = (await api.client.get("/v1/admin/tenants", headers=admin_headers())).json()
    assert [t["disabled"] for t in listed["items"] if t["id"] == tenant_id] == [True]

    r = await api.client.post(f"/v1/admin/tenants/{tenant_id}/enable", headers=admin_headers())
    assert r.status_code == 200, r.text
    assert r.json()["disabled"] is False
    assert (await api.client.get("/v1/chats", headers=bearer(key))).status_code == 200


async def test_new_key_is_shown_once_and_never_listed(api: Api) -> None:
    tenant_id = str((await _create_tenant(api, "acme"))["id"])

    r = await api.client.post(
        f"/v1/admin/tenants/{tenant_id}/keys", json={"name": "server"}, headers=admin_headers()
    )
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("rl_") and len(key) > 40
    assert created["tenant_id"] == tenant_id
    assert created["name"] == "server"
    # Default: every scope.
    assert created["scopes"] == ["chats", "publish", "sessions", "terminals"]
    assert created["revoked_at"] is None

    r = await api.client.get(f"/v1/admin/tenants/{tenant_id}/keys", headers=admin_headers())
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [item["id"] for item in items] == [created["id"]]
    assert "key" not in items[0]
    assert key not in r.text
    prefix = items[0]["prefix"]
    assert key.startswith(f"rl_{prefix}_")
    assert key[len(f"rl_{prefix}_") :] not in r.text  # not even the secret part

    # The key works.
    assert (await api.client.get("/v1/chats", headers=bearer(key))).status_code == 200


async def test_key_with_chosen_scopes(api: Api) -> None:
    tenant_id = str((await _create_tenant(api, "acme"))["id"])
    r = await api.client.post(
        f"/v1/admin/tenants/{tenant_id}/keys",
        json={"scopes": ["sessions", "chats", "sessions"]},
        headers=admin_headers(),
    )
    assert r.status_code == 201, r.text
    assert r.json()["scopes"] == ["chats", "sessions"]


@pytest.mark.parametrize(
    "body",
    [{"scopes": ["chats", "root"]}, {"scopes": []}, {"scopes": "chats"}, {"label": "x"}],
    ids=["unknown-scope", "empty-scopes", "not-a-list", "unknown-field"],
)
async def test_bad_key_request_is_refused(api: Api, body: dict[str, object]) -> None:
    tenant_id = str((await _create_tenant(api, "acme"))["id"])
    r = await api.client.post(
        f"/v1/admin/tenants/{tenant_id}/keys", json=body, headers=admin_headers()
    )
    error = assert_error(r, 422, "validation_error")
    assert next(iter(body)) in error["detail"]

    listed = await api.client.get(f"/v1/admin/tenants/{tenant_id}/keys", headers=admin_headers())
    assert listed.json()["items"] == []


async def test_revoked_key_is_refused(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    assert (await api.client.get("/v1/chats", headers=bearer(key))).status_code == 200
    key_id = (
        await api.client.get(f"/v1/admin/tenants/{tenant_id}/keys", headers=admin_headers())
    ).json()["items"][0]["id"]

    r = await api.client.delete(f"/v1/admin/keys/{key_id}", headers=admin_headers())
    assert r.status_code == 200, r.text
    revoked_at = r.json()["revoked_at"]
    assert isinstance(revoked_at, int)
    assert_error(await api.client.get("/v1/chats", headers=bearer(key)), 401, "unauthorized")

    # Revoking again changes nothing.
    again = await api.client.delete(f"/v1/admin/keys/{key_id}", headers=admin_headers())
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked_at
    assert_error(await api.client.get("/v1/chats", headers=bearer(key)), 401, "unauthorized")


async def test_revoking_one_key_keeps_the_others(api: Api) -> None:
    tenant_id, first = await api.tenant_with_key()
    r = await api.client.post(
        f"/v1/admin/tenants/{tenant_id}/keys", json={}, headers=admin_headers()
    )
    second = r.json()["key"]
    first_id = (
        await api.client.get(f"/v1/admin/tenants/{tenant_id}/keys", headers=admin_headers())
    ).json()["items"][0]["id"]

    await api.client.delete(f"/v1/admin/keys/{first_id}", headers=admin_headers())

    assert (await api.client.get("/v1/chats", headers=bearer(second))).status_code == 200
    assert (await api.client.get("/v1/chats", headers=bearer(first))).status_code == 401


async def test_key_use_is_recorded_without_a_write_per_request(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, key = await api.tenant_with_key()
    relay = api.app.http.state.relay
    write = relay.db.write
    writes: list[None] = []

    @asynccontextmanager
    async def counted_write() -> AsyncIterator[Any]:
        writes.append(None)
        async with write() as session:
            yield session

    monkeypatch.setattr(relay.db, "write", counted_write)

    # Refusing a wrong key takes no write transaction (on SQLite: no write lock).
    for bogus in ("rl_aaaaaaaaaaaa_" + "b" * 43, key[:-1] + "x", "rl_short"):
        assert_error(await api.client.get("/v1/chats", headers=bearer(bogus)), 401, "unauthorized")
    assert writes == []

    assert (await api.client.get("/v1/chats", headers=bearer(key))).status_code == 200
    assert len(writes) == 1  # last_used_at recorded
    relay.auth.forget()
    assert (await api.client.get("/v1/chats", headers=bearer(key))).status_code == 200
    assert len(writes) == 1  # ... at most once a minute

    listed = await api.client.get(f"/v1/admin/tenants/{tenant_id}/keys", headers=admin_headers())
    assert isinstance(listed.json()["items"][0]["last_used_at"], int)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/admin/tenants"),
        ("POST", "/v1/admin/tenants"),
        ("DELETE", f"/v1/admin/keys/{UNKNOWN_ID}"),
    ],
)
async def test_missing_credentials_are_401(api: Api, method: str, path: str) -> None:
    r = await api.client.request(method, path, json={"name": "x"} if method == "POST" else None)
    assert_error(r, 401, "unauthorized")


@pytest.mark.parametrize(
    "credential",
    [
        ADMIN_KEY + "x",
        ADMIN_KEY[:-1],
        "rl_aaaaaaaaaaaa_" + "b" * 43,
        "not-a-token",
    ],
    ids=["admin-plus-one", "admin-minus-one", "unknown-tenant-key", "garbage"],
)
async def test_wrong_credentials_are_401(api: Api, credential: str) -> None:
    r = await api.client.get("/v1/admin/tenants", headers=bearer(credential))
    assert_error(r, 401, "unauthorized")


async def test_non_bearer_scheme_is_401(api: Api) -> None:
    r = await api.client.get("/v1/admin/tenants", headers={"Authorization": f"Basic {ADMIN_KEY}"})
    assert_error(r, 401, "unauthorized")


async def test_tenant_key_on_admin_routes_is_403(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    for method, path in [
        ("GET", "/v1/admin/tenants"),
        ("POST", f"/v1/admin/tenants/{tenant_id}/keys"),
        ("POST", f"/v1/admin/tenants/{tenant_id}/disable"),
        ("GET", f"/v1/admin/tenants/{tenant_id}/keys"),
    ]:
        r = await api.client.request(
            method, path, json={} if method == "POST" else None, headers=bearer(key)
        )
        assert_error(r, 403, "forbidden")

    # Nothing changed.
    listed = (await api.client.get("/v1/admin/tenants", headers=admin_headers())).json()
    assert [t["disabled"] for t in listed["items"]] == [False]


async def test_session_token_on_admin_routes_is_403(api: Api) -> None:
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)
    token = (
        await api.client.post("/v1/sessions", json={"chat_ids": [chat_id]}, headers=bearer(key))
    ).json()["token"]

    assert_error(await api.client.get("/v1/admin/tenants", headers=bearer(token)), 403, "forbidden")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/v1/admin/tenants/{UNKNOWN_ID}/keys"),
        ("GET", f"/v1/admin/tenants/{UNKNOWN_ID}/keys"),
        ("POST", f"/v1/admin/tenants/{UNKNOWN_ID}/disable"),
        ("POST", f"/v1/admin/tenants/{UNKNOWN_ID}/enable"),
        ("DELETE", f"/v1/admin/keys/{UNKNOWN_ID}"),
    ],
)
async def test_unknown_ids_are_404(api: Api, method: str, path: str) -> None:
    r = await api.client.request(
        method, path, json={} if method == "POST" else None, headers=admin_headers()
    )
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "x" * 201}, {"name": "a\x00b"}, {"name": "ok", "extra": 1}],
    ids=["missing", "empty", "too-long", "nul", "extra-field"],
)
async def test_bad_tenant_body_is_422(api: Api, body: dict[str, object]) -> None:
    r = await api.client.post("/v1/admin/tenants", json=body, headers=admin_headers())
    error = assert_error(r, 422, "validation_error")
    assert ("extra" if "extra" in body else "name") in error["detail"]
    listed = (await api.client.get("/v1/admin/tenants", headers=admin_headers())).json()
    assert listed["items"] == []
