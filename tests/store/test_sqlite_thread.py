"""Whole transactions on the store's thread (``Database.run_write`` / ``run_read``): one
transaction per call, IMMEDIATE for a write, committed or rolled back as a whole, the write
lock held until the thread is done even when the caller stops waiting, statements timed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, exc, text

from relayline.config import Settings
from relayline.observability.store_metrics import STORE_STATEMENTS, instrument_engine
from relayline.store.database import Database

_TABLE = text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
_INSERT = text("INSERT INTO t (v) VALUES (:v)")
_COUNT = text("SELECT count(*) FROM t")


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(Settings(database_url=f"sqlite:///{tmp_path}/th.db", sqlite_busy_timeout_ms=200))
    async with db.engine.begin() as conn:
        await conn.execute(_TABLE)
    yield db
    await db.dispose()


def _values(conn: Connection) -> list[str]:
    return list(conn.execute(text("SELECT v FROM t ORDER BY id")).scalars())


def _store_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("relayline-store")]


async def test_a_write_runs_on_the_store_thread_and_commits(database: Database) -> None:
    def write(conn: Connection) -> str:
        conn.execute(_INSERT, {"v": "a"})
        conn.execute(_INSERT, {"v": "b"})
        return threading.current_thread().name

    ran_on = await database.run_write(write)
    assert ran_on.startswith("relayline-store")
    assert await database.run_read(_values) == ["a", "b"]
    async with database.read() as session:  # the async engine sees the commit too
        assert (await session.execute(_COUNT)).scalar() == 2


async def test_a_write_takes_the_lock_before_its_first_statement(
    database: Database, tmp_path: Path
) -> None:
    """BEGIN IMMEDIATE: while the function runs, before it ran any statement, no other
    connection can start writing; a read transaction takes no lock."""
    other = sqlite3.connect(
        tmp_path / "th.db", timeout=0.05, isolation_level=None, check_same_thread=False
    )

    def try_to_write(_conn: Connection) -> str:
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            return str(err)
        other.execute("ROLLBACK")
        return "free"

    try:
        assert "locked" in await database.run_write(try_to_write)
        assert await database.run_read(try_to_write) == "free"
        assert await database.run_write(lambda conn: None) is None
        other.execute("BEGIN IMMEDIATE")  # nothing left open after the transactions
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_an_error_rolls_the_whole_transaction_back_and_reaches_the_caller(
    database: Database,
) -> None:
    def duplicate(conn: Connection) -> None:
        conn.execute(_INSERT, {"v": "kept?"})
        conn.execute(_INSERT, {"v": "x"})
        conn.execute(_INSERT, {"v": "x"})

    await database.run_write(lambda conn: conn.execute(_INSERT, {"v": "first"}))
    with pytest.raises(exc.IntegrityError):
        await database.run_write(duplicate)

    class Refused(Exception):
        pass

    def refuse(conn: Connection) -> None:
        conn.execute(_INSERT, {"v": "refused"})
        raise Refused

    with pytest.raises(Refused):
        await database.run_write(refuse)
    assert await database.run_read(_values) == ["first"]


async def test_a_busy_database_fails_with_the_drivers_error_and_the_thread_goes_on(
    database: Database, tmp_path: Path
) -> None:
    """Another process holds the write lock past the busy timeout: the transaction fails with
    'locked' (as on the async engine), and the next one runs once the lock is free."""
    other = sqlite3.connect(tmp_path / "th.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(exc.OperationalError, match="locked"):
            await database.run_write(lambda conn: conn.execute(_INSERT, {"v": "refused"}))
        other.execute("ROLLBACK")
    finally:
        other.close()
    await database.run_write(lambda conn: conn.execute(_INSERT, {"v": "later"}))
    assert await database.run_read(_values) == ["later"]


async def test_the_thread_keeps_one_connection_between_its_transactions(
    database: Database,
) -> None:
    """Writes and reads reuse the thread's connection: after the first, no transaction checks
    one out of the pool (and resets and returns it)."""
    thread_engine = database.sync_engines[-1]
    checkouts: list[int] = []
    listener = lambda dbapi_conn, record, proxy: checkouts.append(id(dbapi_conn))  # noqa: E731
    event.listen(thread_engine, "checkout", listener)
    try:
        await database.run_write(lambda conn: conn.execute(_INSERT, {"v": "a"}))
        await database.run_read(_values)
        await database.run_write(lambda conn: conn.execute(_INSERT, {"v": "b"}))
        assert len(checkouts) == 1  # the first use opens it
    finally:
        event.remove(thread_engine, "checkout", listener)
    assert await database.run_read(_values) == ["a", "b"]


async def test_a_commit_that_fails_leaves_the_kept_connection_usable(database: Database) -> None:
    """A deferred foreign key fails at COMMIT, and SQLite then keeps the transaction open: the
    thread rolls it back, so the kept connection takes the next transaction, and nothing of the
    failed one is stored."""
    await database.run_write(
        lambda conn: conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
    )
    await database.run_write(
        lambda conn: conn.execute(
            text(
                "CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    )

    def orphan(conn: Connection) -> None:
        conn.execute(_INSERT, {"v": "with the orphan"})
        conn.execute(text("INSERT INTO child (p) VALUES (7)"))

    with pytest.raises(exc.IntegrityError, match="FOREIGN KEY"):
        await database.run_write(orphan)
    await database.run_write(lambda conn: conn.execute(_INSERT, {"v": "after"}))
    assert await database.run_read(_values) == ["after"]
    count = text("SELECT count(*) FROM child")
    assert await database.run_read(lambda conn: conn.execute(count).scalar()) == 0


async def test_an_invalidated_connection_is_replaced_by_the_next_transaction(
    database: Database,
) -> None:
    """SQLAlchemy invalidates a connection on a disconnect error: that transaction fails and
    stores nothing, and the next one runs on a new connection."""

    def driver_id(conn: Connection) -> int:
        return id(conn.connection.driver_connection)

    kept = await database.run_read(driver_id)

    def lost(conn: Connection) -> None:
        conn.execute(_INSERT, {"v": "lost"})
        conn.invalidate()

    with pytest.raises(exc.SQLAlchemyError):
        await database.run_write(lost)
    await database.run_write(lambda conn: conn.execute(_INSERT, {"v": "after"}))
    assert await database.run_read(_values) == ["after"]
    assert await database.run_read(driver_id) != kept


async def test_a_cancelled_caller_keeps_the_lock_until_its_transaction_has_ended(
    database: Database,
) -> None:
    """The caller stops waiting while its transaction runs on the thread: the transaction
    still commits as a whole, the next writer starts only after it, and the caller sees its
    cancellation then."""
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow(conn: Connection) -> None:
        started.set()
        conn.execute(_INSERT, {"v": "slow"})
        release.wait(5)
        order.append("slow ended")

    def next_writer(conn: Connection) -> None:
        order.append("next began")
        conn.execute(_INSERT, {"v": "next"})

    first = asyncio.create_task(database.run_write(slow))
    assert await asyncio.to_thread(started.wait, 5)
    first.cancel()
    second = asyncio.create_task(database.run_write(next_writer))
    await asyncio.sleep(0.1)
    assert not first.done() and not second.done() and order == []
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert order == ["slow ended", "next began"]
    assert await database.run_read(_values) == ["slow", "next"]


async def test_the_threads_statements_are_timed(database: Database) -> None:
    assert len(database.sync_engines) == 2  # the async engine's and the thread's
    for engine in database.sync_engines:
        instrument_engine(engine)

    def inserts() -> float:
        return sum(
            sample.value
            for metric in STORE_STATEMENTS.collect()
            for sample in metric.samples
            if sample.name.endswith("_count") and sample.labels["kind"] == "insert"
        )

    before = inserts()
    await database.run_write(lambda conn: conn.execute(_INSERT, {"v": "timed"}))
    assert inserts() == before + 1


async def test_dispose_ends_the_thread_and_a_later_use_starts_it_again(tmp_path: Path) -> None:
    db = Database(Settings(database_url=f"sqlite:///{tmp_path}/end.db"))
    before = len(_store_threads())
    assert await db.run_read(lambda conn: conn.execute(text("SELECT 1")).scalar()) == 1
    assert len(_store_threads()) == before + 1
    await db.dispose()
    for _ in range(50):
        if len(_store_threads()) == before:
            break
        await asyncio.sleep(0.02)
    assert len(_store_threads()) == before
    # Used again after dispose() (as an engine may be): the thread starts again.
    assert await db.run_read(lambda conn: conn.execute(text("SELECT 2")).scalar()) == 2
    await db.dispose()


async def test_an_in_memory_database_runs_the_same_functions_on_its_engine() -> None:
    """No file to share with a thread: the function runs through the async engine."""
    db = Database(Settings(database_url="sqlite:///:memory:"))
    try:
        assert db.sync_engines == [db.engine.sync_engine]

        def create_and_insert(conn: Connection) -> str:
            conn.execute(_TABLE)
            conn.execute(_INSERT, {"v": "m"})
            return threading.current_thread().name

        assert not (await db.run_write(create_and_insert)).startswith("relayline-store")
        with pytest.raises(exc.IntegrityError):
            await db.run_write(lambda conn: conn.execute(_INSERT, {"v": "m"}))
    finally:
        await db.dispose()
