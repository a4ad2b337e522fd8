"""Redis Streams bus: the shared log and cross-instance fan-out for several relay instances.

Per topic: a stream ``{prefix}t:{topic}``, a seq counter ``{prefix}s:{topic}`` and an epoch
``{prefix}e:{topic}``, changed only by the atomic scripts of :mod:`~relayline.bus.redis_scripts`,
so seqs are contiguous across every instance. The epoch (Redis time in µs at log creation) is
also the first half of each entry id, ``<epoch>-<seq>``: reading by seq is direct, and a new
log's ids sort after the old one's, so no reader's cursor hides them. Losing the counter or
epoch (flush, restart without persistence, eviction, idle expiry) starts a new log.

Each instance runs one reader task: XREAD BLOCK over its listeners' streams plus a per-instance
wake stream that ``subscribe`` appends to, so a blocked read takes a new topic within a round
trip. Local listeners get every event through the reader (this instance's own too), so all
instances see one order; the reader sends ``events.missed`` (see :mod:`relayline.bus.base`) on
an epoch change or seq gap, and resyncs every topic after reconnecting with backoff.

A publish that fails with Redis unreachable (or timing out: it may or may not have been stored)
would otherwise be a silent hole, since the seqs after it stay contiguous. So the topic's log is
*retired*: as soon as Redis answers again, a background task replaces it with a new epoch and
appends the topic to a resync stream that every reader also follows; each reader re-checks the
topic and sends ``events.missed``, and clients reload the snapshot. Reads (``position``,
``history``) are retried once on a dead connection: one pooled connection per server restart
fails its first command. Known limit: if Redis's clock went back across a flush without a
restart, readers see the new log only once they reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, cast

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.typing import KeyT, StreamIdT

from relayline.bus.base import (
    DEFAULT_HISTORY_MAX_AGE_S,
    DEFAULT_HISTORY_MAX_EVENTS,
    BusContext,
    History,
    Listener,
    Subscription,
    check_bounds,
    check_history_args,
    check_publish_args,
    fan_out,
    missed_event,
)
from relayline.bus.redis_feed import UNREACHABLE, Entries, Feed, backoff, deliver
from relayline.bus.redis_repair import LogRepair
from relayline.bus.redis_scripts import POSITION, PUBLISH, READ
from relayline.envelope import Event, decode_event, encode_frame_parts, now_ms, validate_topic
from relayline.errors import Unavailable, ValidationFailed
from relayline.ids import new_id
from relayline.tasks import cancel_and_wait

_log = structlog.get_logger(__name__)
_XReadReply = list[tuple[bytes, Entries]] | dict[bytes, Entries] | None


def shared_client(
    url: str,
    *,
    max_connections: int = 64,
    socket_timeout_s: float = 5.0,
    connection_class: type[Any] | None = None,
) -> Redis:
    """The Redis client (one connection pool) a relay process shares between the bus and the
    other shared-state families. A blocking pool makes a burst of commands wait for a
    connection instead of failing; no automatic retry: re-sending a publish whose reply was lost
    would store it twice (reads that may be repeated retry themselves)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout_s,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 0),
        **({"connection_class": connection_class} if connection_class is not None else {}),
    )
    return Redis.from_pool(pool)


class RedisStreamsBus(BusContext):
    """The Redis Streams :class:`~relayline.bus.base.Bus`; see the module docstring."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        history_max_events: int = DEFAULT_HISTORY_MAX_EVENTS,
        history_max_age_s: float = DEFAULT_HISTORY_MAX_AGE_S,
        idle_ttl_s: float = 7 * 86400,
        key_prefix: str = "relayline:",
        block_ms: int = 2000,
        socket_timeout_s: float = 5.0,
        read_batch: int = 500,
        max_connections: int = 32,
        redis: Redis | None = None,
        instance_id: str | None = None,
    ) -> None:
        """``redis``: the process's shared client (see :func:`shared_client`); without one the
        bus opens its own from ``url`` and closes it with itself."""
        check_bounds(history_max_events, history_max_age_s)
        self._max_events = history_max_events
        self._max_age_ms = int(history_max_age_s * 1000)
        # The counter and epoch outlive the stream (whose entries all expire after the max age)
        # so a quiet topic keeps its epoch and clients resume without a reload.
        self._meta_ttl_ms = max(int(idle_ttl_s * 1000), self._max_age_ms + 1000)
        self._stream_ttl_ms = self._max_age_ms + 1000
        self._prefix = key_prefix
        self._block_ms = block_ms
        self._read_batch = read_batch
        self._owns_client = redis is None
        self._redis = (
            redis
            if redis is not None
            else shared_client(
                url, max_connections=max_connections, socket_timeout_s=socket_timeout_s
            )
        )
        self.instance_id = instance_id or new_id()
        # The blocking XREAD has a connection of its own (as a pub/sub subscriber would), so it
        # never holds up a command and is named in CLIENT LIST; everything else shares the pool.
        self._reader = Redis.from_url(
            url,
            socket_timeout=socket_timeout_s + block_ms / 1000,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            client_name=f"relayline-bus-reader-{self.instance_id}",  # visible in CLIENT LIST
        )
        self._publish_script = self._redis.register_script(PUBLISH)
        self._read_script = self._redis.register_script(READ)
        self._position_script = self._redis.register_script(POSITION)
        self._wake_key = f"{key_prefix}w:{self.instance_id}".encode()
        self._wake_id = b"0-0"
        self._resync_key = f"{key_prefix}resync".encode()
        self._resync_id = b"0-0"
        self._repair = LogRepair(
            self._redis, self._keys, self._resync_key.decode(), self._meta_ttl_ms
        )
        self._feeds: dict[str, Feed] = {}
        self._by_key: dict[bytes, Feed] = {}
        self._reader_task: asyncio.Task[None] | None = None
        # Set by the subscribe that sends a wake entry, cleared by the reader right before it
        # builds its next XREAD: a subscribe that finds it set needs no wake of its own,
        # because that XREAD (built after the feed was added) already names its stream, or a
        # wake sent after the last clear makes the reader build a new one that does. So a
        # burst of subscribes costs one wake and one XREAD rebuild, not one per topic.
        self._wake_pending = False
        self._connected = False
        self._closed = False

    def _keys(self, topic: str) -> list[str]:
        return [f"{self._prefix}{kind}:{topic}" for kind in "tse"]

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("event bus is closed")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._check_open()
        try:
            await self._redis.ping()
            self._connected = True
        except UNREACHABLE as exc:
            _log.warning("bus.redis_unreachable", error=str(exc))
        self._ensure_reader()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._connected = False
        self._repair.close()
        # The loop also checks _closed (see relayline.tasks for the cancel it may lose).
        with contextlib.suppress(Exception):
            await cancel_and_wait(self._reader_task)
        for feed in self._feeds.values():
            for sub in feed.subscriptions:
                sub.active = False
        self._feeds.clear()
        self._by_key.clear()
        try:
            with contextlib.suppress(*UNREACHABLE):
                await asyncio.wait_for(self._redis.delete(self._wake_key), 1.0)
        finally:
            await self._reader.aclose()
            if self._owns_client:
                await self._redis.aclose()

    async def ready(self) -> bool:
        if self._closed or not self._connected:
            return False
        try:
            return bool(await self._redis.ping())
        except UNREACHABLE:
            return False

    # -- publishing --------------------------------------------------------------------------

    async def publish(self, topic: str, type: str, data: dict[str, Any]) -> Event:
        return (await self.publish_many(topic, ((type, data),)))[0]

    async def publish_many(
        self, topic: str, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[Event]:
        self._check_open()
        validate_topic(topic)
        if not items:
            return []
        ts = now_ms()
        prepared: list[tuple[str, str, dict[str, Any], bytes, bytes]] = []
        args: list[str | bytes | int] = [
            self._meta_ttl_ms,
            ts - self._max_age_ms,
            self._max_events,
            self._stream_ttl_ms,
        ]
        for type_, data in items:
            check_publish_args(type_, data)
            event_id = new_id()
            head, tail = encode_frame_parts(event_id, topic, type_, ts, data)
            prepared.append((event_id, type_, data, head, tail))
            args += (head, tail, ts)
        try:
            raw_epoch, first = await self._publish_script(keys=self._keys(topic), args=args)
        except UNREACHABLE as exc:
            self._repair.retire(topic)
            raise Unavailable("event bus unavailable") from exc
        except RedisError as exc:
            # Redis answered with an error (READONLY after a failover, OOM, BUSY): the script
            # was refused before it wrote (Redis denies OOM only before a script's first
            # write), so no event is half stored and the log need not be retired. A runtime
            # error in the middle of the script would be different; the script has none to
            # raise on a sound log, and this keeps it simple.
            raise Unavailable("event bus unavailable") from exc
        epoch = raw_epoch.decode()
        return [
            Event(id_, topic, type_, seq, epoch, ts, data, b"%b%d%b" % (head, seq, tail))
            for seq, (id_, type_, data, head, tail) in enumerate(prepared, first)
        ]

    # -- reading -----------------------------------------------------------------------------

    async def position(self, topic: str) -> tuple[str, int]:
        self._check_open()
        validate_topic(topic)
        args = (self._meta_ttl_ms, 0, "", 0)
        epoch, last = await self._read_twice(self._position_script, topic, args)
        return epoch.decode(), int(last)

    async def history(self, topic: str, after_seq: int, limit: int) -> History:
        self._check_open()
        validate_topic(topic)
        check_history_args(after_seq, limit)
        cutoff = now_ms() - self._max_age_ms
        # At least one entry, so that ``complete`` is known even for limit 0.
        args = (self._meta_ttl_ms, cutoff, after_seq, max(limit, 1))
        raw_epoch, last, entries = await self._read_twice(self._read_script, topic, args)
        epoch = raw_epoch.decode()
        if after_seq >= last:
            # Beyond the end can only be a client confused about the epoch: make it resync.
            return History(epoch, [], after_seq == last, last)
        events: list[Event] = []
        first_seq = 0
        for raw_id, fields in entries:
            # fields is the flat [b"t", ts, b"f", frame] the script stored.
            if not events and int(fields[1]) < cutoff:
                continue  # expired but not yet trimmed (trimming is bounded per call)
            try:
                event = decode_event(fields[3], epoch)
            except ValidationFailed:
                # A damaged entry is a hole: stop before it, so the caller resynchronises.
                _log.error("bus.bad_entry", topic=topic, entry_id=raw_id.decode())
                break
            if not events:
                first_seq = int(raw_id.partition(b"-")[2])
            events.append(event)
        return History(epoch, events[:limit], first_seq == after_seq + 1, last)

    async def _read_twice(self, script: AsyncScript, topic: str, args: Sequence[Any]) -> Any:
        """Run a read-only script, once more if the first try found the connection dead."""
        for attempt in (1, 2):
            try:
                return await script(keys=self._keys(topic), args=args)
            except UNREACHABLE as exc:
                if attempt == 2:
                    raise Unavailable("event bus unavailable") from exc
            except RedisError as exc:  # an error reply (READONLY, OOM, BUSY): no retry
                raise Unavailable("event bus unavailable") from exc
        raise AssertionError("unreachable")

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, topic: str, listener: Listener) -> Subscription:
        self._check_open()
        validate_topic(topic)
        feed = self._feeds.get(topic)
        if feed is None:
            epoch, last = await self.position(topic)
            feed = self._feeds.get(topic)  # a concurrent subscribe may have won the race
            if feed is None:
                key = f"{self._prefix}t:{topic}".encode()
                feed = self._feeds[topic] = self._by_key[key] = Feed(topic, key, epoch, last)
                # No await between adding the feed and this check (see _wake_pending).
                if not self._wake_pending:
                    self._wake_pending = True
                    await self._wake_reader()
        sub = Subscription(self, topic, listener)
        feed.subscriptions = (*feed.subscriptions, sub)
        self._ensure_reader()
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.active = False
        feed = self._feeds.get(subscription.topic)
        if feed is None or subscription not in feed.subscriptions:
            return
        feed.subscriptions = tuple(s for s in feed.subscriptions if s is not subscription)
        if not feed.subscriptions:
            # The reader drops the stream from its next XREAD; a reply already in flight for it
            # finds no feed (or a fresh one that skips seqs it has passed).
            del self._feeds[feed.topic]
            del self._by_key[feed.key]

    async def _wake_reader(self) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": 1}, maxlen=1, approximate=False)
                pipe.pexpire(self._wake_key, 600_000)
                await pipe.execute()
        except UNREACHABLE:
            pass  # the reader is disconnected and will resync every feed when it is back
        except RedisError as exc:
            # E.g. READONLY: the reader still takes the new feed on its next round (at most
            # block_ms away), which also clears _wake_pending.
            _log.warning("bus.wake_failed", error=str(exc))

    # -- the reader --------------------------------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._reader_task is None or self._reader_task.done():
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read_loop(), name="relayline-bus-reader"
            )

    async def _read_loop(self) -> None:
        failures = 0
        resync = True
        recheck: set[str] = set()
        while not self._closed:
            try:
                if resync:
                    self._resync_id = await self._last_id(self._resync_key)
                    await self._resync(list(self._feeds.values()))
                    resync = False
                    self._connected = True
                if recheck:
                    await self._resync([f for t in recheck if (f := self._feeds.get(t))])
                    recheck.clear()
                # No await from here to the XREAD call (see _wake_pending).
                self._wake_pending = False
                streams: dict[KeyT, StreamIdT] = {
                    self._wake_key: self._wake_id,
                    self._resync_key: self._resync_id,
                }
                for key, feed in self._by_key.items():
                    streams[key] = feed.last_id
                reply = cast(
                    "_XReadReply",
                    await self._reader.xread(streams, count=self._read_batch, block=self._block_ms),
                )
            except UNREACHABLE as exc:
                if self._connected or failures == 0:
                    _log.warning("bus.redis_disconnected", error=str(exc))
                self._connected = False
                resync = True
                failures += 1
                await asyncio.sleep(backoff(failures))
                continue
            except RedisError:
                _log.exception("bus.reader_failed")
                failures += 1
                await asyncio.sleep(backoff(failures))
                continue
            if not self._connected and failures:
                _log.info("bus.redis_reconnected")
            self._connected = True
            failures = 0
            try:
                recheck = self._dispatch(reply)
            except Exception:
                # Never let one malformed reply end cross-instance delivery for good.
                _log.exception("bus.dispatch_failed")

    def _dispatch(self, reply: _XReadReply) -> set[str]:
        """Deliver a reply's entries; return the topics a resync entry asks to re-check."""
        recheck: set[str] = set()
        # Depending on the protocol version redis-py gives a list of pairs or a dict.
        for key, entries in reply.items() if isinstance(reply, dict) else reply or ():
            if key == self._wake_key:
                self._wake_id = entries[-1][0]
            elif key == self._resync_key:
                self._resync_id = entries[-1][0]
                recheck.update(fields[b"topic"].decode() for _, fields in entries)
            elif (feed := self._by_key.get(key)) is not None:
                deliver(feed, entries)
        return recheck

    async def _last_id(self, key: bytes) -> bytes:
        newest = await self._reader.xrevrange(key, count=1)
        return cast("bytes", newest[0][0]) if newest else b"0-0"

    async def _resync(self, feeds: list[Feed]) -> None:
        """A feed whose log was replaced (or went back) gets the signal now: after a reconnect
        (every feed), or when a resync entry names its topic."""
        for start in range(0, len(feeds), 500):
            chunk = feeds[start : start + 500]
            async with self._redis.pipeline(transaction=False) as pipe:
                for feed in chunk:
                    args = (self._meta_ttl_ms, 0, feed.epoch, feed.seq)
                    await self._position_script(keys=self._keys(feed.topic), args=args, client=pipe)
                results = await pipe.execute()
            for feed, (raw_epoch, last) in zip(chunk, results, strict=True):
                epoch = raw_epoch.decode()
                if epoch != feed.epoch and self._feeds.get(feed.topic) is feed:
                    feed.move_to(epoch, int(last))
                    signal = missed_event(feed.topic, epoch, int(last), "epoch_changed")
                    fan_out(feed.subscriptions, signal)
