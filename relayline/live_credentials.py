"""Live connections end when their credential does.

A WebSocket or SSE stream is authenticated once, at its start; :class:`LiveCredentials` keeps
each one's :class:`~relayline.auth.Principal` so that a credential that stops being good ends
the connections that use it (WebSocket close 4401, SSE stream ended):

- a tenant key revoked, or a tenant disabled, through the admin API: at once on the instance
  that made the change, and on every other instance as soon as the broadcast it sends reaches
  them (the turn coordinator's control channel: Redis pub/sub when shared);
- a session token's expiry: found by the timers each transport already runs (the WebSocket
  heartbeat sweep, at most ``RELAYLINE_AUTH_REVALIDATE_S`` apart; an SSE stream wakes at its
  token's expiry), through :meth:`LiveCredentials.expired`;
- anything the broadcast missed (a lost pub/sub message, a change made by another tool on the
  database): each instance re-checks the distinct keys and tenants its connections use every
  ``RELAYLINE_AUTH_REVALIDATE_S``, in one batched store read per family — never per socket or
  per frame.

A connection that registers just after a revocation it did not see (it authenticated from a
cache, or raced the admin call) is ended on registration: revoked ids are remembered for long
enough to cover the credential cache and one re-validation interval.

While the store cannot be read, re-validation keeps the connections it cannot judge (failing
open for live streams; new requests still need the store or the short credential cache).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

import structlog
from prometheus_client import Counter

from relayline.auth import CACHE_TTL_S, Principal
from relayline.protocol.close_codes import Close
from relayline.tasks import cancel_and_wait

log = structlog.get_logger("relayline.auth")

ENDED = Counter(
    "relayline_connections_ended_by_auth_total",
    "Live WebSocket and SSE connections ended because their credential stopped being good",
    ["reason"],
)

Check = Callable[[Collection[str], Collection[str]], Awaitable[tuple[set[str], set[str]]]]
Broadcast = Callable[[dict[str, Any]], Awaitable[None]]

CONTROL_KIND = "auth.revoked"


class Watched(Protocol):
    """A live connection as this registry sees it. The connection object itself is what is
    indexed (no wrapper per connection: idle sockets are what a relay's memory goes to)."""

    @property
    def who(self) -> Principal: ...

    def end_by_auth(self, code: int, reason: str) -> None:
        """Close now (WebSocket close ``code``; SSE: end the stream); never blocks."""


class LiveCredentials:
    """The credentials this process's live connections use, indexed by tenant (a key's
    connections are found among its tenant's, which is what re-validation reads anyway)."""

    def __init__(
        self,
        *,
        revalidate_s: float,
        check: Check,
        broadcast: Broadcast | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.revalidate_s = revalidate_s
        self._check = check
        self._broadcast = broadcast
        self._on_change = on_change
        self._clock = clock
        self._by_tenant: dict[str, set[Watched]] = {}
        self._keys: dict[str, int] = {}  # tenant key id -> live connections using it
        # id -> when it may be forgotten: covers a connection registering with a credential
        # authenticated just before (or from a cache that had not heard of) the revocation.
        self._revoked: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def watched(self) -> int:
        return sum(len(w) for w in self._by_tenant.values())

    # Lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    # Connections

    def watch(self, conn: Watched) -> None:
        """Register a live connection; it is ended once if its credential goes bad."""
        who = conn.who
        if who.tenant_id is None:
            return  # admin and metrics keys change only with the configuration (restart)
        reason = self._already_bad(who)
        if reason is not None:
            self._end(conn, reason, registered=False)
            return
        self._by_tenant.setdefault(who.tenant_id, set()).add(conn)
        if who.kind == "tenant" and who.key_id is not None:
            self._keys[who.key_id] = self._keys.get(who.key_id, 0) + 1

    def unwatch(self, conn: Watched) -> bool:
        """Forget a connection; False when it was not (or no longer) registered."""
        who = conn.who
        if who.tenant_id is None:
            return False
        found = self._by_tenant.get(who.tenant_id)
        if found is None or conn not in found:
            return False
        found.discard(conn)
        if not found:
            del self._by_tenant[who.tenant_id]
        if who.kind == "tenant" and who.key_id is not None:
            left = self._keys.get(who.key_id, 1) - 1
            if left > 0:
                self._keys[who.key_id] = left
            else:
                self._keys.pop(who.key_id, None)
        return True

    # Revocations

    async def key_revoked(self, key_id: str) -> None:
        """A tenant key was revoked here: end its connections, then tell the other instances."""
        self._revoke(key_id=key_id)
        await self._tell({"kind": CONTROL_KIND, "key_id": key_id})

    async def tenant_disabled(self, tenant_id: str) -> None:
        self._revoke(tenant_id=tenant_id)
        await self._tell({"kind": CONTROL_KIND, "tenant_id": tenant_id})

    async def tenant_enabled(self, tenant_id: str) -> None:
        """A tenant was enabled again: its credentials are good from now on, everywhere."""
        self._enable(tenant_id)
        await self._tell({"kind": CONTROL_KIND, "enabled": tenant_id})

    async def on_control(self, message: dict[str, Any]) -> None:
        """A revocation (or re-enabling) broadcast by another instance."""
        key_id, tenant_id = message.get("key_id"), message.get("tenant_id")
        enabled = message.get("enabled")
        if isinstance(enabled, str):
            self._enable(enabled)
            return
        self._revoke(
            key_id=key_id if isinstance(key_id, str) else None,
            tenant_id=tenant_id if isinstance(tenant_id, str) else None,
        )

    def _enable(self, tenant_id: str) -> None:
        self._revoked.pop(tenant_id, None)
        if self._on_change is not None:
            self._on_change()

    async def _tell(self, message: dict[str, Any]) -> None:
        if self._broadcast is not None:
            await self._broadcast(message)

    def _revoke(self, *, key_id: str | None = None, tenant_id: str | None = None) -> None:
        if self._on_change is not None:
            self._on_change()
        remember_until = time.monotonic() + CACHE_TTL_S + 2 * self.revalidate_s
        if key_id is not None:
            self._revoked[key_id] = remember_until
            if key_id in self._keys:
                self._end_key(key_id)
        if tenant_id is not None:
            self._revoked[tenant_id] = remember_until
            for conn in list(self._by_tenant.get(tenant_id, ())):
                self._end(conn, "disabled")

    def _end_key(self, key_id: str) -> None:
        # Revocations are rare: scanning the tenants' connections beats a second index that
        # every idle socket would pay for.
        for conns in list(self._by_tenant.values()):
            for conn in [c for c in conns if c.who.key_id == key_id and c.who.kind == "tenant"]:
                self._end(conn, "revoked")

    def _already_bad(self, who: Principal) -> str | None:
        if who.expires_at is not None and who.expires_at <= self._clock():
            return "expired"
        if who.kind == "tenant" and who.key_id in self._revoked:
            return "revoked"
        if who.tenant_id in self._revoked:
            return "disabled"
        return None

    def _end(self, conn: Watched, reason: str, *, registered: bool = True) -> None:
        if registered and not self.unwatch(conn):
            return  # already ended, or closed by its client meanwhile
        ENDED.labels(reason).inc()
        log.info("connection_ended_by_auth", reason=reason, kind=conn.who.kind)
        try:
            conn.end_by_auth(Close.UNAUTHENTICATED, _REASONS[reason])
        except Exception:  # one connection's teardown must not spare the others
            log.exception("connection_end_failed")

    # The periodic part

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.revalidate_s)
            self._forget_old_revocations()
            try:
                await self.revalidate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("auth_revalidate_failed", error=type(exc).__name__)

    def expired(self, conn: Watched, now: float) -> bool:
        """End ``conn`` if its session token has expired by ``now`` (unix seconds). The
        transports call this from the timers they already run (the WebSocket heartbeat sweep,
        the SSE stream's wait), so an idle connection carries no expiry entry of its own."""
        expires_at = conn.who.expires_at
        if expires_at is None or expires_at > now:
            return False
        self._end(conn, "expired")
        return True

    def _forget_old_revocations(self) -> None:
        mono = time.monotonic()
        for ident in [i for i, until in self._revoked.items() if until <= mono]:
            del self._revoked[ident]

    async def revalidate(self) -> None:
        """Re-read, from the store, every key and tenant a live connection uses (batched)."""
        key_ids = list(self._keys)
        tenant_ids = list(self._by_tenant)
        if not tenant_ids:
            return
        for start in range(0, max(len(key_ids), len(tenant_ids)), _BATCH):
            keys = key_ids[start : start + _BATCH]
            tenants = tenant_ids[start : start + _BATCH]
            good_keys, good_tenants = await self._check(keys, tenants)
            for key_id in set(keys) - good_keys:
                self._end_key(key_id)
            for tenant_id in set(tenants) - good_tenants:
                for conn in list(self._by_tenant.get(tenant_id, ())):
                    self._end(conn, "disabled")


_BATCH = 500  # ids per query: well inside every driver's parameter limit
_REASONS = {
    "revoked": "credential revoked",
    "disabled": "tenant disabled",
    "expired": "session expired",
}
