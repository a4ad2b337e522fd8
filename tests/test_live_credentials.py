"""LiveCredentials on its own: what ends which connection, and what it costs the store."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from relayline.auth import Principal
from relayline.live_credentials import CONTROL_KIND, LiveCredentials
from relayline.protocol.close_codes import Close


class Conn:
    def __init__(self, who: Principal) -> None:
        self.who = who
        self.closed: list[tuple[int, str]] = []

    def end_by_auth(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def watched(live: LiveCredentials, who: Principal) -> Conn:
    conn = Conn(who)
    live.watch(conn)
    return conn


class Store:
    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.disabled: set[str] = set()
        self.calls: list[tuple[list[str], list[str]]] = []

    async def check(
        self, keys: Collection[str], tenants: Collection[str]
    ) -> tuple[set[str], set[str]]:
        self.calls.append((sorted(keys), sorted(tenants)))
        return set(keys) - self.revoked, set(tenants) - self.disabled


def key(key_id: str, tenant: str = "t1") -> Principal:
    return Principal(kind="tenant", tenant_id=tenant, key_id=key_id)


def session(tenant: str = "t1", expires_at: int = 10_000) -> Principal:
    return Principal(kind="session", tenant_id=tenant, key_id="jti", expires_at=expires_at)


def make(
    store: Store, now: list[float], sent: list[dict[str, Any]] | None = None
) -> LiveCredentials:
    async def broadcast(message: dict[str, Any]) -> None:
        if sent is not None:
            sent.append(message)

    return LiveCredentials(
        revalidate_s=10, check=store.check, broadcast=broadcast, clock=lambda: now[0]
    )


async def test_revocation_ends_only_the_connections_of_that_key_and_is_broadcast() -> None:
    sent: list[dict[str, Any]] = []
    live = make(Store(), [0.0], sent)
    a = watched(live, key("k1"))
    b = watched(live, key("k2"))
    s = watched(live, session())
    await live.key_revoked("k1")
    assert a.closed == [(Close.UNAUTHENTICATED, "credential revoked")]
    assert b.closed == [] and s.closed == []
    assert sent == [{"kind": CONTROL_KIND, "key_id": "k1"}]
    # A connection that registers with the revoked key afterwards is ended on the spot.
    late = watched(live, key("k1"))
    assert late.closed == [(Close.UNAUTHENTICATED, "credential revoked")]


async def test_a_disabled_tenant_ends_keys_and_sessions_and_enabling_it_clears_that() -> None:
    live = make(Store(), [0.0])
    a = watched(live, key("k1"))
    s = watched(live, session())
    other = watched(live, key("k9", tenant="t2"))
    await live.on_control({"kind": CONTROL_KIND, "tenant_id": "t1"})  # from another instance
    assert a.closed and s.closed and not other.closed
    assert a.closed[0][1] == "tenant disabled"
    await live.on_control({"kind": CONTROL_KIND, "enabled": "t1"})
    again = watched(live, session())
    assert again.closed == []


async def test_expired_ends_a_session_once_and_only_after_its_expiry() -> None:
    now = [100.0]
    live = make(Store(), now)
    early = watched(live, session(expires_at=105))
    keyed = watched(live, key("k1"))
    assert not live.expired(early, 104.9) and not live.expired(keyed, 1e12)
    assert live.expired(early, 105)
    assert early.closed == [(Close.UNAUTHENTICATED, "session expired")]
    live.expired(early, 106)  # asked again by the next sweep: ended once
    assert len(early.closed) == 1 and keyed.closed == []
    assert live.watched == 1
    now[0] = 110
    late = watched(live, session(expires_at=109))
    assert late.closed  # already past its expiry when it registered


async def test_revalidation_reads_each_distinct_credential_once_and_ends_the_bad_ones() -> None:
    store = Store()
    live = make(store, [0.0])
    conns = [watched(live, key(f"k{i % 3}", tenant=f"t{i % 2}")) for i in range(30)]
    store.revoked.add("k1")
    store.disabled.add("t1")
    await live.revalidate()
    assert store.calls == [(["k0", "k1", "k2"], ["t0", "t1"])]  # one batched read
    for i, conn in enumerate(conns):
        should_end = i % 3 == 1 or i % 2 == 1
        assert len(conn.closed) == (1 if should_end else 0), i  # ended once, whatever the cause
    # Nothing is read for connections that no longer exist.
    store.calls.clear()
    live2 = make(store, [0.0])
    await live2.revalidate()
    assert store.calls == []


async def test_admin_connections_are_not_indexed() -> None:
    store = Store()
    live = make(store, [0.0])
    conn = watched(live, Principal(kind="admin"))
    assert live.watched == 0
    await live.revalidate()
    assert store.calls == [] and conn.closed == []
