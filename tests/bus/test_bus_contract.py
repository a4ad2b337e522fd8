"""The bus contract, run against every backend (memory, and Redis when a server is reachable)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from relayline.bus import EVENTS_MISSED, Bus, create_bus
from relayline.bus import memory as memory_bus
from relayline.bus.memory import MemoryBus
from relayline.bus.redis_streams import RedisStreamsBus
from relayline.envelope import Event, decode_event
from relayline.errors import Unavailable, ValidationFailed

REDIS_URL = os.environ.get("RELAYLINE_TEST_REDIS", "redis://127.0.0.1:6379/15")
TOPIC = "chat:contract"


@dataclass
class Backend:
    name: str
    make: Callable[..., Bus]
    # Lose the log's state the way the backend can (Redis: the keys vanish, as after FLUSHDB).
    flush: Callable[[], Awaitable[None]]
    redis: Redis | None = None
    prefix: str = ""
    buses: list[Bus] = field(default_factory=list)

    async def new(self, **opts: Any) -> Bus:
        bus = self.make(**opts)
        self.buses.append(bus)
        await bus.start()
        return bus


async def _delete_prefix(client: Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":

        async def no_flush() -> None:
            raise AssertionError("the memory bus loses its log only with its process")

        b = Backend("memory", lambda **opts: MemoryBus(**opts), no_flush)
        yield b
        for bus in b.buses:
            await bus.close()
        return

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        await client.ping()
    except (OSError, Exception) as exc:  # any failure here means "no server to test against"
        await client.aclose()
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}: {exc}")
    prefix = f"rltest:{uuid.uuid4().hex}:"

    def make(**opts: Any) -> Bus:
        return RedisStreamsBus(REDIS_URL, key_prefix=prefix, **opts)

    b = Backend("redis", make, lambda: _delete_prefix(client, prefix), client, prefix)
    try:
        yield b
    finally:
        for bus in b.buses:
            await bus.close()
        await _delete_prefix(client, prefix)
        await client.aclose()


async def peer(backend: Backend, bus: Bus, **opts: Any) -> Bus:
    """A second instance over the same log (Redis), or the same bus (memory has one process)."""
    return await backend.new(**opts) if backend.name == "redis" else bus


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


async def test_seqs_are_contiguous_and_ordered(backend: Backend) -> None:
    bus = await backend.new()
    events = [await bus.publish(TOPIC, "custom.n", {"i": i}) for i in range(20)]
    assert seqs(events) == list(range(1, 21))
    assert len({e.epoch for e in events}) == 1
    assert len({e.id for e in events}) == 20
    assert await bus.position(TOPIC) == (events[0].epoch, 20)
    other = await bus.publish("chat:other", "custom.n", {})
    assert other.seq == 1  # seqs are per topic


async def test_publish_many_is_ordered_contiguous_and_atomic(backend: Backend) -> None:
    bus = await backend.new()
    second = await peer(backend, bus)
    await bus.publish(TOPIC, "custom.a", {})

    async def batch(b: Bus, tag: str) -> list[Event]:
        return await b.publish_many(TOPIC, [("custom.b", {"tag": tag, "i": i}) for i in range(50)])

    results = await asyncio.gather(*(batch(b, f"{n}") for n, b in enumerate([bus, second] * 3)))
    for events in results:
        assert [e.data["i"] for e in events] == list(range(50))
        assert seqs(events) == list(range(events[0].seq, events[0].seq + 50))
    assert sorted(s for events in results for s in seqs(events)) == list(range(2, 302))
    assert await bus.publish_many(TOPIC, []) == []

    with pytest.raises(ValidationFailed):
        await bus.publish_many(TOPIC, [("custom.ok", {}), ("custom.bad", {"x": object()})])
    assert (await bus.position(TOPIC))[1] == 301  # nothing of the bad batch was stored


async def test_concurrent_publishers_get_unique_contiguous_seqs(backend: Backend) -> None:
    bus = await backend.new()
    buses = [bus, await peer(backend, bus), await peer(backend, bus)]
    events = await asyncio.gather(
        *(buses[i % 3].publish(TOPIC, "custom.c", {"i": i}) for i in range(300))
    )
    assert sorted(seqs(events)) == list(range(1, 301))
    history = await bus.history(TOPIC, 0, 1000)
    assert seqs(history.events) == list(range(1, 301))
    by_seq = {e.seq: e for e in events}
    assert all(by_seq[e.seq].frame == e.frame for e in history.events)


async def test_history_after_seq_and_limit(backend: Backend) -> None:
    bus = await backend.new()
    published = await bus.publish_many(TOPIC, [("custom.h", {"i": i}) for i in range(10)])
    epoch = published[0].epoch

    page = await bus.history(TOPIC, 3, 4)
    assert (page.epoch, seqs(page.events), page.complete, page.last_seq) == (
        epoch,
        [4, 5, 6, 7],
        True,
        10,
    )
    assert [e.frame for e in page.events] == [e.frame for e in published[3:7]]
    assert [e.data for e in page.events] == [e.data for e in published[3:7]]
    assert all(e.epoch == epoch for e in page.events)
    assert seqs((await bus.history(TOPIC, 0, 100)).events) == list(range(1, 11))
    assert seqs((await bus.history(TOPIC, 9, 100)).events) == [10]

    caught_up = await bus.history(TOPIC, 10, 100)
    assert (caught_up.events, caught_up.complete) == ([], True)
    empty_page = await bus.history(TOPIC, 2, 0)
    assert (empty_page.events, empty_page.complete) == ([], True)
    beyond = await bus.history(TOPIC, 11, 100)  # a seq this log never had: must resync
    assert (beyond.events, beyond.complete) == ([], False)

    fresh = await bus.history("chat:fresh", 0, 10)
    assert (fresh.events, fresh.complete, fresh.last_seq) == ([], True, 0)
    assert fresh.epoch == (await bus.position("chat:fresh"))[0]
    with pytest.raises(ValidationFailed):
        await bus.history(TOPIC, -1, 10)


async def test_count_trimming_reports_incomplete_history(backend: Backend) -> None:
    bus = await backend.new(history_max_events=5)
    for i in range(12):
        await bus.publish(TOPIC, "custom.t", {"i": i})
    history = await bus.history(TOPIC, 0, 100)
    assert seqs(history.events) == [8, 9, 10, 11, 12]
    assert history.complete is False
    assert (await bus.history(TOPIC, 6, 100)).complete is False
    tail = await bus.history(TOPIC, 7, 100)
    assert (seqs(tail.events), tail.complete) == ([8, 9, 10, 11, 12], True)
    assert (await bus.history(TOPIC, 7, 0)).complete is True


async def test_age_trimming(backend: Backend) -> None:
    bus = await backend.new(history_max_age_s=0.3)
    await bus.publish_many(TOPIC, [("custom.old", {}), ("custom.old", {})])
    await asyncio.sleep(0.4)
    expired = await bus.history(TOPIC, 0, 10)
    assert (expired.events, expired.complete, expired.last_seq) == ([], False, 2)
    await bus.publish(TOPIC, "custom.new", {})
    history = await bus.history(TOPIC, 0, 10)
    assert (seqs(history.events), history.complete) == ([3], False)
    assert (await bus.history(TOPIC, 2, 10)).complete is True
    assert (await bus.position(TOPIC))[1] == 3  # seqs never restart because of age


async def test_epoch_is_stable_until_history_is_lost(backend: Backend) -> None:
    bus = await backend.new()
    epoch, seq = await bus.position(TOPIC)
    assert seq == 0 and epoch
    assert (await bus.position(TOPIC))[0] == epoch  # an empty log keeps its epoch too
    event = await bus.publish(TOPIC, "custom.e", {})
    assert event.epoch == epoch
    assert (await bus.history(TOPIC, 0, 10)).epoch == epoch

    if backend.name == "memory":
        other = await backend.new()  # a new process: the old log is gone
        assert (await other.position(TOPIC))[0] != epoch
        return
    other = await backend.new()
    assert await other.position(TOPIC) == (epoch, 1)  # instances share the log
    await backend.flush()
    new_epoch, new_seq = await bus.position(TOPIC)
    assert (new_epoch != epoch, new_seq) == (True, 0)
    assert (await other.publish(TOPIC, "custom.e", {})).epoch == new_epoch
    old_client = await bus.history(TOPIC, 1, 10)
    assert old_client.epoch != epoch


async def test_listeners_get_every_event_once_in_order(backend: Backend) -> None:
    receiver = await backend.new()
    sender = await peer(backend, receiver)
    got_a: list[Event] = []
    got_b: list[Event] = []
    await receiver.subscribe(TOPIC, got_a.append)
    await receiver.subscribe(TOPIC, got_b.append)
    await sender.publish(TOPIC, "custom.one", {"i": 0})
    batch = await sender.publish_many(TOPIC, [("custom.many", {"i": i}) for i in range(1, 100)])
    await eventually(lambda: len(got_a) >= 100 and len(got_b) >= 100)
    await asyncio.sleep(0.05)  # nothing more may arrive
    assert seqs(got_a) == seqs(got_b) == list(range(1, 101))
    assert [e.data["i"] for e in got_a] == list(range(100))
    assert all(e.epoch == batch[0].epoch for e in got_a)
    # One frame object per event, shared by every listener of this instance.
    assert all(a.frame is b.frame for a, b in zip(got_a, got_b, strict=True))
    assert all(a is b for a, b in zip(got_a, got_b, strict=True))
    for event, sent in zip(got_a[1:], batch, strict=True):
        assert event.frame == sent.frame
        assert json.loads(event.frame) == {
            "v": 1,
            "id": sent.id,
            "topic": TOPIC,
            "type": "custom.many",
            "seq": sent.seq,
            "ts": sent.ts,
            "data": sent.data,
        }


async def test_only_events_after_subscribe_are_delivered(backend: Backend) -> None:
    bus = await backend.new()
    await bus.publish_many(TOPIC, [("custom.before", {})] * 3)
    got: list[Event] = []
    await bus.subscribe(TOPIC, got.append)
    await bus.publish(TOPIC, "custom.after", {})
    await eventually(lambda: len(got) == 1)
    await asyncio.sleep(0.05)
    assert seqs(got) == [4]


async def test_unsubscribe_stops_delivery(backend: Backend) -> None:
    bus = await backend.new()
    sender = await peer(backend, bus)
    kept: list[Event] = []
    dropped: list[Event] = []
    await bus.subscribe(TOPIC, kept.append)
    sub = await bus.subscribe(TOPIC, dropped.append)
    await sender.publish(TOPIC, "custom.u", {})
    await eventually(lambda: len(dropped) == 1)
    sub.close()
    sub.close()  # idempotent
    bus.unsubscribe(sub)
    await sender.publish(TOPIC, "custom.u", {})
    await eventually(lambda: len(kept) == 2)
    await asyncio.sleep(0.05)
    assert seqs(dropped) == [1] and not sub.active


async def test_unsubscribe_during_fan_out_takes_effect_at_once(backend: Backend) -> None:
    bus = await backend.new()
    second_got: list[Event] = []
    second = None

    def first(event: Event) -> None:
        assert second is not None
        second.close()

    await bus.subscribe(TOPIC, first)
    second = await bus.subscribe(TOPIC, second_got.append)
    third_got: list[Event] = []
    await bus.subscribe(TOPIC, third_got.append)
    await bus.publish(TOPIC, "custom.x", {})
    await eventually(lambda: len(third_got) == 1)
    assert second_got == []


async def test_a_failing_listener_does_not_stop_the_others(backend: Backend) -> None:
    bus = await backend.new()

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    got: list[Event] = []
    await bus.subscribe(TOPIC, broken)
    await bus.subscribe(TOPIC, got.append)
    await bus.publish(TOPIC, "custom.f", {})
    await bus.publish(TOPIC, "custom.f", {})
    await eventually(lambda: len(got) == 2)
    assert await bus.ready()


async def test_reserved_type_and_bad_input_are_refused(backend: Backend) -> None:
    bus = await backend.new()
    with pytest.raises(ValidationFailed):
        await bus.publish(TOPIC, EVENTS_MISSED, {})
    with pytest.raises(ValidationFailed):
        await bus.publish("chat:bad topic", "custom.x", {})
    with pytest.raises(ValidationFailed):
        await bus.publish(TOPIC, "", {})
    with pytest.raises(ValidationFailed):
        await bus.publish(TOPIC, "custom.x", {"x": float("inf")})
    with pytest.raises(ValidationFailed):
        await bus.subscribe("nope", lambda e: None)
    assert (await bus.position(TOPIC))[1] == 0


async def test_close_stops_delivery_and_refuses_use(backend: Backend) -> None:
    bus = await backend.new()
    sub = await bus.subscribe(TOPIC, lambda e: None)
    assert await bus.ready()
    await bus.close()
    await bus.close()  # idempotent
    assert not sub.active
    assert not await bus.ready()
    with pytest.raises(Unavailable):
        await bus.publish(TOPIC, "custom.x", {})


async def test_a_new_subscription_is_live_within_milliseconds(backend: Backend) -> None:
    bus = await backend.new()
    sender = await peer(backend, bus)
    await bus.subscribe("chat:first", lambda e: None)
    await asyncio.sleep(0.1)  # let the Redis reader block on the first topic alone
    got: list[float] = []
    await bus.subscribe(TOPIC, lambda e: got.append(time.monotonic()))
    started = time.monotonic()
    await sender.publish(TOPIC, "custom.l", {})
    await eventually(lambda: bool(got), timeout=1.0)
    assert got[0] - started < 0.25  # far below the reader's blocking timeout


def test_create_bus_selects_by_scheme() -> None:
    assert isinstance(create_bus(None), MemoryBus)
    assert isinstance(create_bus("memory://", history_max_events=3), MemoryBus)
    assert isinstance(create_bus("redis://127.0.0.1:6379/15"), RedisStreamsBus)
    assert isinstance(create_bus("rediss://example.invalid:6380/0"), RedisStreamsBus)
    with pytest.raises(ValueError, match=r"kafka://.*memory://, redis://, rediss://"):
        create_bus("kafka://broker:9092")
    with pytest.raises(ValueError, match="unsupported bus URL"):
        create_bus("127.0.0.1:6379")


# -- Redis only: what a shared, remote log adds --------------------------------------------------


redis_only = pytest.mark.parametrize(
    "backend", [pytest.param("redis", marks=pytest.mark.redis)], indirect=True
)


@redis_only
async def test_a_replaced_log_is_signalled_before_its_events(backend: Backend) -> None:
    sender, receiver = await backend.new(), await backend.new()
    got: list[Event] = []
    await receiver.subscribe(TOPIC, got.append)
    old = await sender.publish(TOPIC, "custom.r", {})
    await eventually(lambda: len(got) == 1)
    await backend.flush()
    new = await sender.publish(TOPIC, "custom.r", {})
    await eventually(lambda: len(got) == 3)
    missed, event = got[1], got[2]
    assert new.epoch != old.epoch and new.seq == 1
    assert (missed.type, missed.epoch, missed.seq) == (EVENTS_MISSED, new.epoch, 0)
    assert missed.data == {"epoch": new.epoch, "seq": 0, "reason": "epoch_changed"}
    assert json.loads(missed.frame)["type"] == EVENTS_MISSED
    assert (event.epoch, event.seq, event.frame) == (new.epoch, 1, new.frame)


@redis_only
async def test_a_seq_gap_is_signalled(backend: Backend) -> None:
    assert backend.redis is not None
    sender, receiver = await backend.new(), await backend.new()
    got: list[Event] = []
    await receiver.subscribe(TOPIC, got.append)
    await sender.publish(TOPIC, "custom.g", {})
    # As if seqs 2..9 were published and trimmed before this reader could read them.
    await backend.redis.set(f"{backend.prefix}s:{TOPIC}", 9)
    await sender.publish(TOPIC, "custom.g", {})
    await eventually(lambda: len(got) == 3)
    assert [(e.type, e.seq) for e in got] == [("custom.g", 1), (EVENTS_MISSED, 9), ("custom.g", 10)]
    assert got[1].data["reason"] == "gap"


@redis_only
async def test_reader_reconnects_and_resyncs(backend: Backend) -> None:
    client = backend.redis
    assert client is not None
    sender = await backend.new()
    receiver = await backend.new()
    assert isinstance(receiver, RedisStreamsBus)
    got: list[Event] = []
    await receiver.subscribe(TOPIC, got.append)
    await sender.publish(TOPIC, "custom.k", {})
    await eventually(lambda: len(got) == 1)

    await backend.flush()  # the log is lost while the reader is away
    await _kill_reader(backend, receiver)
    await eventually(lambda: len(got) == 2)
    epoch, seq = await sender.position(TOPIC)
    assert (got[1].type, got[1].epoch, got[1].seq) == (EVENTS_MISSED, epoch, seq)
    for _ in range(500):
        if await receiver.ready():
            break
        await asyncio.sleep(0.01)
    assert await receiver.ready()
    await sender.publish(TOPIC, "custom.k", {})
    await eventually(lambda: len(got) == 3)
    assert (got[2].epoch, got[2].seq) == (epoch, 1)


async def _kill_reader(backend: Backend, bus: Bus) -> None:
    assert backend.redis is not None and isinstance(bus, RedisStreamsBus)
    name = f"relayline-bus-reader-{bus.instance_id}"
    clients = await backend.redis.client_list()
    assert await backend.redis.client_kill_filter(
        _id=next(c["id"] for c in clients if c["name"] == name)
    )


@redis_only
async def test_a_log_that_went_backwards_gets_a_new_epoch(backend: Backend) -> None:
    client = backend.redis
    assert client is not None
    sender, receiver = await backend.new(), await backend.new()
    got: list[Event] = []
    await receiver.subscribe(TOPIC, got.append)
    published = await sender.publish_many(TOPIC, [("custom.b", {})] * 5)
    await eventually(lambda: len(got) == 5)
    # A crash lost the last writes: Redis comes back with seqs 4 and 5 gone.
    await client.set(f"{backend.prefix}s:{TOPIC}", 3)
    await client.xdel(
        f"{backend.prefix}t:{TOPIC}", f"{published[0].epoch}-4", f"{published[0].epoch}-5"
    )
    await _kill_reader(backend, receiver)
    await eventually(lambda: len(got) == 6)
    epoch, seq = await sender.position(TOPIC)
    assert epoch != published[0].epoch  # seqs 4 and 5 must never be reused in the old epoch
    assert (got[5].type, got[5].epoch, got[5].seq) == (EVENTS_MISSED, epoch, seq)


@redis_only
async def test_a_failed_publish_retires_the_log_and_every_reader_is_told(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish whose outcome is unknown (the connection died under it) must not leave a
    silent hole: the log gets a new epoch and readers on every instance send events.missed
    at once, without waiting for the topic's next event."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    sender, receiver = await backend.new(), await backend.new()
    assert isinstance(sender, RedisStreamsBus)
    got: list[Event] = []
    await receiver.subscribe(TOPIC, got.append)
    await receiver.subscribe("admin", lambda e: None)  # an untouched topic stays as it was
    before = await sender.publish(TOPIC, "custom.f", {})
    admin = await sender.publish("admin", "custom.f", {})
    await eventually(lambda: len(got) == 1)

    real = sender._publish_script

    async def dies_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(sender, "_publish_script", real)
        raise RedisConnectionError("Connection closed by server.")

    monkeypatch.setattr(sender, "_publish_script", dies_once)
    with pytest.raises(Unavailable):
        await sender.publish(TOPIC, "custom.f", {"lost": True})
    await eventually(lambda: len(got) == 2)
    epoch, seq = await receiver.position(TOPIC)
    assert epoch != before.epoch
    assert (got[1].type, got[1].epoch, got[1].seq) == (EVENTS_MISSED, epoch, seq)
    assert got[1].data["reason"] == "epoch_changed"
    after = await sender.publish(TOPIC, "custom.f", {})
    await eventually(lambda: len(got) == 3)
    assert (got[2].id, got[2].epoch, got[2].seq) == (after.id, epoch, seq + 1)
    assert (await receiver.position("admin")) == (admin.epoch, admin.seq)


@redis_only
async def test_an_error_reply_from_redis_is_unavailable(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READONLY (after a failover), OOM, BUSY: Redis answers, but with an error. Callers get
    Unavailable like for an unreachable Redis, not a raw redis-py exception."""
    from redis.exceptions import ResponseError

    bus = await backend.new()
    assert isinstance(bus, RedisStreamsBus)
    before = await bus.publish(TOPIC, "custom.r", {})

    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise ResponseError("READONLY You can't write against a read only replica.")

    for script in ("_publish_script", "_read_script", "_position_script"):
        monkeypatch.setattr(bus, script, refused)
    with pytest.raises(Unavailable):
        await bus.publish(TOPIC, "custom.r", {})
    with pytest.raises(Unavailable):
        await bus.publish_many(TOPIC, [("custom.r", {}), ("custom.r", {})])
    with pytest.raises(Unavailable):
        await bus.position(TOPIC)
    with pytest.raises(Unavailable):
        await bus.history(TOPIC, 0, 10)
    with pytest.raises(Unavailable):
        await bus.subscribe("chat:new", lambda e: None)
    monkeypatch.undo()
    # Nothing was stored and the log was not retired: same epoch, next seq.
    after = await bus.publish(TOPIC, "custom.r", {})
    assert (after.epoch, after.seq) == (before.epoch, before.seq + 1)


@redis_only
async def test_a_burst_of_subscribes_wakes_the_reader_once(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waking the blocked reader costs a round trip and an XREAD naming every stream: while a
    wake is pending, further new topics ride on it."""
    bus = await backend.new()
    assert isinstance(bus, RedisStreamsBus)
    got: dict[str, list[Event]] = {}
    await bus.subscribe("chat:first", got.setdefault("chat:first", []).append)
    await bus.publish("chat:first", "custom.w", {})
    await eventually(lambda: bool(got["chat:first"]))
    await asyncio.sleep(0.05)  # the reader is blocked again, its wake handled

    real = bus._wake_reader
    wakes = 0

    async def counted() -> None:  # counts, but leaves the reader blocked
        nonlocal wakes
        wakes += 1

    monkeypatch.setattr(bus, "_wake_reader", counted)
    topics = [f"chat:burst{i}" for i in range(10)]
    for topic in topics:
        await bus.subscribe(topic, got.setdefault(topic, []).append)
    assert wakes == 1
    await real()  # the one wake covers every topic subscribed meanwhile
    for topic in topics:
        await bus.publish(topic, "custom.w", {})
    await eventually(lambda: all(got[t] for t in topics), timeout=1.0)


@redis_only
async def test_concurrent_subscribes_are_all_live_at_once(backend: Backend) -> None:
    """Whatever the interleaving of subscribes and reader rounds, no new topic waits for the
    reader's blocking timeout (made long here so that it cannot hide a missed wake)."""
    bus = await backend.new(block_ms=10_000)
    sender = await peer(backend, bus)
    await bus.subscribe("chat:first", lambda e: None)
    await asyncio.sleep(0.05)
    for round_ in range(3):
        got: dict[str, list[Event]] = {}
        topics = [f"chat:c{round_}x{i}" for i in range(30)]

        async def sub(topic: str, got: dict[str, list[Event]] = got) -> None:
            await bus.subscribe(topic, got.setdefault(topic, []).append)
            await sender.publish(topic, "custom.c", {})

        await asyncio.gather(*(sub(t) for t in topics))
        await eventually(lambda got=got, topics=topics: all(got[t] for t in topics), timeout=2.0)


async def test_unreachable_redis_is_not_ready_and_refuses_work() -> None:
    bus = RedisStreamsBus("redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    await bus.start()  # does not raise: the reader keeps retrying in the background
    try:
        assert not await bus.ready()
        with pytest.raises(Unavailable):
            await bus.publish(TOPIC, "custom.x", {})
        with pytest.raises(Unavailable):
            await bus.history(TOPIC, 0, 10)
        with pytest.raises(Unavailable):
            await bus.subscribe(TOPIC, lambda e: None)
    finally:
        await bus.close()


@redis_only
async def test_close_leaves_no_instance_keys(backend: Backend) -> None:
    assert backend.redis is not None
    bus = await backend.new()
    await bus.subscribe(TOPIC, lambda e: None)
    await bus.subscribe("admin", lambda e: None)  # subscribing writes the wake stream
    await bus.close()
    keys = [k async for k in backend.redis.scan_iter(match=f"{backend.prefix}w:*")]
    assert keys == []


# -- memory only: bounded memory across many topics ---------------------------------------------


async def test_memory_bus_evicts_least_recently_used_topics() -> None:
    async with MemoryBus(max_topics=3) as bus:
        await bus.subscribe("chat:kept", lambda e: None)
        first = await bus.publish("chat:a", "custom.m", {})
        await bus.publish("chat:b", "custom.m", {})
        await bus.publish("chat:a", "custom.m", {})  # a is now more recent than b
        await bus.publish("chat:c", "custom.m", {})  # over the bound: b goes, not kept nor a
        assert await bus.position("chat:a") == (first.epoch, 2)
        assert (await bus.position("chat:b"))[1] == 0  # back as a new, empty log
        assert (await bus.history("chat:b", 1, 10)).complete is False
        kept = await bus.publish("chat:kept", "custom.m", {})
        assert kept.seq == 1  # a subscribed log is never evicted (it was created first)


async def test_memory_bus_sweeps_idle_logs_without_subscribers() -> None:
    async with MemoryBus(history_max_age_s=0.05, sweep_interval_s=0.01) as bus:
        got: list[Event] = []
        await bus.subscribe("chat:watched", got.append)
        idle = await bus.publish("chat:idle", "custom.s", {})
        watched = await bus.publish("chat:watched", "custom.s", {})
        await asyncio.sleep(0.1)
        await bus.publish("chat:busy", "custom.s", {})  # triggers the sweep
        assert (await bus.position("chat:idle"))[0] != idle.epoch
        assert await bus.position("chat:watched") == (watched.epoch, 1)


async def test_memory_history_is_nothing_for_the_garbage_collector_to_walk() -> None:
    """The retained events of every running answer are not objects a full collection visits:
    none of them is an Event once published, and a read of the history rebuilds each exactly."""

    def live_events() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, Event))

    async with MemoryBus(history_max_events=2000) as bus:
        before = live_events()
        sent = []
        for i in range(1000):
            event = await bus.publish(TOPIC, "custom.g", {"i": i, "text": f"word {i} "})
            sent.append((event.id, event.seq, event.ts, event.epoch, event.frame))
        del event
        assert live_events() == before  # the log holds no Event (it held 1,000)
        page = await bus.history(TOPIC, 0, 2000)
        assert [(e.id, e.seq, e.ts, e.epoch, e.frame) for e in page.events] == sent
        assert [e.data for e in page.events] == [
            {"i": i, "text": f"word {i} "} for i in range(1000)
        ]
        assert {(e.topic, e.type) for e in page.events} == {(TOPIC, "custom.g")}


async def test_memory_history_decodes_an_event_once_for_many_readers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Subscribers of one topic resuming together: each retained event is decoded once, and
    every reader gets the same events."""
    decoded: list[bytes] = []

    def counting(frame: bytes, epoch: str) -> Event:
        decoded.append(frame)
        return decode_event(frame, epoch)

    monkeypatch.setattr(memory_bus, "decode_event", counting)
    async with MemoryBus(history_max_events=6000) as bus:
        sent = await bus.publish_many(TOPIC, [("custom.r", {"i": i}) for i in range(50)])
        pages = [await bus.history(TOPIC, 0, 100) for _ in range(20)]
        assert all(page.events == sent for page in pages)
        assert len(decoded) == 50
        later = await bus.history(TOPIC, 40, 100)  # a later start reads the same decoded events
        assert later.events == sent[40:] and len(decoded) == 50
        # The kept decodings are bounded: past the bound they are dropped, not grown.
        many = await bus.publish_many("chat:many", [("custom.r", {}) for _ in range(6000)])
        for after in range(0, 6000, 1000):
            page = await bus.history("chat:many", after, 1000)
            assert page.events == many[after : after + 1000]
            assert 0 < len(bus._decoded) <= memory_bus._DECODED_MAX
        assert len(decoded) == 50 + 6000


async def test_async_with_closes_even_after_an_error(backend: Backend) -> None:
    bus = backend.make()
    with pytest.raises(RuntimeError, match="boom"):
        async with bus:
            sub = await bus.subscribe(TOPIC, lambda e: None)
            raise RuntimeError("boom")
    assert not sub.active
    assert not await bus.ready()
