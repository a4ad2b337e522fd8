"""Chats, messages and browser sessions over HTTP, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relayline import session_tokens
from tests.conftest import Api, SettingsFactory, admin_headers, assert_error, bearer, open_client

SECRET = "test-secret-key-" + "y" * 32  # make_settings' secret key


@pytest.fixture
async def api(make_settings: SettingsFactory, db_url: str) -> AsyncIterator[Api]:
    async for client in open_client(make_settings(database_url=db_url)):
        yield client


async def _post(
    api: Api, key: str, chat_id: str, content: str = "hi", **extra: Any
) -> dict[str, Any]:
    headers = {**bearer(key), **extra.pop("headers", {})}
    r = await api.client.post(
        f"/v1/chats/{chat_id}/messages", json={"content": content, **extra}, headers=headers
    )
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


async def _messages(api: Api, key: str, chat_id: str, **params: Any) -> dict[str, Any]:
    r = await api.client.get(f"/v1/chats/{chat_id}/messages", params=params, headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _session(api: Api, key: str, chat_ids: list[str], **extra: Any) -> dict[str, Any]:
    r = await api.client.post(
        "/v1/sessions", json={"chat_ids": chat_ids, **extra}, headers=bearer(key)
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


# --- chats ----------------------------------------------------------------------------------


async def test_create_get_and_list_chats(api: Api) -> None:
    _, key = await api.tenant_with_key()

    r = await api.client.post("/v1/chats", json={"title": "Support"}, headers=bearer(key))
    assert r.status_code == 201, r.text
    chat = r.json()
    assert chat["title"] == "Support" and chat["archived_at"] is None and chat["last_seq"] == 0

    r = await api.client.get(f"/v1/chats/{chat['id']}", headers=bearer(key))
    assert r.status_code == 200, r.text
    snapshot = r.json()
    assert snapshot["id"] == chat["id"]
    assert snapshot["topic"] == f"chat:{chat['id']}"
    assert snapshot["turn"] is None

    untitled = (await api.client.post("/v1/chats", json={}, headers=bearer(key))).json()
    assert untitled["title"] is None

    listed = (await api.client.get("/v1/chats", headers=bearer(key))).json()
    assert [c["id"] for c in listed["items"]] == [untitled["id"], chat["id"]]  # newest first
    assert listed["next_after"] is None


async def test_chats_list_pages(api: Api) -> None:
    _, key = await api.tenant_with_key()
    ids = [await api.chat(key, f"c{i}") for i in range(3)]

    first = (await api.client.get("/v1/chats", params={"limit": 2}, headers=bearer(key))).json()
    assert [c["id"] for c in first["items"]] == ids[::-1][:2]
    assert first["next_after"] == ids[1]
    second = (
        await api.client.get(
            "/v1/chats", params={"limit": 2, "after": first["next_after"]}, headers=bearer(key)
        )
    ).json()
    assert [c["id"] for c in second["items"]] == [ids[0]]
    assert second["next_after"] is None


async def test_tenants_do_not_see_each_others_chats(api: Api) -> None:
    _, key_a = await api.tenant_with_key("a")
    _, key_b = await api.tenant_with_key("b")
    chat_a = await api.chat(key_a)

    assert (await api.client.get("/v1/chats", headers=bearer(key_b))).json()["items"] == []
    for method, path in [
        ("GET", f"/v1/chats/{chat_a}"),
        ("GET", f"/v1/chats/{chat_a}/messages"),
        ("POST", f"/v1/chats/{chat_a}/cancel"),
        ("POST", f"/v1/chats/{chat_a}/archive"),
    ]:
        assert_error(
            await api.client.request(method, path, headers=bearer(key_b)), 404, "not_found"
        )
    r = await api.client.post(
        f"/v1/chats/{chat_a}/messages", json={"content": "x"}, headers=bearer(key_b)
    )
    assert_error(r, 404, "not_found")
    assert (await _messages(api, key_a, chat_a))["items"] == []


async def test_archived_chats_are_hidden_and_refuse_posts(api: Api) -> None:
    _, key = await api.tenant_with_key()
    kept = await api.chat(key, "kept")
    archived = await api.chat(key, "old")
    await _post(api, key, archived, "before", client_msg_id="m1")

    r = await api.client.post(f"/v1/chats/{archived}/archive", headers=bearer(key))
    assert r.status_code == 200, r.text
    archived_at = r.json()["archived_at"]
    assert isinstance(archived_at, int)

    listed = (await api.client.get("/v1/chats", headers=bearer(key))).json()
    assert [c["id"] for c in listed["items"]] == [kept]
    everything = (
        await api.client.get("/v1/chats", params={"archived": "true"}, headers=bearer(key))
    ).json()
    assert {c["id"] for c in everything["items"]} == {kept, archived}

    r = await api.client.post(
        f"/v1/chats/{archived}/messages", json={"content": "after"}, headers=bearer(key)
    )
    assert_error(r, 409, "conflict")
    assert [m["content"] for m in (await _messages(api, key, archived))["items"]] == ["before"]

    # Still readable, and archiving twice keeps the first time.
    assert (await api.client.get(f"/v1/chats/{archived}", headers=bearer(key))).status_code == 200
    again = await api.client.post(f"/v1/chats/{archived}/archive", headers=bearer(key))
    assert again.json()["archived_at"] == archived_at


# --- messages -------------------------------------------------------------------------------


async def test_posted_messages_are_listed_in_order_with_cursor(api: Api) -> None:
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)

    posted = [await _post(api, key, chat_id, f"m{i}") for i in range(5)]
    assert [p["message"]["seq"] for p in posted] == [1, 2, 3, 4, 5]
    for p in posted:
        assert p["duplicate"] is False
        assert p["message"]["role"] == "user" and p["message"]["chat_id"] == chat_id
        assert p["turn_id"] and p["message"]["turn_id"] == p["turn_id"]

    pages: list[list[str]] = []
    after = 0
    while True:
        page = await _messages(api, key, chat_id, after=after, limit=2)
        pages.append([m["content"] for m in page["items"]])
        if page["next_after"] is None:
            break
        assert page["next_after"] == page["items"][-1]["seq"]
        after = page["next_after"]
    assert pages == [["m0", "m1"], ["m2", "m3"], ["m4"]]

    chat = (await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(key))).json()
    assert chat["last_seq"] == 5


async def test_repeated_client_msg_id_returns_the_original(api: Api) -> None:
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)

    first = await _post(api, key, chat_id, "hello", client_msg_id="client-1")
    again = await _post(api, key, chat_id, "hello again", client_msg_id="client-1")
    other = await _post(api, key, chat_id, "next", client_msg_id="client-2")

    assert first["duplicate"] is False and again["duplicate"] is True
    assert again["message"] == first["message"]
    assert again["turn_id"] == first["turn_id"]
    assert other["duplicate"] is False and other["message"]["seq"] == 2
    contents = [m["content"] for m in (await _messages(api, key, chat_id))["items"]]
    assert contents == ["hello", "next"]


async def test_idempotency_key_header_dedupes_like_client_msg_id(api: Api) -> None:
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)
    header = {"Idempotency-Key": "retry-7f3a"}

    first = await _post(api, key, chat_id, "hello", headers=header)
    again = await _post(api, key, chat_id, "hello", headers=header)

    assert first["message"]["client_msg_id"] == "retry-7f3a"
    assert again["duplicate"] is True and again["message"]["id"] == first["message"]["id"]
    assert len((await _messages(api, key, chat_id))["items"]) == 1


async def test_client_msg_id_is_per_chat(api: Api) -> None:
    _, key = await api.tenant_with_key()
    a, b = await api.chat(key), await api.chat(key)

    in_a = await _post(api, key, a, "x", client_msg_id="same")
    in_b = await _post(api, key, b, "x", client_msg_id="same")

    assert in_b["duplicate"] is False and in_b["message"]["id"] != in_a["message"]["id"]


async def test_concurrent_posts_with_one_client_msg_id_store_one_message(api: Api) -> None:
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)

    results = await asyncio.gather(
        *(_post(api, key, chat_id, f"attempt {i}", client_msg_id="once") for i in range(20))
    )

    assert len({r["message"]["id"] for r in results}) == 1
    assert len({r["turn_id"] for r in results}) == 1
    assert sorted(r["duplicate"] for r in results) == [False] + [True] * 19
    listed = (await _messages(api, key, chat_id))["items"]
    assert len(listed) == 1 and listed[0]["seq"] == 1
    chat = (await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(key))).json()
    assert chat["last_seq"] == 1  # the losers' numbers were rolled back


async def test_concurrent_posts_get_gapless_distinct_seqs(api: Api) -> None:
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)

    results = await asyncio.gather(*(_post(api, key, chat_id, f"m{i}") for i in range(20)))

    assert sorted(r["message"]["seq"] for r in results) == list(range(1, 21))
    listed = (await _messages(api, key, chat_id, limit=50))["items"]
    assert [m["seq"] for m in listed] == list(range(1, 21))
    assert len({m["id"] for m in listed}) == 20


async def test_snapshot_shows_the_queued_turn_and_cancel_stops_it(api: Api) -> None:
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)
    first = await _post(api, key, chat_id, "one")
    second = await _post(api, key, chat_id, "two")

    snapshot = (await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(key))).json()
    assert snapshot["turn"]["id"] == first["turn_id"]
    assert snapshot["turn"]["state"] == "queued"
    assert snapshot["last_seq"] == 2

    r = await api.client.post(f"/v1/chats/{chat_id}/cancel", headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json() == {"cancelled": True, "turn_id": first["turn_id"]}

    # The later message is now the one in progress.
    snapshot = (await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(key))).json()
    assert snapshot["turn"]["id"] == second["turn_id"]

    r = await api.client.post(f"/v1/chats/{chat_id}/cancel", headers=bearer(key))
    assert r.json() == {"cancelled": True, "turn_id": second["turn_id"]}
    r = await api.client.post(f"/v1/chats/{chat_id}/cancel", headers=bearer(key))
    assert r.json() == {"cancelled": False, "turn_id": None}
    snapshot = (await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(key))).json()
    assert snapshot["turn"] is None


@pytest.mark.parametrize(
    ("request_args", "field"),
    [
        (("POST", "/v1/chats/{chat}/messages", {"content": "a\x00b"}), "content"),
        (("POST", "/v1/chats", {"title": "a\x00b"}), "title"),
        (("GET", "/v1/chats/{chat}/messages?after=" + "9" * 30, None), "after"),
        (("GET", "/v1/chats/{chat}/messages?after=4294967296", None), "after"),
        (("GET", "/v1/chats?after=a%00b", None), "after"),
        (("GET", "/v1/chats/a%00b", None), "chat_id"),
        (("GET", "/v1/chats/" + "x" * 65, None), "chat_id"),
    ],
    ids=[
        "nul-content",
        "nul-title",
        "huge-after",
        "after-over-int32",
        "nul-cursor",
        "nul-id",
        "long-id",
    ],
)
async def test_input_the_database_cannot_hold_is_422(
    api: Api, request_args: tuple[str, str, dict[str, str] | None], field: str
) -> None:
    # PostgreSQL refuses NUL in text and integers past its column type; either would be a 500.
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)
    method, path, body = request_args

    r = await api.client.request(method, path.format(chat=chat_id), json=body, headers=bearer(key))

    error = assert_error(r, 422, "validation_error")
    assert field in error["detail"]
    assert (await _messages(api, key, chat_id))["items"] == []


# --- sessions -------------------------------------------------------------------------------


async def test_session_token_works_on_its_chats_only(api: Api) -> None:
    _, key = await api.tenant_with_key()
    mine, also_mine, other = [await api.chat(key, title) for title in ("a", "b", "c")]
    before = int(time.time())
    session = await _session(api, key, [mine, also_mine], ttl_s=120)
    after = int(time.time())
    assert before + 120 <= session["expires_at"] <= after + 120
    token = session["token"]

    assert (await api.client.get(f"/v1/chats/{mine}", headers=bearer(token))).status_code == 200
    posted = await _post(api, token, mine, "from the browser")
    assert posted["message"]["content"] == "from the browser"
    assert [m["content"] for m in (await _messages(api, token, mine))["items"]] == [
        "from the browser"
    ]
    r = await api.client.post(f"/v1/chats/{mine}/cancel", headers=bearer(token))
    assert r.json() == {"cancelled": True, "turn_id": posted["turn_id"]}
    listed = (await api.client.get("/v1/chats", headers=bearer(token))).json()
    assert {c["id"] for c in listed["items"]} == {mine, also_mine}

    for method, path in [
        ("GET", f"/v1/chats/{other}"),
        ("GET", f"/v1/chats/{other}/messages"),
        ("POST", f"/v1/chats/{other}/cancel"),
    ]:
        assert_error(
            await api.client.request(method, path, headers=bearer(token)), 404, "not_found"
        )
    r = await api.client.post(
        f"/v1/chats/{other}/messages", json={"content": "sneaky"}, headers=bearer(token)
    )
    assert_error(r, 404, "not_found")
    assert (await _messages(api, key, other))["items"] == []


async def test_session_for_another_tenants_chat_is_not_minted(api: Api) -> None:
    _, key_a = await api.tenant_with_key("a")
    _, key_b = await api.tenant_with_key("b")
    chat_a = await api.chat(key_a)
    chat_b = await api.chat(key_b)

    r = await api.client.post(
        "/v1/sessions", json={"chat_ids": [chat_b, chat_a]}, headers=bearer(key_b)
    )
    assert_error(r, 404, "not_found")
    r = await api.client.post(
        "/v1/sessions", json={"chat_ids": ["01ARZ3NDEKTSV4RRFFQ69G5FAV"]}, headers=bearer(key_b)
    )
    assert_error(r, 404, "not_found")


async def test_session_token_cannot_act_as_the_tenant(api: Api) -> None:
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)
    token = (await _session(api, key, [chat_id]))["token"]

    r = await api.client.post("/v1/chats", json={"title": "x"}, headers=bearer(token))
    assert_error(r, 403, "forbidden")
    r = await api.client.post("/v1/sessions", json={"chat_ids": [chat_id]}, headers=bearer(token))
    assert_error(r, 403, "forbidden")
    r = await api.client.post(f"/v1/chats/{chat_id}/archive", headers=bearer(token))
    assert_error(r, 403, "forbidden")
    assert len((await api.client.get("/v1/chats", headers=bearer(key))).json()["items"]) == 1


async def test_expired_session_token_is_401(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    chat_id = await api.chat(key)
    now = int(time.time())
    expired, _ = session_tokens.mint(SECRET, tenant_id, [chat_id], 60, now - 3600)
    fresh, _ = session_tokens.mint(SECRET, tenant_id, [chat_id], 60, now)

    error = assert_error(
        await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(expired)), 401, "unauthorized"
    )
    assert "expired" in error["detail"]
    assert (await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(fresh))).status_code == 200


async def test_session_token_signed_with_another_secret_is_401(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    chat_id = await api.chat(key)
    forged, _ = session_tokens.mint("z" * 48, tenant_id, [chat_id], 600, int(time.time()))

    r = await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(forged))
    assert_error(r, 401, "unauthorized")


async def test_disabled_tenant_session_token_is_401(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    chat_id = await api.chat(key)
    token = (await _session(api, key, [chat_id]))["token"]
    assert (await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(token))).status_code == 200

    r = await api.client.post(f"/v1/admin/tenants/{tenant_id}/disable", headers=admin_headers())
    assert r.status_code == 200, r.text

    r = await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(token))
    assert_error(r, 401, "unauthorized")
    await api.client.post(f"/v1/admin/tenants/{tenant_id}/enable", headers=admin_headers())
    assert (await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(token))).status_code == 200


async def test_key_scopes_are_enforced(api: Api) -> None:
    tenant_id, full_key = await api.tenant_with_key()
    chat_id = await api.chat(full_key)

    async def key_with(scopes: list[str]) -> str:
        r = await api.client.post(
            f"/v1/admin/tenants/{tenant_id}/keys", json={"scopes": scopes}, headers=admin_headers()
        )
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    sessions_only = await key_with(["sessions"])
    chats_only = await key_with(["chats"])

    for method, path, body in [
        ("GET", "/v1/chats", None),
        ("POST", "/v1/chats", {"title": "x"}),
        ("GET", f"/v1/chats/{chat_id}", None),
        ("POST", f"/v1/chats/{chat_id}/messages", {"content": "x"}),
    ]:
        r = await api.client.request(method, path, json=body, headers=bearer(sessions_only))
        error = assert_error(r, 403, "forbidden")
        assert "chats" in error["detail"]
    # ... but it can mint a session for the browser, which then reads the chat.
    token = (await _session(api, sessions_only, [chat_id]))["token"]
    assert (await api.client.get(f"/v1/chats/{chat_id}", headers=bearer(token))).status_code == 200

    r = await api.client.post(
        "/v1/sessions", json={"chat_ids": [chat_id]}, headers=bearer(chats_only)
    )
    assert_error(r, 403, "forbidden")
    assert (await api.client.get("/v1/chats", headers=bearer(chats_only))).status_code == 200
