"""One async engine per process, for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
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
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        # asyncpg waits 60 s by default; a start-up against an address that drops packets
        # should fail with a clear message well before a supervisor gives up on the process.
        connect_args={"timeout": settings.db_connect_timeout_s},
        pool_pre_ping=True,
        pool_recycle=1800,
    )
