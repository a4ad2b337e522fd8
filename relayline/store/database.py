"""The store's process-wide handle: one engine and pool, read and write sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from relayline.config import Settings, sqlite_path
from relayline.store.engine import WRITE_OPTION, create_engine
from relayline.store.sqlite_driver import LeanConnection
from relayline.store.sqlite_thread import TransactionThread

T = TypeVar("T")


class Database:
    """Owns the engine for the life of the process (created at start-up, disposed at shutdown).

    ``write()`` sessions on SQLite begin with ``BEGIN IMMEDIATE`` so a transaction that reads
    before it writes waits for the lock (busy timeout) instead of failing on lock upgrade. On
    SQLite, which takes one writer at a time anyway, this process's writers also queue on an
    asyncio lock first: they are served in order as soon as the previous one commits, instead
    of polling the file lock with the busy handler's growing sleeps (and failing after the busy
    timeout under a burst). The busy timeout still covers other processes (``relayline admin``).
    Write transactions must not nest.

    :meth:`run_write` and :meth:`run_read` run a transaction written as a function of a
    synchronous connection (Core statements): on a SQLite file, the whole of it on one thread
    in one hand-off (:mod:`.sqlite_thread`); elsewhere through the async engine (``run_sync``).
    The hot transactions (a post, a claim, an outcome) are written that way.
    """

    def __init__(self, settings: Settings, engine: AsyncEngine | None = None) -> None:
        self.engine = engine or create_engine(settings)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None
        self._thread: TransactionThread | None = None
        if self.is_sqlite:
            self._take_over_sqlite_transactions()
            if engine is None and sqlite_path(settings.database_url) is not None:
                self._thread = TransactionThread(
                    settings.database_url, settings.sqlite_busy_timeout_ms
                )

    @property
    def sync_engines(self) -> list[Engine]:
        """Every engine that runs this store's statements (for instrumentation)."""
        engines = [self.engine.sync_engine]
        if self._thread is not None:
            engines.append(self._thread.engine)
        return engines

    def _take_over_sqlite_transactions(self) -> None:
        # The sqlite3 driver issues its own deferred BEGIN; hand that to SQLAlchemy so that
        # write transactions can start IMMEDIATE (the documented pysqlite recipe).
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _no_driver_begin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        @event.listens_for(sync_engine, "begin")
        def _begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get(WRITE_OPTION, False)
            statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"
            dbapi_conn = conn.connection.dbapi_connection
            if isinstance(dbapi_conn, LeanConnection):
                dbapi_conn.begin_later(statement)  # sent with the first statement
            else:
                conn.exec_driver_sql(statement)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for queries; rolled back at exit."""
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def read_core(self) -> AsyncIterator[AsyncConnection]:
        """A connection for Core queries (no ORM objects), without a session's bookkeeping;
        its transaction is rolled back at exit."""
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction committed at exit, rolled back on error."""
        if self._write_lock is None:
            async with self._sessions.begin() as session:
                await session.connection(execution_options={WRITE_OPTION: True})
                yield session
            return
        async with self._write_lock, self._sessions.begin() as session:
            await session.connection(execution_options={WRITE_OPTION: True})
            yield session

    @asynccontextmanager
    async def write_core(self) -> AsyncIterator[AsyncConnection]:
        """A transaction like :meth:`write`'s, on a bare connection: Core statements only (no
        ORM objects), without the session's bookkeeping; what :meth:`run_write` runs on where
        there is no store thread. Same lock, same ``BEGIN IMMEDIATE`` on SQLite; committed at
        exit, rolled back on error."""
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.connect() as conn:
            await conn.execution_options(**{WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection on which each statement commits on its own: no ``BEGIN`` and
        ``COMMIT`` round trips. For a write that is one statement (data-modifying CTEs), on a
        server store only: SQLite's writes go through :meth:`run_write`."""
        if self.is_sqlite:
            raise RuntimeError("autocommit() is for a server store; SQLite writes use run_write")
        async with self.engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)`` as one write transaction, like :meth:`write_core`'s: committed
        when it returns, rolled back when it raises; its result or its exception.

        ``fn`` runs Core statements on a synchronous connection and does nothing else that
        blocks (on SQLite it runs on the store's thread, elsewhere in a greenlet)."""
        if self._thread is None:
            async with self.write_core() as conn:
                return await conn.run_sync(fn)
        assert self._write_lock is not None
        async with self._write_lock:
            return await self._thread.run(fn, write=True)

    async def run_read(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)`` as one read transaction (a deferred ``BEGIN`` on SQLite: it
        takes no write lock), like :meth:`read_core`'s; ``fn`` only reads, under the same
        rules as :meth:`run_write`'s. On SQLite it waits for the thread's transactions
        submitted before it (a write another process keeps waiting, up to the busy timeout,
        delays it too): for short reads on hot paths, not for reports."""
        if self._thread is None:
            async with self.read_core() as conn:
                return await conn.run_sync(fn)
        return await self._thread.run(fn, write=False)

    async def ping(self) -> None:
        """Round-trip to the database; raises when it is unreachable."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self._thread is not None:
            await self._thread.close()
        await self.engine.dispose()
