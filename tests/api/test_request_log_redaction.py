"""End to end: requests carrying every kind of credential leave none of them in the log file."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog
from fastapi import Request

from relayline import session_tokens
from relayline.observability.logging import configure_logging
from tests.conftest import ADMIN_KEY, SettingsFactory, bearer, open_client

SECRET_KEY = "test-secret-key-" + "y" * 32  # make_settings' secret key
QUERY_TOKEN = "qT0k3n-ZX81-secret-value"
QUERY_API_KEY = "apiK3y-PL90-secret-value"
WRONG_KEY = "wrong-admin-key-Hq7Vb2Lm9Xc4Zt1R"
TOUCHED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi", "uvicorn.access")
TOUCHED_LOGGERS += ("aiosqlite", "websockets", "httpcore", "hpack")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the process-wide logging state back: other tests share this interpreter."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
        for name in TOUCHED_LOGGERS
        for logger in [logging.getLogger(name)]
    }
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = saved_root[0]
    root.setLevel(saved_root[1])
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


async def careless_route(request: Request) -> dict[str, str]:
    """Logs what a hurried handler would: the full URL and every header."""
    structlog.get_logger("relayline.test").info(
        "handling", url=str(request.url), headers=dict(request.headers)
    )
    logging.getLogger("relayline.test.stdlib").warning(
        "GET %s with %s", request.url, request.headers.get("authorization")
    )
    return {"status": "ok"}


async def exploding_route(request: Request) -> None:
    raise RuntimeError(f"upstream refused {request.url} with {request.headers['authorization']}")


async def test_no_secret_reaches_the_log_file(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    log_file = tmp_path / "relay.log"
    settings = make_settings(log_file=log_file, log_format="json", log_level="DEBUG")
    runtime = configure_logging(settings)
    secrets: list[str] = [ADMIN_KEY, QUERY_TOKEN, QUERY_API_KEY, WRONG_KEY]
    request_ids: list[str] = []

    def seen(response: httpx.Response) -> httpx.Response:
        request_ids.append(response.headers["X-Request-ID"])
        return response

    try:
        async for api in open_client(settings):
            http = api.app.http
            http.add_api_route("/debug/echo", careless_route)
            http.add_api_route("/debug/explode", exploding_route)
            client = api.client

            tenant_id, key = await api.tenant_with_key()
            chat_id = await api.chat(key)
            r = seen(
                await client.post("/v1/sessions", json={"chat_ids": [chat_id]}, headers=bearer(key))
            )
            token = r.json()["token"]
            expired, _ = session_tokens.mint(
                SECRET_KEY, tenant_id, [chat_id], 60, int(time.time()) - 3600
            )
            revoked_id = (
                await client.post(
                    f"/v1/admin/tenants/{tenant_id}/keys", json={}, headers=bearer(ADMIN_KEY)
                )
            ).json()
            await client.delete(f"/v1/admin/keys/{revoked_id['id']}", headers=bearer(ADMIN_KEY))
            secrets += [key, token, expired, revoked_id["key"]]

            query = {"token": QUERY_TOKEN, "api_key": QUERY_API_KEY}
            assert seen(await client.get("/v1/admin/tenants", headers=bearer(ADMIN_KEY))).is_success
            assert seen(await client.get("/v1/chats", headers=bearer(key))).is_success
            assert seen(await client.get(f"/v1/chats/{chat_id}", headers=bearer(token))).is_success
            for credential in (key, token, ADMIN_KEY):
                r = seen(await client.get("/debug/echo", params=query, headers=bearer(credential)))
                assert r.status_code == 200
            r = seen(await client.get("/v1/chats", params=query, headers=bearer(token)))
            assert r.status_code == 200
            # Failures: each refused credential is a secret all the same.
            for credential in (WRONG_KEY, expired, revoked_id["key"]):
                r = seen(await client.get("/v1/chats", params=query, headers=bearer(credential)))
                assert r.status_code == 401
            r = seen(await client.get("/v1/admin/tenants", headers=bearer(key)))
            assert r.status_code == 403
            # A key in the URL is refused, and the URL that carried it is logged without it.
            for credential in (key, ADMIN_KEY):
                params = {"topics": f"chat:{chat_id}", "access_token": credential}
                r = seen(await client.get("/v1/events", params=params))
                assert r.status_code == 401
                r = seen(await client.get("/debug/echo", params=params, headers=bearer(token)))
                assert r.status_code == 200  # the careless route does not ask for a credential

            transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as raw:
                r = seen(await raw.get("/debug/explode", params=query, headers=bearer(key)))
                assert r.status_code == 500
    finally:
        runtime.close()

    text = log_file.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    events = {line["event"] for line in lines}
    assert {"handling", "http_request", "unhandled_error"} <= events
    assert any("GET http://relay.test/debug/echo" in line["event"] for line in lines)
    for secret in secrets:
        assert secret not in text, f"a secret reached the log: {secret[:12]}..."
        assert secret[-16:] not in text, f"part of a secret reached the log: {secret[:12]}..."
    for request_id in request_ids:
        assert request_id in text
    # The handler's own lines carry the request id too.
    handled = [line for line in lines if line["event"] == "handling"]
    assert len(handled) == 5 and all(line.get("request_id") in request_ids for line in handled)
