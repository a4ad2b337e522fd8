"""Prometheus metrics of the store (SQL) and of Redis, and the hooks that feed them.

The store and the bus sit below this package's users and do not import it: the relay wires
the hooks in when it opens them (:func:`instrument_engine`, :class:`CountingRedisConnection`).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

STORE_STATEMENTS = Histogram(
    "relayline_store_statement_seconds",
    "SQL statement latency, by kind (select, insert, update, delete, other)",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STORE_POOL_IN_USE = Gauge(
    "relayline_store_pool_connections_in_use", "Database connections checked out of the pool"
)
REDIS_ERRORS = Counter(
    "relayline_redis_errors_total",
    "Redis commands that failed for want of a connection or an answer, by kind",
    ["kind"],
)

_KINDS = ("select", "insert", "update", "delete")
_STARTED = "relayline_started"


def _kind(statement: str) -> str:
    head = statement.lstrip()[:6].lower()
    return head if head in _KINDS else "other"


# Each statement is timed: the histogram of each kind is looked up once, not per statement
# (``labels()`` hashes and locks on every call).
_BY_KIND = {kind: STORE_STATEMENTS.labels(kind) for kind in (*_KINDS, "other")}


def instrument_engine(engine: AsyncEngine | Engine) -> None:
    """Time every statement of ``engine`` (once per engine)."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if getattr(sync_engine, "_relayline_instrumented", False):
        return
    sync_engine._relayline_instrumented = True  # type: ignore[attr-defined]

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info[_STARTED] = time.perf_counter()

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started = conn.info.pop(_STARTED, None)
        if started is not None:
            _BY_KIND[_kind(statement)].observe(time.perf_counter() - started)


def pool_in_use(engine: AsyncEngine) -> int:
    """Connections checked out of ``engine``'s pool now (0 for a pool that does not count)."""
    checkedout = getattr(engine.pool, "checkedout", None)
    return int(checkedout()) if callable(checkedout) else 0


class CountingRedisConnection(Connection):
    """A Redis connection that counts connection and timeout failures."""

    async def connect(self) -> None:
        with _counted():
            await super().connect()  # type: ignore[no-untyped-call]

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        with _counted():
            await super().send_packed_command(*args, **kwargs)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        with _counted():
            return await super().read_response(*args, **kwargs)


class _counted:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            return
        if issubclass(exc_type, RedisTimeoutError):
            REDIS_ERRORS.labels("timeout").inc()
        elif issubclass(exc_type, RedisConnectionError | ConnectionError | OSError):
            REDIS_ERRORS.labels("connection").inc()
