"""Worker-request nonces remembered in Redis, so a replay is refused by every instance."""

from __future__ import annotations

from redis.asyncio import Redis


class RedisNonceStore:
    """:class:`~relayline.turns.signing.NonceStore` on Redis: ``SET NX PX`` is the atomic
    check-and-record, and the key expires with the signature window."""

    def __init__(self, redis: Redis, key_prefix: str = "relayline:") -> None:
        self._redis = redis
        self._prefix = key_prefix

    async def add(self, key_id: str, nonce: str, ttl_s: int) -> bool:
        key = f"{self._prefix}nonce:{key_id}:{nonce}"
        return bool(await self._redis.set(key, b"1", nx=True, px=int(ttl_s * 1000)))
