"""What protects the relay from its clients: body caps, validation, rate limits, request ids,
and errors that never leak internals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from relayline.config import Settings
from tests.conftest import Api, SettingsFactory, admin_headers, assert_error, bearer, open_client

serve = asynccontextmanager(open_client)


def assert_rate_limited(response: httpx.Response) -> int:
    assert_error(response, 429, "rate_limited")
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    return int(retry_after)


async def _tenants(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.get("/v1/admin/tenants", headers={**admin_headers(), **headers})


# --- body size ------------------------------------------------------------------------------


@pytest.fixture
async def small_body_api(make_settings: SettingsFactory) -> AsyncIterator[Api]:
    async with serve(make_settings(max_body_bytes=2048, max_message_chars=100_000)) as api:
        yield api


async def _chunks(total: int, size: int = 512) -> AsyncIterator[bytes]:
    body = ('{"content": "' + "x" * (total - 15) + '"}').encode()
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_oversized_body_with_content_length_is_413(small_body_api: Api) -> None:
    api = small_body_api
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)

    r = await api.client.post(
        f"/v1/chats/{chat_id}/messages", json={"content": "x" * 3000}, headers=bearer(key)
    )

    assert_error(r, 413, "payload_too_large")
    r = await api.client.get(f"/v1/chats/{chat_id}/messages", headers=bearer(key))
    assert r.json()["items"] == []


async def test_oversized_chunked_body_is_413(small_body_api: Api) -> None:
    api = small_body_api
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)

    request = api.client.build_request(
        "POST",
        f"/v1/chats/{chat_id}/messages",
        content=_chunks(5000),
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    r = await api.client.send(request)

    assert_error(r, 413, "payload_too_large")
    r = await api.client.get(f"/v1/chats/{chat_id}/messages", headers=bearer(key))
    assert r.json()["items"] == []


async def test_chunked_body_under_the_cap_is_accepted(small_body_api: Api) -> None:
    api = small_body_api
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key)

    r = await api.client.post(
        f"/v1/chats/{chat_id}/messages",
        content=_chunks(1800, size=100),
        headers={**bearer(key), "Content-Type": "application/json"},
    )

    assert r.status_code == 202, r.text
    assert len(r.json()["message"]["content"]) == 1800 - 15


# --- validation -----------------------------------------------------------------------------


@pytest.fixture
async def strict_api(make_settings: SettingsFactory) -> AsyncIterator[Api]:
    settings = make_settings(
        max_message_chars=10, max_title_chars=5, max_page_size=5, max_session_chats=2
    )
    async with serve(settings) as api:
        yield api


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("content-too-long", "content"),
        ("title-too-long", "title"),
        ("limit-over-page-size", "limit"),
        ("too-many-chat-ids", "chat_ids"),
        ("unknown-field", "colour"),
        ("idempotency-key-charset", "idempotency-key"),
        ("idempotency-key-length", "idempotency-key"),
        ("missing-content", "content"),
        ("ttl-too-long", "ttl_s"),
    ],
)
async def test_invalid_input_is_422_naming_the_field(
    strict_api: Api, case: str, field: str
) -> None:
    api = strict_api
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key, "ok")
    messages = f"/v1/chats/{chat_id}/messages"
    requests: dict[str, tuple[str, str, dict[str, Any] | None, dict[str, str]]] = {
        "content-too-long": ("POST", messages, {"content": "x" * 11}, {}),
        "title-too-long": ("POST", "/v1/chats", {"title": "x" * 6}, {}),
        "limit-over-page-size": ("GET", messages + "?limit=6", None, {}),
        "too-many-chat-ids": ("POST", "/v1/sessions", {"chat_ids": [chat_id, "b", "c"]}, {}),
        "unknown-field": ("POST", "/v1/chats", {"title": "x", "colour": "red"}, {}),
        "idempotency-key-charset": (
            "POST",
            messages,
            {"content": "x"},
            {"Idempotency-Key": "has spaces in it"},
        ),
        "idempotency-key-length": (
            "POST",
            messages,
            {"content": "x"},
            {"Idempotency-Key": "k" * 200},
        ),
        "missing-content": ("POST", messages, {}, {}),
        "ttl-too-long": ("POST", "/v1/sessions", {"chat_ids": [chat_id], "ttl_s": 10**7}, {}),
    }
    method, path, body, headers = requests[case]

    r = await api.client.request(method, path, json=body, headers={**bearer(key), **headers})

    error = assert_error(r, 422, "validation_error")
    assert field in error["detail"].lower()
    r = await api.client.get(messages, headers=bearer(key))
    assert r.json()["items"] == []
    r = await api.client.get("/v1/chats", headers=bearer(key))
    assert len(r.json()["items"]) == 1


async def test_limits_at_the_boundary_are_accepted(strict_api: Api) -> None:
    api = strict_api
    _, key = await api.tenant_with_key()
    chat_id = await api.chat(key, "x" * 5)

    r = await api.client.post(
        f"/v1/chats/{chat_id}/messages", json={"content": "x" * 10}, headers=bearer(key)
    )
    assert r.status_code == 202, r.text
    r = await api.client.get(f"/v1/chats/{chat_id}/messages?limit=5", headers=bearer(key))
    assert r.status_code == 200, r.text


async def test_default_page_size_follows_a_lowered_maximum(strict_api: Api) -> None:
    api = strict_api  # max_page_size=5, below the default page size
    _, key = await api.tenant_with_key()
    ids = [await api.chat(key, f"c{i}") for i in range(7)]
    for i in range(7):
        r = await api.client.post(
            f"/v1/chats/{ids[0]}/messages", json={"content": f"m{i}"}, headers=bearer(key)
        )
        assert r.status_code == 202, r.text

    chats = await api.client.get("/v1/chats", headers=bearer(key))
    assert chats.status_code == 200, chats.text
    assert len(chats.json()["items"]) == 5 and chats.json()["next_after"] == ids[2]
    messages = await api.client.get(f"/v1/chats/{ids[0]}/messages", headers=bearer(key))
    assert messages.status_code == 200, messages.text
    assert messages.json()["next_after"] == 5
    tenants = await api.client.get("/v1/admin/tenants", headers=admin_headers())
    assert tenants.status_code == 200, tenants.text


async def test_malformed_json_is_422(api: Api) -> None:
    _, key = await api.tenant_with_key()
    r = await api.client.post(
        "/v1/chats",
        content=b'{"title": ',
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert_error(r, 422, "validation_error")


# --- rate limits ----------------------------------------------------------------------------


def _limited(make_settings: SettingsFactory, **overrides: Any) -> Settings:
    return make_settings(**{"rate_limit_ip": "3/minute", **overrides})


async def test_ip_over_its_limit_gets_429_with_retry_after(make_settings: SettingsFactory) -> None:
    async with (
        serve(_limited(make_settings)) as api,
        api.peer("203.0.113.7") as client,
        api.peer("203.0.113.8") as neighbour,
    ):
        for _ in range(3):
            assert (await _tenants(client)).status_code == 200
        assert_rate_limited(await _tenants(client))
        # Refused requests are refused before authentication, so they cost nothing else.
        assert_rate_limited(await client.get("/v1/admin/tenants"))

        assert (await _tenants(neighbour)).status_code == 200


async def test_ipv6_addresses_in_one_slash64_share_a_budget(make_settings: SettingsFactory) -> None:
    async with (
        serve(_limited(make_settings)) as api,
        api.peer("2001:db8:1:2::1") as first,
        api.peer("2001:db8:1:2:aaaa:bbbb:cccc:dddd") as same_net,
        api.peer("2001:db8:1:3::1") as other_net,
    ):
        for client in (first, same_net, first):
            assert (await _tenants(client)).status_code == 200
        assert_rate_limited(await _tenants(same_net))
        assert_rate_limited(await _tenants(first))

        assert (await _tenants(other_net)).status_code == 200


async def test_ipv4_mapped_ipv6_shares_the_ipv4_budget(make_settings: SettingsFactory) -> None:
    async with (
        serve(_limited(make_settings)) as api,
        api.peer("::ffff:198.51.100.4") as mapped,
        api.peer("198.51.100.4") as plain,
    ):
        for client in (mapped, plain, mapped):
            assert (await _tenants(client)).status_code == 200
        assert_rate_limited(await _tenants(plain))
        assert_rate_limited(await _tenants(mapped))


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_settings: SettingsFactory,
) -> None:
    async with serve(_limited(make_settings)) as api, api.peer("203.0.113.9") as client:
        for i in range(3):
            r = await _tenants(client, **{"X-Forwarded-For": f"198.51.100.{i}"})
            assert r.status_code == 200
        assert_rate_limited(await _tenants(client, **{"X-Forwarded-For": "198.51.100.200"}))
        assert_rate_limited(await _tenants(client, **{"X-Forwarded-For": "10.0.0.1, 192.0.2.1"}))


async def test_forwarded_for_from_a_trusted_proxy_is_honoured(
    make_settings: SettingsFactory,
) -> None:
    settings = _limited(make_settings, trusted_proxies=["10.0.0.0/8"])
    async with serve(settings) as api, api.peer("10.1.2.3") as proxy:
        alice = {"X-Forwarded-For": "198.51.100.1"}
        bob = {"X-Forwarded-For": "198.51.100.2"}
        for _ in range(3):
            assert (await _tenants(proxy, **alice)).status_code == 200
        assert_rate_limited(await _tenants(proxy, **alice))
        # Another client behind the same proxy has its own budget ...
        assert (await _tenants(proxy, **bob)).status_code == 200
        # ... and a forged entry left of the real client does not buy a new one.
        assert_rate_limited(await _tenants(proxy, **{"X-Forwarded-For": "1.2.3.4, 198.51.100.1"}))


async def test_identity_over_its_limit_gets_429(make_settings: SettingsFactory) -> None:
    async with serve(make_settings(rate_limit_identity="5/minute")) as api:
        _, key = await api.tenant_with_key("a")  # two admin requests
        _, other_key = await api.tenant_with_key("b")  # two more
        for _ in range(5):
            assert (await api.client.get("/v1/chats", headers=bearer(key))).status_code == 200
        assert_rate_limited(await api.client.get("/v1/chats", headers=bearer(key)))

        # Same address, other identities: unaffected.
        assert (await api.client.get("/v1/chats", headers=bearer(other_key))).status_code == 200
        assert (await _tenants(api.client)).status_code == 200


async def test_chat_over_its_limit_gets_429(make_settings: SettingsFactory) -> None:
    async with serve(make_settings(rate_limit_chat="3/minute")) as api:
        _, key = await api.tenant_with_key()
        busy, quiet = await api.chat(key), await api.chat(key)
        for i in range(3):
            r = await api.client.post(
                f"/v1/chats/{busy}/messages", json={"content": f"m{i}"}, headers=bearer(key)
            )
            assert r.status_code == 202, r.text

        r = await api.client.post(
            f"/v1/chats/{busy}/messages", json={"content": "one too many"}, headers=bearer(key)
        )
        assert_rate_limited(r)
        listed = await api.client.get(f"/v1/chats/{busy}/messages", headers=bearer(key))
        assert [m["content"] for m in listed.json()["items"]] == ["m0", "m1", "m2"]

        r = await api.client.post(
            f"/v1/chats/{quiet}/messages", json={"content": "hello"}, headers=bearer(key)
        )
        assert r.status_code == 202, r.text


async def test_health_has_its_own_budget(make_settings: SettingsFactory) -> None:
    settings = make_settings(rate_limit_ip="2/minute", rate_limit_health="4/minute")
    async with serve(settings) as api, api.peer("203.0.113.50") as client:
        for _ in range(2):
            assert (await _tenants(client)).status_code == 200
        assert_rate_limited(await _tenants(client))

        # The probe keeps answering although the address has used up its API budget ...
        for _ in range(3):
            r = await client.get("/health")
            assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert (await client.get("/health/ready")).status_code == 200
        # ... and has a limit of its own.
        assert_rate_limited(await client.get("/health"))
        assert_rate_limited(await client.get("/health/ready"))


# --- request ids ----------------------------------------------------------------------------


async def test_well_formed_request_id_is_echoed(api: Api) -> None:
    supplied = "edge-7f3a9c2b:req.42"
    r = await api.client.get("/health", headers={"X-Request-ID": supplied})
    assert r.headers["X-Request-ID"] == supplied

    r = await api.client.get("/v1/admin/tenants", headers={"X-Request-ID": supplied})
    assert assert_error(r, 401, "unauthorized")["request_id"] == supplied


@pytest.mark.parametrize(
    "supplied",
    ["has spaces in it", "x" * 300, "short", "semi;colon-123", 'quote"d-12345'],
    ids=["spaces", "300-chars", "too-short", "semicolon", "quote"],
)
async def test_malformed_request_id_is_replaced(api: Api, supplied: str) -> None:
    r = await api.client.get("/v1/admin/tenants", headers={"X-Request-ID": supplied})

    error = assert_error(r, 401, "unauthorized")
    assert error["request_id"] != supplied
    assert 8 <= len(error["request_id"]) <= 128
    assert error["request_id"].isalnum()


async def test_request_ids_are_unique(api: Api) -> None:
    ids = {(await api.client.get("/health")).headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


# --- errors ---------------------------------------------------------------------------------


async def test_unhandled_error_is_a_bare_500(api: Api) -> None:
    async def boom() -> None:
        raise RuntimeError("boom-secret")

    api.app.http.add_api_route("/boom", boom)
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    with capture_logs() as logs:
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client:
            r = await client.get("/boom", headers={"X-Request-ID": "trace-500-abcdef"})

    error = assert_error(r, 500, "internal")
    assert error["detail"] == "internal error"
    assert error["request_id"] == "trace-500-abcdef"
    assert "boom" not in r.text
    assert "Traceback" not in r.text and "RuntimeError" not in r.text
    # The cause is for the operator's log, under the same request id.
    (logged,) = [entry for entry in logs if entry["event"] == "unhandled_error"]
    assert logged["request_id"] == "trace-500-abcdef"
    assert isinstance(logged["exc_info"], RuntimeError)


async def test_method_not_allowed_has_the_error_shape(api: Api) -> None:
    r = await api.client.get("/v1/chats/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel", headers=admin_headers())

    assert_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "POST"


async def test_unknown_path_has_the_error_shape(api: Api) -> None:
    assert_error(await api.client.get("/v1/nothing-here"), 404, "not_found")
