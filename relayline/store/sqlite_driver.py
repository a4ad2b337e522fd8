"""SQLite through aiosqlite's thread, one thread round trip per statement.

SQLAlchemy's aiosqlite adapter makes a statement four round trips to aiosqlite's connection
thread (open a cursor, execute, fetch the rows, close the cursor), each a queue hand-off to the
thread and a wake-up of the event loop back. The statement itself takes microseconds, so the
round trips were most of the store's cost: measured in ``bench/turns.py``, about 14% of the
relay's CPU in aiosqlite's queueing alone. :class:`LeanCursor` runs the whole statement (cursor,
execute, fetch, close) as one call on that thread and keeps what the DBAPI cursor would answer
afterwards (description, rowcount, lastrowid) with the rows.

Everything else is SQLAlchemy's and aiosqlite's: the connection, its thread and its order of
calls (one statement at a time per connection, under the adapter's mutex), transactions
(commit and rollback are calls of their own), errors (raised on the thread, handed back as
they are and translated by the adapter), and server-side cursors. Installed with
``create_async_engine(url, module=lean_dbapi())``; ``aiosqlite.Connection._execute`` (its queue
of calls for the thread) and ``_conn`` (the sqlite3 connection, used on that thread only) are
aiosqlite's internals, as SQLAlchemy's own adapter uses them, and every store test goes through
them.
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

GRACEFUL_CLOSE_S = 2.0  # at most this long for an invalidated connection's close


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
) -> list[Any] | None:
    """On aiosqlite's thread: the statement from cursor to close; its rows (None: no result)."""
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
        outcome = self._cursor
        assert isinstance(outcome, StatementOutcome)
        async with self._adapt_connection._execute_mutex:
            rows: Sequence[Any] | None = await connection._execute(
                _run, connection._conn, operation, parameters, outcome, many
            )
        if rows is not None:
            self._rows = collections.deque(rows)


class LeanConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = LeanCursor

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
