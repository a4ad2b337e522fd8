"""SQLite through aiosqlite's thread, one thread round trip per statement, none for the
transaction's ``BEGIN`` and none for a commit or rollback with nothing to end.

SQLAlchemy's aiosqlite adapter makes a statement four round trips to aiosqlite's connection
thread (open a cursor, execute, fetch the rows, close the cursor), each a queue hand-off to the
thread and a wake-up of the event loop back. The statement itself takes microseconds, so the
round trips were most of the store's cost: measured in ``bench/turns.py``, about 14% of the
relay's CPU in aiosqlite's queueing alone. :class:`LeanCursor` runs the whole statement (cursor,
execute, fetch, close) as one call on that thread and keeps what the DBAPI cursor would answer
afterwards (description, rowcount, lastrowid) with the rows.

A transaction's ``BEGIN`` (the store issues it itself, ``BEGIN IMMEDIATE`` for writes) is not a
round trip of its own either: :meth:`LeanConnection.begin_later` keeps it, and it runs on the
thread right before the transaction's first statement, in the same call. Nothing else can run on
the connection in between (one statement at a time), so the transaction is the same; a ``BEGIN``
that fails (the lock is busy past the busy timeout) raises from that first statement instead.
A commit or rollback when SQLite has no transaction open (a transaction that ran no statement,
the pool's rollback of a connection returned after its commit) is a no-op in sqlite3 and is not
sent to the thread at all.

Everything else is SQLAlchemy's and aiosqlite's: the connection, its thread and its order of
calls (one statement at a time per connection, under the adapter's mutex), transactions (a
commit or rollback that has something to end is a call of its own), errors (raised on the
thread, handed back as they are and translated by the adapter), and server-side cursors.
Installed with ``create_async_engine(url, module=lean_dbapi())``; ``aiosqlite.Connection._execute``
(its queue of calls for the thread) and ``_conn`` (the sqlite3 connection: used on that thread,
and read here only for ``in_transaction`` while no call is running) are aiosqlite's internals, as
SQLAlchemy's own adapter uses them, and every store test goes through them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import await_

GRACEFUL_CLOSE_S = 2.0  # at most this long for an invalidated connection's close


def _begin_now(conn: sqlite3.Connection, begin: str) -> None:
    conn.execute(begin).close()


class StatementOutcome:
    """What the DBAPI cursor answers after a statement; stands in for aiosqlite's cursor."""

    __slots__ = ("arraysize", "description", "lastrowid", "rowcount")

    def __init__(self) -> None:
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def close(self) -> None:
        """Nothing is open: the statement's cursor was closed on the thread."""


def _run(
    conn: sqlite3.Connection,
    operation: str,
    parameters: Any,
    outcome: StatementOutcome,
    many: bool,
    begin: str | None = None,
) -> list[Any] | None:
    """On aiosqlite's thread: ``begin`` if given, then the statement from cursor to close; its
    rows (None: no result)."""
    if begin is not None:
        _begin_now(conn, begin)
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        outcome.description = cursor.description
        rows = cursor.fetchall() if cursor.description else None
        # After the fetch: an UPDATE … RETURNING counts its rows as they are read.
        outcome.rowcount = cursor.rowcount
        outcome.lastrowid = cursor.lastrowid
        return rows
    finally:
        cursor.close()


class LeanCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose statements are one call on aiosqlite's thread."""

    __slots__ = ()
    _awaitable_cursor_close = False

    def _make_new_cursor(self, connection: Any) -> Any:
        return StatementOutcome()

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._call(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._call(operation, seq_of_parameters, many=True)

    async def _call(self, operation: Any, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        adapted: LeanConnection = self._adapt_connection  # type: ignore[assignment]
        outcome = self._cursor
        assert isinstance(outcome, StatementOutcome)
        async with adapted._execute_mutex:
            begin, adapted._pending_begin = adapted._pending_begin, None
            rows: Sequence[Any] | None = await connection._execute(
                _run, connection._conn, operation, parameters, outcome, many, begin
            )
        if rows is not None:
            self._rows = collections.deque(rows)


class LeanConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("_pending_begin",)
    _cursor_cls = LeanCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._pending_begin: str | None = None

    def begin_later(self, statement: str) -> None:
        """Start a transaction with ``statement`` (``BEGIN``, ``BEGIN IMMEDIATE``) on the thread
        together with the next statement; a commit or rollback before any statement drops it."""
        self._pending_begin = statement

    def _open_on_thread(self) -> bool:
        """Whether SQLite has a transaction open on this connection. Read here, not on the
        thread: the adapter runs one call at a time, so the thread is not using it now."""
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        return connection._connection is not None and connection._conn.in_transaction

    def cursor(self, server_side: bool = False) -> Any:
        if server_side and self._pending_begin is not None:
            # A server-side cursor steps its statement in several calls of its own: the BEGIN
            # goes first, as a call of its own.
            begin, self._pending_begin = self._pending_begin, None
            connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
            try:
                await_(connection._execute(_begin_now, connection._conn, begin))  # type: ignore[no-untyped-call]
            except Exception as error:
                self._handle_exception(error)
        return super().cursor(server_side)

    def commit(self) -> None:
        self._pending_begin = None
        if self._open_on_thread():
            super().commit()

    def rollback(self) -> None:
        self._pending_begin = None
        if self._open_on_thread():
            super().rollback()

    async def _terminate_graceful_close(self) -> None:
        """Close a connection SQLAlchemy invalidated (a statement was cancelled) — but never
        wait for ever. When the task invalidating it is cancelled again meanwhile, SQLAlchemy
        also stops the connection (aiosqlite's ``stop``, whose thread then exits), and
        aiosqlite's ``close`` after that waits for a thread that is gone: a relay's shutdown
        (or a test's event loop closing) hung on it."""
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        if not connection._running:
            return  # stopped already: its thread closes the sqlite3 connection
        with contextlib.suppress(Exception):
            async with asyncio.timeout(GRACEFUL_CLOSE_S):
                await connection.close()


class LeanDbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> LeanConnection:
        adapted = super().connect(*arg, **kw)
        return LeanConnection(self, adapted._connection)


def lean_dbapi() -> LeanDbapi:
    """The DBAPI module for ``create_async_engine(..., module=...)`` on SQLite."""
    return LeanDbapi(aiosqlite, sqlite3)
