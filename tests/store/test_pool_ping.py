"""Pooled PostgreSQL connections are tested before use only after sitting idle
(relayline.store.engine.ping_idle_connections): a connection whose server side died while it
sat in the pool is replaced without the caller seeing it, and one in steady use costs no ping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.exc import DBAPIError

from relayline.store import engine as store_engine
from relayline.store.database import Database
from tests.conftest import SettingsFactory

IDLE_S = 0.2


@pytest.fixture
async def db(
    make_settings: SettingsFactory, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Database]:
    monkeypatch.setattr(store_engine, "PING_IDLE_S", IDLE_S)
    # One pooled connection, so the one that was used is the one handed out next.
    database = Database(make_settings(database_url=pg_url, db_pool_size=1, db_max_overflow=0))
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    ping = AsyncAdapt_asyncpg_connection.ping

    def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        sent.append(1)
        ping(self)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)
    return sent


async def backend_pid(db: Database) -> int:
    async with db.read_core() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(pg_url: str, pid: int) -> None:
    admin = await asyncpg.connect(pg_url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_a_connection_that_died_while_idle_is_replaced_unseen(
    db: Database, pg_url: str, pings: list[int]
) -> None:
    first = await backend_pid(db)
    await terminate(pg_url, first)
    await asyncio.sleep(IDLE_S * 2)
    # The pooled connection fails its ping; the pool hands out a new one.
    second = await backend_pid(db)
    assert second != first
    assert pings == [1]


async def test_a_connection_in_steady_use_is_not_pinged(
    db: Database, pg_url: str, pings: list[int]
) -> None:
    first = await backend_pid(db)
    for _ in range(20):
        assert await backend_pid(db) == first
    assert pings == []
    # Killed between two uses a moment apart: that one statement fails with a disconnect
    # error (the route answers 503), and the next gets a new connection.
    await terminate(pg_url, first)
    with pytest.raises(DBAPIError) as failed:
        await backend_pid(db)
    assert failed.value.connection_invalidated
    assert await backend_pid(db) != first
