"""Shared fixtures: settings per backend, a throw-away PostgreSQL database, an app client."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from relayline.api.app import create_app
from relayline.config import Settings
from relayline.store import migrate
from relayline.store.database import Database

# The relay, worker and client helpers every test directory shares.
pytest_plugins = ["tests.fixtures"]

PG_SERVER = os.environ.get("RELAYLINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "test-admin-key-" + "x" * 32


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_SERVER, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_reachable() -> bool:
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database created for this test run and dropped after it."""
    if not _pg_reachable():
        pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}")
    name = f"relayline_test_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    base = PG_SERVER.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def own_pg_url() -> AsyncIterator[str]:
    """A PostgreSQL database of this test's own: for tests whose relays share a turn queue,
    which would otherwise claim turns other tests left queued in the run's database."""
    try:
        await _pg_admin("SELECT 1")
    except Exception:
        pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}")
    name = f"relayline_test_{os.getpid()}_{secrets.token_hex(6)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER.rsplit('/', 1)[0]}/{name}"
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relayline.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def own_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of this test's own on each store: for tests that count what the store holds
    or claim from its queue, which other tests' turns in the run's database would disturb."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relayline.db'}"
    url: str = request.getfixturevalue("own_pg_url")
    return url


@asynccontextmanager
async def migrated(settings: Settings) -> AsyncIterator[Database]:
    """A ``Database`` for ``settings``, migrated to head, disposed at exit."""
    database = Database(settings)
    try:
        await migrate.upgrade(database.engine)
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'relayline.db'}"


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(sqlite_url: str) -> SettingsFactory:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "env": "test",
            "database_url": sqlite_url,
            "admin_key": ADMIN_KEY,
            "secret_key": "test-secret-key-" + "y" * 32,
            "rate_limit_ip": "100000/minute",
            "rate_limit_identity": "100000/minute",
            "rate_limit_chat": "100000/minute",
            "rate_limit_health": "100000/minute",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


class Api:
    """An httpx client bound to the app, with helpers for the usual set-up steps."""

    def __init__(self, client: httpx.AsyncClient, app: Any = None) -> None:
        self.client = client
        self.app = app

    @asynccontextmanager
    async def peer(self, client_ip: str, port: int = 40000) -> AsyncIterator[httpx.AsyncClient]:
        """Another client of the same running app, connecting from ``client_ip``."""
        transport = httpx.ASGITransport(app=self.app, client=(client_ip, port))
        async with httpx.AsyncClient(transport=transport, base_url=self.client.base_url) as client:
            yield client

    async def tenant_with_key(
        self, name: str = "acme", scopes: list[str] | None = None
    ) -> tuple[str, str]:
        r = await self.client.post(
            "/v1/admin/tenants", json={"name": name}, headers=admin_headers()
        )
        assert r.status_code == 201, r.text
        tenant_id = r.json()["id"]
        body: dict[str, Any] = {} if scopes is None else {"scopes": scopes}
        r = await self.client.post(
            f"/v1/admin/tenants/{tenant_id}/keys", json=body, headers=admin_headers()
        )
        assert r.status_code == 201, r.text
        return tenant_id, r.json()["key"]

    async def chat(self, key: str, title: str | None = "hello") -> str:
        r = await self.client.post("/v1/chats", json={"title": title}, headers=bearer(key))
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The response is the API's error shape, with ``X-Request-ID`` matching the body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, str] = body["error"]
    assert set(error) == {"code", "detail", "request_id"}, body
    assert error["code"] == code, body
    assert isinstance(error["detail"], str) and error["detail"]
    assert error["request_id"] and response.headers["X-Request-ID"] == error["request_id"]
    return error


def admin_headers() -> dict[str, str]:
    return bearer(ADMIN_KEY)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def open_client(settings: Settings, client_ip: str = "127.0.0.1") -> AsyncIterator[Api]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
    async with (
        app.http.router.lifespan_context(app.http),
        httpx.AsyncClient(transport=transport, base_url="http://relay.test") as client,
    ):
        yield Api(client, app)


@pytest.fixture
async def api(make_settings: SettingsFactory) -> AsyncIterator[Api]:
    async for client in open_client(make_settings()):
        yield client


@pytest.fixture
def restored_gc() -> Iterator[tuple[int, int, int]]:
    """The collector's thresholds before the test (a started relay or worker settles the heap of
    its process: ``gc.freeze``, rarer full collections); the test process gets them back, and
    nothing frozen, after it."""
    before = gc.get_threshold()
    try:
        yield before
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
