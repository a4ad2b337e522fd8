"""The state that must be shared when several instances serve one deployment — worker nonces
and connection caps — picked by configuration: in-process without ``RELAYLINE_REDIS_URL``,
Redis with it. (The bus and the rate limits pick their backend by URL the same way.)"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from relayline.config import Settings
from relayline.limits import ConnectionCapStore, MemoryConnectionCapStore
from relayline.turns.signing import MemoryNonceStore, NonceStore


@dataclass(slots=True)
class SharedBackends:
    nonces: NonceStore
    caps: ConnectionCapStore
    redis: object | None = None

    async def ready(self) -> bool:
        if self.redis is None:
            return True
        try:
            return bool(await self.redis.ping())  # type: ignore[attr-defined]
        except Exception:
            return False

    async def close(self) -> None:
        close_caps = getattr(self.caps, "close", None)
        if close_caps is not None:
            await close_caps()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()  # type: ignore[attr-defined]


async def open_backends(settings: Settings) -> SharedBackends:
    if not settings.redis_url:
        return SharedBackends(nonces=MemoryNonceStore(), caps=MemoryConnectionCapStore())
    from redis.asyncio import Redis

    from relayline.limits.redis_caps import RedisConnectionCapStore
    from relayline.turns.redis_nonces import RedisNonceStore

    redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    caps = RedisConnectionCapStore(redis, settings.redis_prefix)
    with contextlib.suppress(Exception):  # Redis may come later; readiness says so meanwhile
        await caps.start()
    return SharedBackends(
        nonces=RedisNonceStore(redis, settings.redis_prefix), caps=caps, redis=redis
    )
