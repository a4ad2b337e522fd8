"""In-process bus: one process is the whole system (the default, and ``relayline demo``).

Each topic log is a deque bounded by count and trimmed by age lazily (on publish and on read).
A retained event is kept as its frame with its seq and ts, ``(seq, ts, frame)``, not as an
:class:`Event`: the garbage collector stops tracking a tuple of atomic values at its first
collection, so a full collection does not walk the history of every running answer, and the
event's ``data`` dict and id are not kept besides the frame that holds them. 1,000 answers of 300
words are 300,000 retained events: as Events they took 224 MiB and ~95 ms of every full
collection, as frames 116 MiB and 10 to 25 ms (``bench/bus_history.py``). A read of the history
decodes the frames it returns (:func:`decode_event`, as the Redis bus does its entries); the
last :data:`_DECODED_MAX` events decoded are kept, so that the subscribers of one topic resuming
together (a broadcast topic after a network blip) have each event decoded once, not once each.
Fan-out is synchronous inside ``publish``: listeners run in subscription order, in seq order,
before ``publish`` returns, so delivery is exactly-once and never needs a gap signal.

Memory stays bounded across many topics: logs are kept in least-recently-used order; a log with
no subscriber that has not been touched for ``history_max_age_s`` (so holds nothing replayable)
is dropped by a periodic sweep, and beyond ``max_topics`` the least recently used logs without
subscribers are dropped at once. A dropped log comes back with a new epoch, which is what tells a
client that the history it knew is gone. Logs with subscribers are never dropped.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from itertools import islice
from typing import Any

import structlog

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
)
from relayline.envelope import Event, decode_event, make_event, now_ms, validate_topic
from relayline.errors import Unavailable

_log = structlog.get_logger(__name__)

# How many LRU entries one sweep inspects: keeps each sweep O(1) on the publish path.
_SWEEP_BATCH = 64
# Decoded history events kept for the next reader (see the module docstring), over all topics.
_DECODED_MAX = 4096


def new_epoch() -> str:
    """A random epoch (72 bits, URL-safe): a new process never reuses an old one."""
    return secrets.token_urlsafe(9)


# A retained event: its seq, its ts (for trimming by age) and its frame (all the rest).
_Entry = tuple[int, int, bytes]


class _TopicLog:
    __slots__ = ("epoch", "events", "last_seq", "subscriptions", "touched")

    def __init__(self, max_events: int) -> None:
        self.epoch = new_epoch()
        self.events: deque[_Entry] = deque(maxlen=max_events)
        self.last_seq = 0
        self.subscriptions: tuple[Subscription, ...] = ()
        self.touched = time.monotonic()


class MemoryBus(BusContext):
    """The in-process :class:`~relayline.bus.base.Bus`; see the module docstring."""

    def __init__(
        self,
        *,
        history_max_events: int = DEFAULT_HISTORY_MAX_EVENTS,
        history_max_age_s: float = DEFAULT_HISTORY_MAX_AGE_S,
        max_topics: int = 100_000,
        sweep_interval_s: float = 10.0,
    ) -> None:
        check_bounds(history_max_events, history_max_age_s)
        if max_topics < 1:
            raise ValueError("max_topics must be at least 1")
        self._max_events = history_max_events
        self._max_age_s = history_max_age_s
        self._max_age_ms = int(history_max_age_s * 1000)
        self._max_topics = max_topics
        self._sweep_interval_s = sweep_interval_s
        self._next_sweep = time.monotonic() + sweep_interval_s
        self._logs: OrderedDict[str, _TopicLog] = OrderedDict()
        self._closed = False
        # frame → the Event decoded from it; a frame holds its event's unique id, so it names
        # one event of one log.
        self._decoded: dict[bytes, Event] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to connect; present for the :class:`Bus` interface."""

    async def close(self) -> None:
        """Deactivate every subscription and drop all logs. Idempotent."""
        self._closed = True
        for log in self._logs.values():
            for sub in log.subscriptions:
                sub.active = False
        self._logs.clear()
        self._decoded.clear()

    async def ready(self) -> bool:
        return not self._closed

    # -- publishing --------------------------------------------------------------------------

    async def publish(self, topic: str, type: str, data: dict[str, Any]) -> Event:
        log = self._open(topic)
        check_publish_args(type, data)
        now = now_ms()
        self._trim_age(log, now)
        seq = log.last_seq + 1
        event = make_event(topic, type, data, seq=seq, epoch=log.epoch, ts=now)
        log.last_seq = seq
        log.events.append((seq, now, event.frame))
        fan_out(log.subscriptions, event)
        return event

    async def publish_many(
        self, topic: str, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[Event]:
        log = self._open(topic)
        for type_, data in items:
            check_publish_args(type_, data)
        now = now_ms()
        self._trim_age(log, now)
        # Encode everything before storing anything: a bad item leaves the log untouched.
        first = log.last_seq + 1
        events = [
            make_event(topic, type_, data, seq=first + i, epoch=log.epoch, ts=now)
            for i, (type_, data) in enumerate(items)
        ]
        if events:
            log.last_seq = events[-1].seq
            log.events.extend((e.seq, e.ts, e.frame) for e in events)
            subscriptions = log.subscriptions
            for event in events:
                fan_out(subscriptions, event)
        return events

    # -- reading -----------------------------------------------------------------------------

    async def position(self, topic: str) -> tuple[str, int]:
        log = self._open(topic)
        return log.epoch, log.last_seq

    async def history(self, topic: str, after_seq: int, limit: int) -> History:
        check_history_args(after_seq, limit)
        log = self._open(topic)
        self._trim_age(log, now_ms())
        events = log.events
        last = log.last_seq
        if after_seq >= last:
            # Beyond the end can only be a client confused about the epoch: make it resync.
            return History(log.epoch, [], after_seq == last, last)
        first = events[0][0] if events else last + 1
        start = max(after_seq + 1, first) - first
        epoch = log.epoch
        page = [self._decode(frame, epoch) for _, _, frame in islice(events, start, start + limit)]
        return History(epoch, page, first <= after_seq + 1, last)

    def _decode(self, frame: bytes, epoch: str) -> Event:
        event = self._decoded.get(frame)
        if event is None:
            event = decode_event(frame, epoch)
            if len(self._decoded) >= _DECODED_MAX:
                self._decoded.clear()
            self._decoded[frame] = event
        return event

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, topic: str, listener: Listener) -> Subscription:
        log = self._open(topic)
        sub = Subscription(self, topic, listener)
        log.subscriptions = (*log.subscriptions, sub)
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.active = False
        log = self._logs.get(subscription.topic)
        if log is not None and subscription in log.subscriptions:
            log.subscriptions = tuple(s for s in log.subscriptions if s is not subscription)
            # The idle clock starts now: a log just left by its last subscriber is not stale.
            log.touched = time.monotonic()
            self._logs.move_to_end(subscription.topic)

    # -- internals ---------------------------------------------------------------------------

    def _open(self, topic: str) -> _TopicLog:
        """The topic's log, created if missing, marked most recently used."""
        if self._closed:
            raise Unavailable("event bus is closed")
        now = time.monotonic()
        log = self._logs.get(topic)
        if log is None:
            validate_topic(topic)
            log = self._logs[topic] = _TopicLog(self._max_events)
            if len(self._logs) > self._max_topics:
                self._evict_over_capacity(keep=topic)
        else:
            self._logs.move_to_end(topic)
        log.touched = now
        if now >= self._next_sweep:
            self._sweep(now)
        return log

    def _trim_age(self, log: _TopicLog, now: int) -> None:
        events = log.events
        cutoff = now - self._max_age_ms
        while events and events[0][1] < cutoff:
            events.popleft()

    def _sweep(self, now: float) -> None:
        """Drop logs idle for longer than the max age with no subscriber (oldest first)."""
        self._next_sweep = now + self._sweep_interval_s
        idle_before = now - self._max_age_s
        for topic in list(islice(self._logs, _SWEEP_BATCH)):
            log = self._logs[topic]
            if log.touched > idle_before:
                break  # LRU order: everything after this was touched more recently
            if log.subscriptions:
                self._logs.move_to_end(topic)
            else:
                del self._logs[topic]

    def _evict_over_capacity(self, keep: str) -> None:
        excess = len(self._logs) - self._max_topics
        for topic in list(islice(self._logs, excess + _SWEEP_BATCH)):
            if excess <= 0:
                return
            if topic != keep and not self._logs[topic].subscriptions:
                del self._logs[topic]
                excess -= 1
        if excess > 0:
            _log.warning("bus.max_topics_exceeded", topics=len(self._logs), limit=self._max_topics)
