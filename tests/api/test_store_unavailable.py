"""A store that is locked or unreachable answers 503 with Retry-After, not 500."""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from structlog.testing import capture_logs

from relayline.api.app import create_app
from tests.conftest import SettingsFactory, admin_headers, assert_error


async def test_store_busy_is_503_with_retry_after(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())

    @app.http.get("/test-locked")
    async def locked() -> None:
        raise OperationalError("INSERT …", {}, Exception("database is locked"))

    transport = httpx.ASGITransport(app=app)
    async with (
        app.http.router.lifespan_context(app.http),
        httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client,
    ):
        r = await client.get("/test-locked", headers=admin_headers())
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    body = r.json()
    assert body["error"]["code"] == "unavailable"
    assert "locked" not in body["error"]["detail"]
    assert body["error"]["request_id"] == r.headers["X-Request-ID"]


async def _get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.http.router.lifespan_context(app.http),
        httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client,
    ):
        return await client.get(path, headers=admin_headers())


async def test_permanent_store_fault_is_a_bare_500_with_the_cause_logged(
    make_settings: SettingsFactory,
) -> None:
    # A skipped migration is not cured by retrying: no 503, no Retry-After, nothing leaked.
    app = create_app(make_settings())
    cause = "no such table: chats_v2 (password=hunter2-secret)"

    @app.http.get("/test-missing-table")
    async def missing() -> None:
        raise OperationalError("SELECT …", {}, sqlite3.OperationalError(cause))

    with capture_logs() as logs:
        r = await _get(app, "/test-missing-table")

    error = assert_error(r, 500, "internal")
    assert error["detail"] == "internal error"
    assert "Retry-After" not in r.headers
    assert "no such table" not in r.text and "chats_v2" not in r.text
    (logged,) = [e for e in logs if e["event"] == "unhandled_error"]
    assert "no such table: chats_v2" in logged["cause"]
    assert "hunter2-secret" not in logged["cause"]
    assert not [e for e in logs if e["event"] == "store_unavailable"]


async def test_locked_store_logs_its_cause(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())

    @app.http.get("/test-locked")
    async def locked() -> None:
        raise OperationalError("UPDATE …", {}, sqlite3.OperationalError("database is locked"))

    with capture_logs() as logs:
        r = await _get(app, "/test-locked")

    assert_error(r, 503, "unavailable")
    assert r.headers["Retry-After"] == "1"
    (logged,) = [e for e in logs if e["event"] == "store_unavailable"]
    assert "database is locked" in logged["cause"]


async def test_invalidated_connection_is_503(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())

    @app.http.get("/test-dropped")
    async def dropped() -> None:
        raise InterfaceError(
            "SELECT …", {}, Exception("connection was closed"), connection_invalidated=True
        )

    assert_error(await _get(app, "/test-dropped"), 503, "unavailable")


async def test_unreachable_postgres_is_503(make_settings: SettingsFactory) -> None:
    # asyncpg raises a refused connect as a bare ConnectionRefusedError (SQLAlchemy does not
    # wrap it); one raised outside the database stack stays a plain 500.
    app = create_app(make_settings())

    @app.http.get("/test-unreachable")
    async def unreachable() -> None:
        engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/x")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    @app.http.get("/test-other-oserror")
    async def other() -> None:
        raise ConnectionRefusedError("not the database")

    r = await _get(app, "/test-unreachable")
    assert_error(r, 503, "unavailable")
    assert r.headers["Retry-After"] == "1"
    assert_error(await _get(app, "/test-other-oserror"), 500, "internal")
