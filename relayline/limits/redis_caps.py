"""Connection caps shared by every instance through Redis.

Each instance keeps its own counts in a hash (``caps:inst:<id>``) and announces itself in a
sorted set of live instances, scored by the time its announcement expires. A cap check sums
the counts of the live instances in one Lua script, so check-and-increment is atomic across
instances; an instance that dies stops renewing and its holds vanish when its entry expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.asyncio import Redis

from relayline.ids import new_id
from relayline.tasks import cancel_and_wait

log = structlog.get_logger("relayline.limits")

_ACQUIRE = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local field = ARGV[3]
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local total = 0
for _, inst in ipairs(live) do
  total = total + tonumber(redis.call('HGET', ARGV[4] .. inst, field) or '0')
end
if total >= limit then return 0 end
redis.call('HINCRBY', KEYS[2], field, 1)
return 1
"""

_RELEASE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"""

_COUNT = """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local total = 0
for _, inst in ipairs(live) do
  total = total + tonumber(redis.call('HGET', ARGV[3] .. inst, ARGV[2]) or '0')
end
return total
"""


class RedisConnectionCapStore:
    """:class:`~relayline.limits.connection_caps.ConnectionCapStore` shared by instances."""

    def __init__(
        self,
        redis: Redis,
        key_prefix: str = "relayline:",
        ttl_s: float = 30.0,
        instance_id: str | None = None,
    ) -> None:
        self._redis = redis
        self._instance = instance_id or new_id()
        self._live = f"{key_prefix}caps:live"
        self._hash_prefix = f"{key_prefix}caps:inst:"
        self._own = self._hash_prefix + self._instance
        self._ttl_s = ttl_s
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._count = redis.register_script(_COUNT)
        self._renewer: asyncio.Task[None] | None = None
        self._dropped = False  # stopping: close() deletes the holds, releases are not sent

    async def start(self) -> None:
        await self._announce()
        self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def close(self) -> None:
        await cancel_and_wait(self._renewer)
        with contextlib.suppress(Exception):
            await self._redis.zrem(self._live, self._instance)
            await self._redis.delete(self._own)

    async def _announce(self) -> None:
        expires = time.time() + self._ttl_s
        await self._redis.zadd(self._live, {self._instance: expires})
        await self._redis.pexpire(self._own, int(self._ttl_s * 2000))

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            with contextlib.suppress(Exception):  # Redis away: holds expire, caps fail open
                await self._announce()
                await self._redis.zremrangebyscore(self._live, "-inf", time.time() - self._ttl_s)

    async def acquire(self, kind: str, key: str, limit: int) -> bool:
        field = f"{kind}|{key}"
        try:
            taken = await self._acquire(
                keys=[self._live, self._own], args=[time.time(), limit, field, self._hash_prefix]
            )
        except Exception:
            # Caps protect memory, not correctness: with Redis away, serve (fail open) and
            # let /health/ready report the outage.
            log.warning("connection_caps_unavailable")
            return True
        return bool(taken)

    def drop_all(self) -> None:
        self._dropped = True

    async def release(self, kind: str, key: str) -> None:
        if self._dropped:
            return  # the instance's hash goes whole at close()
        with contextlib.suppress(Exception):
            await self._release(keys=[self._own], args=[f"{kind}|{key}"])

    async def count(self, kind: str, key: str) -> int:
        total = await self._count(
            keys=[self._live], args=[time.time(), f"{kind}|{key}", self._hash_prefix]
        )
        return int(total)
