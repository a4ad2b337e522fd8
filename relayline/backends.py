"""The state several relay instances must share, chosen by one URL.

``RELAYLINE_REDIS_URL`` unset (``memory://``) keeps every family in this process; ``redis://``
or ``rediss://`` shares them between the instances of a deployment. Each family has one factory
that picks its implementation by that choice, behind a Protocol whose docstring states its
guarantees, and one contract test run against every implementation:

- event logs: ``Bus`` — ``bus.create_bus`` — ``MemoryBus`` / ``RedisStreamsBus``;
- turn coordination: ``Coordinator`` — ``turns.coordination.create_coordinator`` —
  ``LocalCoordinator`` / ``RedisCoordinator``;
- worker nonces: ``NonceStore`` — ``turns.signing.create_nonce_store`` —
  ``MemoryNonceStore`` / ``RedisNonceStore``;
- connection caps: ``ConnectionCapStore`` — ``limits.create_cap_store`` —
  ``MemoryConnectionCapStore`` / ``RedisConnectionCapStore``.

Rate limits take their storage from the same URL through the ``limits`` library (its own
client: the library owns its storage), and the bus's blocking reader and the coordinator's
pub/sub subscription hold a connection each, as blocking readers must. Everything else uses one
Redis client — one connection pool — and one instance id per process.
:func:`open_shared_state` registers every opened part on the caller's ``AsyncExitStack``, so a
failure half-way through start-up closes what was opened. A Redis that is merely unreachable
at start-up is not a failure: the relay starts, ``/health/ready`` names the failing check, and
each part recovers when Redis returns.
"""

from __future__ import annotations

import contextlib
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relayline.bus import Bus, create_bus
from relayline.config import Settings
from relayline.ids import new_id
from relayline.limits import ConnectionCapStore, create_cap_store
from relayline.turns.coordination import Coordinator, create_coordinator
from relayline.turns.signing import NonceStore, create_nonce_store

# URL scheme -> backend kind; an unknown scheme fails at start-up.
KINDS = {"memory": "memory", "redis": "redis", "rediss": "redis"}


def backend_kind(url: str | None) -> str:
    """``memory`` or ``redis`` for ``url``; raises ``ValueError`` naming the known schemes."""
    scheme = urlsplit(url).scheme.lower() if url else "memory"
    try:
        return KINDS[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in KINDS)
        raise ValueError(f"unsupported shared-state URL scheme {scheme!r}; use {known}") from None


@dataclass(slots=True)
class SharedState:
    """The shared-state parts of one relay process."""

    instance_id: str
    kind: str
    bus: Bus
    coordinator: Coordinator
    nonces: NonceStore
    caps: ConnectionCapStore
    redis: Any | None = None  # the process's one Redis client, when shared

    async def ready(self) -> bool:
        if self.redis is None:
            return True
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False


async def open_shared_state(settings: Settings, stack: AsyncExitStack) -> SharedState:
    """Open every family for ``settings.redis_url``; their closing goes on ``stack``."""
    kind = backend_kind(settings.redis_url)
    instance_id = new_id()
    redis: Any | None = None
    bus_opts: dict[str, Any] = {
        "history_max_events": settings.history_max_events,
        "history_max_age_s": settings.history_max_age_s,
    }
    if kind == "redis":
        from relayline.bus.redis_streams import shared_client
        from relayline.observability.store_metrics import CountingRedisConnection

        assert settings.redis_url is not None
        redis = shared_client(settings.redis_url, connection_class=CountingRedisConnection)
        stack.push_async_callback(redis.aclose)
        bus_opts.update(key_prefix=settings.redis_prefix, redis=redis, instance_id=instance_id)
    bus = create_bus(settings.redis_url, **bus_opts)
    stack.push_async_callback(bus.close)
    await bus.start()
    caps = create_cap_store(redis, settings.redis_prefix, instance_id)
    close_caps = getattr(caps, "close", None)
    if close_caps is not None:
        stack.push_async_callback(close_caps)
    start_caps = getattr(caps, "start", None)
    if start_caps is not None:
        with contextlib.suppress(Exception):  # Redis may come later; readiness says so meanwhile
            await start_caps()
    return SharedState(
        instance_id=instance_id,
        kind=kind,
        bus=bus,
        coordinator=create_coordinator(redis, settings.redis_prefix, instance_id),
        nonces=create_nonce_store(redis, settings.redis_prefix),
        caps=caps,
        redis=redis,
    )
