"""One async engine per process, for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from relayline.config import Settings
from relayline.store.sqlite_driver import lean_dbapi


def async_url(url: str) -> str:
    """Map the user-facing URL (``sqlite:///…``, ``postgresql://…``) to its async driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database backend {backend!r}")


# The execution option that marks a write transaction: SQLite then begins it IMMEDIATE (the
# write lock taken at once, not at the first write).
WRITE_OPTION = "relayline_write"


def sqlite_pragmas(cursor: Any, busy_timeout_ms: int) -> None:
    """What every SQLite connection of the store sets when it opens."""
    # WAL lets readers proceed during a write; NORMAL is durable with WAL except for the last
    # transactions on power loss, which is the usual trade-off.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")


def create_engine(settings: Settings) -> AsyncEngine:
    """Build the process's engine; SQLite gets WAL, a busy timeout and foreign keys."""
    url = async_url(settings.database_url)
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            module=lean_dbapi(),  # a statement is one round trip to aiosqlite's thread
            connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
        )
        busy = settings.sqlite_busy_timeout_ms

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            sqlite_pragmas(cur, busy)
            cur.close()

        return engine
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        # asyncpg waits 60 s by default; a start-up against an address that drops packets
        # should fail with a clear message well before a supervisor gives up on the process.
        connect_args={"timeout": settings.db_connect_timeout_s},
        pool_recycle=1800,
    )
    ping_idle_connections(engine.sync_engine, PING_IDLE_S)
    return engine


# A pooled connection that sat unused for longer than this is tested before it is handed out.
PING_IDLE_S = 1.0
_IDLE_SINCE = "relayline_idle_since"


def ping_idle_connections(engine: Engine, idle_s: float) -> None:
    """Test a pooled connection before use when it sat idle for more than ``idle_s``; a dead
    one is replaced by a new connection (the pool reconnects it on a ``DisconnectionError``),
    so a request after the server restarted gets a live connection.

    In place of ``pool_pre_ping``, which tests every checkout: on asyncpg its ping is three
    round trips (``BEGIN``, ``;``, ``ROLLBACK``), three times what storing an answer costs,
    and under load a connection comes back to the pool and goes out again within
    milliseconds. A connection used that recently whose server has just gone fails its
    statement instead; SQLAlchemy then invalidates it and every older one in the pool, so one
    request is answered ``503 unavailable`` and the next ones get new connections."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since <= idle_s:
            return  # a new connection, or one that was in use a moment ago
        try:
            dbapi_conn.ping()
        except Exception as error:
            raise DisconnectionError("a pooled connection failed its ping") from error
