"""The SQLite driver: a statement is one call on aiosqlite's thread, and the cursor answers
(rows, description, rowcount, lastrowid, errors) as the DBAPI cursor did."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from relayline.config import Settings
from relayline.store import sqlite_driver
from relayline.store.database import Database
from relayline.store.engine import create_engine

_TABLE = text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=f"sqlite:///{tmp_path}/driver.db"))
    async with engine.begin() as conn:
        await conn.execute(_TABLE)
    yield engine
    await engine.dispose()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str]]:
    """The statements run on aiosqlite's thread through the driver, in order, each with the
    ``BEGIN`` sent in the same call (None: none)."""
    seen: list[tuple[str | None, str]] = []
    real = sqlite_driver._run

    @functools.wraps(real)
    def recording(*args: Any) -> Any:
        seen.append((args[5], str(args[1])))
        return real(*args)

    monkeypatch.setattr(sqlite_driver, "_run", recording)
    return seen


def test_the_engine_uses_the_driver(engine: AsyncEngine) -> None:
    assert isinstance(engine.sync_engine.dialect.dbapi, sqlite_driver.LeanDbapi)


async def test_each_statement_is_one_call(
    engine: AsyncEngine, calls: list[tuple[str | None, str]]
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
        await conn.execute(text("SELECT v FROM t"))
    # BEGIN (issued as a statement by the store's transaction handling) or not, each
    # statement went through the driver once.
    assert [statement for _, statement in calls if not statement.startswith("BEGIN")] == [
        "INSERT INTO t (v) VALUES ('a')",
        "SELECT v FROM t",
    ]


async def test_rows_columns_and_counts(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(text("INSERT INTO t (v) VALUES ('a'), ('b'), ('c')"))
        assert inserted.rowcount == 3
        one = await conn.execute(text("INSERT INTO t (v) VALUES ('d')"))
        assert one.lastrowid == 4
        rows = await conn.execute(text("SELECT id, v FROM t WHERE id <= 2 ORDER BY id"))
        assert list(rows.keys()) == ["id", "v"]
        assert rows.fetchall() == [(1, "a"), (2, "b")]
        changed = await conn.execute(text("UPDATE t SET v = v || '!' WHERE id > 2"))
        assert changed.rowcount == 2
        none = await conn.execute(text("UPDATE t SET v = 'x' WHERE id = 99"))
        assert none.rowcount == 0  # what a fenced update's caller checks
        returned = await conn.execute(text("UPDATE t SET v = 'y' WHERE id = 1 RETURNING id, v"))
        assert returned.fetchall() == [(1, "y")]
        assert returned.rowcount == 1
        many = await conn.execute(
            text("INSERT INTO t (v) VALUES (:v)"), [{"v": "m1"}, {"v": "m2"}, {"v": "m3"}]
        )
        assert many.rowcount == 3
        first = await conn.execute(text("SELECT v FROM t ORDER BY id"))
        assert first.fetchone() == ("y",)
        assert first.fetchmany(2) == [("b",), ("c!",)]
        assert len(first.fetchall()) == 4


async def test_errors_are_the_drivers_and_the_connection_goes_on(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES ('dup')"))
    async with engine.connect() as conn:
        with pytest.raises(exc.IntegrityError) as caught:
            await conn.execute(text("INSERT INTO t (v) VALUES ('dup')"))
        assert "UNIQUE" in str(caught.value.orig)
        await conn.rollback()
        with pytest.raises(exc.OperationalError):
            await conn.execute(text("SELECT nope FROM t"))
        await conn.rollback()
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 1


async def test_a_rolled_back_transaction_leaves_nothing(engine: AsyncEngine) -> None:
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (v) VALUES ('gone')"))
            raise RuntimeError("abort")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0


async def _adapted(path: Path) -> sqlite_driver.LeanConnection:
    dbapi = sqlite_driver.lean_dbapi()
    connection: sqlite_driver.LeanConnection = await greenlet_spawn(dbapi.connect, str(path))
    return connection


async def _thread_gone(connection: sqlite_driver.LeanConnection) -> None:
    """aiosqlite's thread has handled the stop and exited (while this test's event loop, which
    its last answer goes to, still runs)."""
    thread = connection._connection._thread
    await asyncio.to_thread(thread.join, 5)
    assert not thread.is_alive()


async def test_an_invalidated_connection_stopped_first_closes_at_once(tmp_path: Path) -> None:
    """SQLAlchemy stops a connection whose graceful close was interrupted (a second cancel);
    the graceful close that runs after that must not wait for the thread that is gone (a
    relay's shutdown and a test's event loop hung on it)."""
    connection = await _adapted(tmp_path / "stopped.db")
    connection._terminate_force_close()
    async with asyncio.timeout(5):
        await connection._terminate_graceful_close()
    await _thread_gone(connection)


async def test_an_invalidated_connection_stopped_meanwhile_closes_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_driver, "GRACEFUL_CLOSE_S", 0.5)
    connection = await _adapted(tmp_path / "racing.db")
    closing = asyncio.get_running_loop().create_task(connection._terminate_graceful_close())
    await asyncio.sleep(0)  # the close is queued for the thread
    connection._terminate_force_close()  # and the stop right behind it
    async with asyncio.timeout(5):
        await closing
    await _thread_gone(connection)


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(Settings(database_url=f"sqlite:///{tmp_path}/tx.db", sqlite_busy_timeout_ms=200))
    async with db.engine.begin() as conn:
        await conn.execute(_TABLE)
    yield db
    await db.dispose()


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call handed to aiosqlite's thread, by the function's name."""
    seen: list[str] = []
    real = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return seen


async def test_a_write_transaction_is_its_statements_and_a_commit(
    database: Database, calls: list[tuple[str | None, str]], thread_calls: list[str]
) -> None:
    """BEGIN IMMEDIATE travels with the first statement; the pool's rollback of the returned
    connection is not sent, there being nothing to roll back."""
    calls.clear()
    thread_calls.clear()
    async with database.write() as session:
        await session.execute(text("INSERT INTO t (v) VALUES ('a')"))
        await session.execute(text("INSERT INTO t (v) VALUES ('b')"))
    assert calls == [
        ("BEGIN IMMEDIATE", "INSERT INTO t (v) VALUES ('a')"),
        (None, "INSERT INTO t (v) VALUES ('b')"),
    ]
    assert thread_calls == ["_run", "_run", "commit"]
    async with database.read() as session:
        assert (await session.execute(text("SELECT count(*) FROM t"))).scalar() == 2


async def test_a_core_write_transaction_commits_at_exit(
    database: Database, calls: list[tuple[str | None, str]], thread_calls: list[str]
) -> None:
    thread_calls.clear()
    async with database.write_core() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
    assert thread_calls == ["_run", "commit"]
    with pytest.raises(exc.IntegrityError):
        async with database.write_core() as conn:
            await conn.execute(text("INSERT INTO t (v) VALUES ('b')"))
            await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))  # a duplicate
    async with database.read() as session:
        rows = await session.execute(text("SELECT v FROM t"))
        assert rows.scalars().all() == ["a"]  # 'b' went with the failed transaction


async def test_a_transaction_without_statements_costs_no_call(
    database: Database, thread_calls: list[str]
) -> None:
    thread_calls.clear()
    async with database.write():
        pass
    async with database.read():
        pass
    assert thread_calls == []


@pytest.mark.parametrize("kind", ["session", "connection"])
async def test_the_write_lock_is_held_from_the_first_statement(
    database: Database, tmp_path: Path, kind: str
) -> None:
    """The deferred BEGIN is still IMMEDIATE, in a session (``write``) and on a bare
    connection (``write_core``): once the first statement ran, another connection cannot
    start writing until the commit; a rollback leaves nothing."""
    other = sqlite3.connect(tmp_path / "tx.db", timeout=0.05, isolation_level=None)
    transaction = database.write if kind == "session" else database.write_core
    try:
        with pytest.raises(RuntimeError):
            async with transaction() as session:
                await session.execute(text("SELECT count(*) FROM t"))  # reads only, yet locks
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
                await session.execute(text("INSERT INTO t (v) VALUES ('gone')"))
                raise RuntimeError("abort")
        other.execute("BEGIN IMMEDIATE")  # free again
        other.execute("ROLLBACK")
        assert other.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        other.close()


async def test_a_busy_lock_fails_the_first_statement_and_the_connection_goes_on(
    database: Database, tmp_path: Path
) -> None:
    """Another process holds the write lock past the busy timeout: the transaction's first
    statement raises the driver's 'locked' error (as its BEGIN did), nothing is left open."""
    other = sqlite3.connect(tmp_path / "tx.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(exc.OperationalError, match="locked"):
            async with database.write() as session:
                await session.execute(text("INSERT INTO t (v) VALUES ('refused')"))
        other.execute("ROLLBACK")
        async with database.write() as session:
            await session.execute(text("INSERT INTO t (v) VALUES ('later')"))
        async with database.read() as session:
            rows = await session.execute(text("SELECT v FROM t"))
            assert rows.scalars().all() == ["later"]
    finally:
        other.close()


async def test_a_server_side_cursor_begins_first(database: Database) -> None:
    async with database.write() as session:
        await session.execute(text("INSERT INTO t (v) VALUES ('a'), ('b'), ('c')"))
    async with database.read() as session:
        streamed = await session.stream(text("SELECT v FROM t ORDER BY id"))
        assert [row[0] async for row in streamed] == ["a", "b", "c"]
        raw = await session.connection()
        dbapi = (await raw.get_raw_connection()).driver_connection
        assert dbapi is not None and dbapi._conn.in_transaction  # the read's BEGIN ran
