"""Whole SQLite transactions run on one thread of their own, in one hand-off each.

On the async engine every statement is a round trip: the event loop hands it to SQLAlchemy's
greenlet, which hands it to aiosqlite's thread and waits for the answer to come back the same
way. A transaction of three statements thus crosses between the loop and the thread five
times (``BEGIN`` goes with the first statement, see :mod:`.sqlite_driver`), and most of its
CPU is that machinery, not SQLite (``bench/store_tx.py``). Here a transaction is a plain
function of a synchronous connection, and the whole of it runs on this thread: the loop waits
for one future.

The thread has its own connection to the same file (WAL: readers never wait for it; writers
of this process queue on :class:`~relayline.store.database.Database`'s write lock before they
get here, and ``BEGIN IMMEDIATE`` with the busy timeout covers other processes), and keeps it
open between transactions: checking it out of the pool, resetting and returning it was half
the cost of a transaction without statements (``bench/store_tx.py``). An in-memory
database has no file to share, and uses the async engine instead (the same function, through
``run_sync``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url

from relayline.store.engine import sqlite_pragmas

T = TypeVar("T")


class TransactionThread:
    """Runs transactions, one at a time in submission order, on one thread and connection.

    Guarantees: each call of :meth:`run` is one transaction (``BEGIN IMMEDIATE`` for a write,
    a deferred ``BEGIN`` for a read), committed when the function returns and rolled back when
    it raises (the exception reaches the caller unchanged). A caller that is cancelled while
    its transaction runs does not cut it short: the transaction ends (commits or rolls back) on
    the thread, and the cancellation is raised to the caller only then, so that whatever the
    caller holds (the write lock) is held until the database has let go too. No transaction
    is left open on the kept connection, not even by a ``COMMIT`` that failed; a connection
    that SQLAlchemy invalidated (a disconnect error) is replaced by the next transaction.
    """

    def __init__(self, url: str, busy_timeout_ms: int) -> None:
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        self.engine: Engine = create_sync_engine(
            sync_url,
            connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
            pool_size=1,
            max_overflow=0,
        )
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions begin where we say (below)
            cur = dbapi_conn.cursor()
            sqlite_pragmas(cur, busy_timeout_ms)
            cur.close()

        self._conn: Connection | None = None  # the thread's, kept open between transactions

    async def run(self, fn: Callable[[Connection], T], *, write: bool) -> T:
        """``fn(connection)`` as one transaction on the thread; its result or its exception."""
        if self._executor is None:  # started on first use, and again after close()
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="relayline-store"
            )
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._transaction, fn, write)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            await _settled(done)
            raise

    def _transaction(self, fn: Callable[[Connection], T], write: bool) -> T:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._conn = self.engine.connect()
        try:
            with conn.begin():  # begins nothing on this dialect: the next line does
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
                return fn(conn)
        finally:
            # A COMMIT that failed (a deferred constraint, a full disk) leaves SQLite's
            # transaction open on this connection, which the next transaction reuses.
            if not conn.invalidated:
                driver = conn.connection.driver_connection
                if driver is not None and driver.in_transaction:
                    driver.rollback()

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self.engine.dispose()

    async def close(self) -> None:
        """Close the connection and end the thread (after the transactions already submitted).
        A later :meth:`run` opens them again, as an engine does after ``dispose()``."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, self._close_connection)
        executor.shutdown(wait=False)


async def _settled(done: asyncio.Future[Any]) -> None:
    """Wait for ``done`` to finish, whatever it ends with and however often this is cancelled
    meanwhile (a transaction on the thread cannot be interrupted; it is short)."""
    while not done.done():
        try:
            await asyncio.wait([done])
        except asyncio.CancelledError:
            continue
