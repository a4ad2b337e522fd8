"""A stopping relay ends its sockets' cap holds together, before it closes the sockets: no
release per socket (one Redis round trip each made a relay with 10,000 sockets on Redis take
seconds to exit)."""

from __future__ import annotations

import asyncio

import pytest

from relayline.limits.connection_caps import MemoryConnectionCapStore
from relayline.testing import RelayServer, WsHarness
from tests.fixtures import Tenant


async def test_the_holds_are_dropped_before_the_sockets_close(
    relay: RelayServer, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = relay.app.http.state.relay.backends.caps
    assert isinstance(store, MemoryConnectionCapStore)
    seen: list[str] = []
    real_release, real_drop = store.release, store.drop_all

    async def release(kind: str, key: str) -> None:
        seen.append("release")
        await real_release(kind, key)

    def drop_all() -> None:
        seen.append("drop_all")
        real_drop()

    monkeypatch.setattr(store, "release", release)
    monkeypatch.setattr(store, "drop_all", drop_all)
    harnesses = [WsHarness(relay, token=tenant.key) for _ in range(3)]
    for ws in harnesses:
        await ws.__aenter__()
    assert len(store) == 2  # the identity's and the address's slots, three holds each
    await relay.stop()
    assert seen and seen[0] == "drop_all", seen
    assert len(store) == 0
    for ws in harnesses:
        async with asyncio.timeout(5):
            await ws.__aexit__(None, None, None)
