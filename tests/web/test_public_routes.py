"""The public widget's API: access codes, proof-of-work challenges, visitor sessions."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator

import pytest

from relayline.api.routes.public import leading_zero_bits, solves
from relayline.observability.metrics import RATE_LIMITED
from tests.conftest import Api, SettingsFactory, admin_headers, assert_error, bearer, open_client

BITS = 8


@pytest.fixture
async def challenged(make_settings: SettingsFactory) -> AsyncIterator[Api]:
    settings = make_settings(public_challenge="on", public_challenge_bits=BITS)
    async for client in open_client(settings):
        yield client


def solve(challenge: str, bits: int = BITS) -> str:
    for n in itertools.count():
        if solves(challenge, str(n), bits):
            return str(n)
    raise AssertionError("unreachable")


async def code_for(api: Api) -> tuple[str, str]:
    tenant_id, key = await api.tenant_with_key()
    r = await api.client.post("/v1/public/codes", json={}, headers=bearer(key))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["widget_path"] == f"/widget#code={body['code']}"
    return tenant_id, body["code"]


def test_leading_zero_bits() -> None:
    assert leading_zero_bits(b"\x00\x00\x80") == 16
    assert leading_zero_bits(b"\x0f") == 4
    assert leading_zero_bits(b"\x00" * 32) == 256
    digest = hashlib.sha256(b"x").digest()
    assert leading_zero_bits(digest) == 8 - digest[0].bit_length()


async def test_without_challenge_a_code_gives_one_chat_of_ones_own(api: Api) -> None:
    _, code = await code_for(api)
    assert (await api.client.get("/v1/public/challenge")).json() == {
        "required": False,
        "challenge": None,
        "bits": None,
        "expires_at": None,
    }
    first = (await api.client.post("/v1/public/sessions", json={"code": code})).json()
    second = (await api.client.post("/v1/public/sessions", json={"code": code})).json()
    assert first["chat_id"] != second["chat_id"]
    mine = await api.client.get("/v1/chats", headers=bearer(first["token"]))
    assert [c["id"] for c in mine.json()["items"]] == [first["chat_id"]]
    theirs = await api.client.get(f"/v1/chats/{second['chat_id']}", headers=bearer(first["token"]))
    assert_error(theirs, 404, "not_found")
    create = await api.client.post("/v1/chats", json={}, headers=bearer(first["token"]))
    assert_error(create, 403, "forbidden")


async def test_codes_are_not_session_tokens_and_die_with_the_tenant(api: Api) -> None:
    tenant_id, code = await code_for(api)
    assert_error(await api.client.get("/v1/chats", headers=bearer(code)), 401, "unauthorized")
    bad = await api.client.post("/v1/public/sessions", json={"code": code[:-2] + "xx"})
    assert_error(bad, 401, "unauthorized")
    r = await api.client.post(f"/v1/admin/tenants/{tenant_id}/disable", headers=admin_headers())
    assert r.status_code == 200
    gone = await api.client.post("/v1/public/sessions", json={"code": code})
    assert_error(gone, 401, "unauthorized")


async def test_only_tenant_keys_with_the_sessions_scope_mint_codes(api: Api) -> None:
    _, key = await api.tenant_with_key(scopes=["chats"])
    r = await api.client.post("/v1/public/codes", json={}, headers=bearer(key))
    assert_error(r, 403, "forbidden")
    r = await api.client.post("/v1/public/codes", json={}, headers=admin_headers())
    assert_error(r, 403, "forbidden")


async def test_visitor_sessions_are_rate_limited_per_tenant(make_settings: SettingsFactory) -> None:
    async for api in open_client(make_settings(rate_limit_public_sessions="3/minute")):
        _, key = await api.tenant_with_key()
        codes = [
            (await api.client.post("/v1/public/codes", json={}, headers=bearer(key))).json()["code"]
            for _ in range(2)
        ]
        # Every code of the tenant draws on the same budget: minting a new one does not reset it.
        for code in (codes[0], codes[0], codes[1]):
            r = await api.client.post("/v1/public/sessions", json={"code": code})
            assert r.status_code == 201, r.text
        counted = RATE_LIMITED.labels("public")._value.get()
        refused = await api.client.post("/v1/public/sessions", json={"code": codes[1]})
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["Retry-After"]) >= 1
        assert RATE_LIMITED.labels("public")._value.get() == counted + 1
        _, other_code = await code_for(api)
        other = await api.client.post("/v1/public/sessions", json={"code": other_code})
        assert other.status_code == 201, other.text


async def test_challenge_is_required_signed_and_single_use(challenged: Api) -> None:
    api = challenged
    _, code = await code_for(api)
    missing = await api.client.post("/v1/public/sessions", json={"code": code})
    assert_error(missing, 422, "validation_error")
    issued = (await api.client.get("/v1/public/challenge")).json()
    assert issued["required"] is True and issued["bits"] == BITS
    challenge = issued["challenge"]
    wrong = next(str(n) for n in itertools.count() if not solves(challenge, str(n), BITS))
    r = await api.client.post(
        "/v1/public/sessions", json={"code": code, "challenge": challenge, "solution": wrong}
    )
    assert_error(r, 422, "validation_error")
    forged = challenge[:-2] + ("AA" if not challenge.endswith("AA") else "BB")
    r = await api.client.post(
        "/v1/public/sessions",
        json={"code": code, "challenge": forged, "solution": solve(forged)},
    )
    assert_error(r, 401, "unauthorized")
    solution = solve(challenge)
    body = {"code": code, "challenge": challenge, "solution": solution}
    ok = await api.client.post("/v1/public/sessions", json=body)
    assert ok.status_code == 201, ok.text
    again = await api.client.post("/v1/public/sessions", json=body)
    assert_error(again, 409, "conflict")


async def test_a_code_cannot_pass_as_a_challenge(challenged: Api) -> None:
    api = challenged
    _, code = await code_for(api)
    r = await api.client.post(
        "/v1/public/sessions", json={"code": code, "challenge": code, "solution": solve(code)}
    )
    assert_error(r, 401, "unauthorized")


async def test_widget_page_may_be_framed_by_allowed_origins_only(api: Api) -> None:
    r = await api.client.get("/widget")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors http://127.0.0.1:8080 http://localhost:8080" in csp
    assert "x-frame-options" not in r.headers
    assert (
        "frame-ancestors 'none'" in (await api.client.get("/")).headers["content-security-policy"]
    )
