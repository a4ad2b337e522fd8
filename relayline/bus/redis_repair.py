"""Retiring topic logs after a publish whose outcome is unknown.

A publish that failed with Redis unreachable or timing out may or may not have been stored; if
it was not, the seqs after it stay contiguous and no reader could tell that an event is
missing. :class:`LogRepair` closes that hole: each such topic is remembered, and as soon as
Redis answers, its log is replaced by a new epoch and the topic appended to the bus's resync
stream (the ``RETIRE`` script, atomically). Every instance's reader follows that stream,
re-checks the topic and sends ``events.missed`` to its subscribers, who reload the snapshot.

Guarantee: every failed publish is followed, once Redis is reachable, by at least one retire of
its topic that happens after the failure; retiring is idempotent for readers (a spare one
costs a snapshot reload, never an event).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from relayline.bus.redis_feed import UNREACHABLE, backoff
from relayline.bus.redis_scripts import RETIRE

_log = structlog.get_logger("relayline.bus.redis_streams")
LOGS_RETIRED = Counter(
    "relayline_bus_logs_retired_total",
    "Topic logs replaced by a new epoch after a publish whose outcome was unknown",
)
BATCH = 500


class LogRepair:
    def __init__(
        self, redis: Redis, keys: Callable[[str], list[str]], resync_key: str, meta_ttl_ms: int
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._resync_key = resync_key
        self._meta_ttl_ms = meta_ttl_ms
        self._script = redis.register_script(RETIRE)
        # topic -> publishes failed so far; a topic leaves only if none failed during its retire
        self._damaged: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Topics whose log still has to be retired."""
        return len(self._damaged)

    def retire(self, topic: str) -> None:
        """Remember that a publish to ``topic`` failed; its log is retired in the background."""
        self._damaged[topic] = self._damaged.get(topic, 0) + 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="relayline-bus-repair"
            )

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        failures = 0
        while self._damaged:
            batch = dict(list(self._damaged.items())[:BATCH])
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for topic in batch:
                        keys = [*self._keys(topic), self._resync_key]
                        args = (self._meta_ttl_ms, 0, topic)
                        await self._script(keys=keys, args=args, client=pipe)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                failures += 1
                if not isinstance(exc, UNREACHABLE):
                    _log.exception("bus.retire_failed")
                await asyncio.sleep(backoff(failures))
                continue
            failures = 0
            for topic, count in batch.items():
                if self._damaged.get(topic) == count:
                    del self._damaged[topic]
            LOGS_RETIRED.inc(len(batch))
            _log.warning("bus.logs_retired", topics=len(batch), reason="publish_failed")
