"""Where every instance can find a terminal session and the workers that host terminals.

A session lives on the instance whose worker runs it (the *holder*), which keeps its record
here too, so that any instance can answer for it: its owner (for the ACL of ``term:<id>`` and
the REST routes), its state, and which instance to route its ops to. Each instance also reports
the terminal hosts it holds (programs, room, load), so an open that lands on another instance
can still pick them.

Guarantees: best effort, like the turn coordinator's worker reports. A write that fails is
swallowed (the holder writes again on every change and refreshes every record and report
periodically); a record or report whose holder stopped refreshing expires by itself
(:data:`LIVE_TTL_S`), so a dead instance's sessions and hosts disappear. Reads never raise: an
unreachable store reads as empty.

:class:`LocalDirectory` is the single-instance version (the holder's own registry is all
there is); :class:`RedisDirectory` shares it through Redis.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Protocol

from relayline.terminals.registry import TerminalRecord

LIVE_TTL_S = 60  # a record or host report outlives its last refresh by this much
REFRESH_S = 15.0  # how often a holder refreshes its records and reports its hosts


class TerminalDirectory(Protocol):
    shared: bool

    async def put(self, record: TerminalRecord, ttl_s: float) -> None:
        """Store the record (replacing an older one) for ``ttl_s`` seconds."""

    async def get(self, session_id: str) -> TerminalRecord | None:
        """The record last stored under this id, if not expired."""

    async def of_tenant(self, tenant_id: str) -> list[TerminalRecord]:
        """The tenant's stored records (any instance's), unordered."""

    async def report_hosts(self, instance_id: str, hosts: list[dict[str, Any]]) -> None:
        """This instance's terminal hosts now: ``{worker_id, programs, capacity, load}``."""

    async def hosts_elsewhere(self, instance_id: str) -> list[dict[str, Any]]:
        """The hosts the other live instances reported last, each with its ``instance``."""


class LocalDirectory:
    """One instance: nobody else to tell, nothing to find elsewhere."""

    shared = False

    async def put(self, record: TerminalRecord, ttl_s: float) -> None:
        return None

    async def get(self, session_id: str) -> TerminalRecord | None:
        return None

    async def of_tenant(self, tenant_id: str) -> list[TerminalRecord]:
        return []

    async def report_hosts(self, instance_id: str, hosts: list[dict[str, Any]]) -> None:
        return None

    async def hosts_elsewhere(self, instance_id: str) -> list[dict[str, Any]]:
        return []


class RedisDirectory:
    """Records as JSON strings with an expiry, a sorted set per tenant as the index, one hash
    of host reports (one field per instance, each with its own deadline)."""

    shared = True

    def __init__(self, redis: Any, key_prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}term:"

    def _record_key(self, session_id: str) -> str:
        return f"{self._prefix}rec:{session_id}"

    def _tenant_key(self, tenant_id: str) -> str:
        return f"{self._prefix}tenant:{tenant_id}"

    async def put(self, record: TerminalRecord, ttl_s: float) -> None:
        with contextlib.suppress(Exception):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._record_key(record.id), json.dumps(record.as_json()), ex=int(ttl_s))
                pipe.zadd(self._tenant_key(record.tenant_id), {record.id: record.created_at})
                pipe.expire(self._tenant_key(record.tenant_id), int(ttl_s) + LIVE_TTL_S)
                await pipe.execute()

    async def get(self, session_id: str) -> TerminalRecord | None:
        try:
            raw = await self._redis.get(self._record_key(session_id))
        except Exception:
            return None
        return TerminalRecord.from_json(raw) if raw is not None else None

    async def of_tenant(self, tenant_id: str) -> list[TerminalRecord]:
        try:
            ids = await self._redis.zrange(self._tenant_key(tenant_id), 0, -1)
            if not ids:
                return []
            raws = await self._redis.mget([self._record_key(_text(i)) for i in ids])
            gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
            if gone:
                await self._redis.zrem(self._tenant_key(tenant_id), *gone)
        except Exception:
            return []
        records = (TerminalRecord.from_json(raw) for raw in raws if raw is not None)
        return [r for r in records if r is not None]

    async def report_hosts(self, instance_id: str, hosts: list[dict[str, Any]]) -> None:
        value = json.dumps({"hosts": hosts, "until": time.time() + LIVE_TTL_S})
        with contextlib.suppress(Exception):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(f"{self._prefix}hosts", instance_id, value)
                pipe.expire(f"{self._prefix}hosts", LIVE_TTL_S * 20)
                await pipe.execute()

    async def hosts_elsewhere(self, instance_id: str) -> list[dict[str, Any]]:
        try:
            entries = await self._redis.hgetall(f"{self._prefix}hosts")
        except Exception:
            return []
        now = time.time()
        found: list[dict[str, Any]] = []
        for instance, raw in entries.items():
            name = _text(instance)
            if name == instance_id:
                continue
            try:
                entry = json.loads(raw)
                if entry.get("until", 0) > now:
                    found += [{**h, "instance": name} for h in entry.get("hosts", [])]
            except (ValueError, TypeError, AttributeError):
                continue
        return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def create_directory(redis: Any | None, key_prefix: str) -> TerminalDirectory:
    """Redis when the process has a Redis client (``RELAYLINE_REDIS_URL``), else local."""
    return LocalDirectory() if redis is None else RedisDirectory(redis, key_prefix)
