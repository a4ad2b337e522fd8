"""The hub: which local clients watch which topic, and getting each event to them once.

Per topic the hub holds one bus subscription for all its local subscribers. When the bus
delivers an event, the hub frames it once (a WebSocket frame, and an SSE frame if anyone
reads that way) and pushes the same bytes into every subscriber's outbox. Nothing on that path
awaits: a slow subscriber only grows its own bounded queue.

Subscribing with ``epoch`` + ``after_seq`` resumes without loss or duplicate: the subscriber is
registered first with a buffer (live events collect there), history is read, replayed, then
the buffer is flushed skipping every seq already sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from relayline.bus.base import EVENTS_MISSED, Bus, MissedReason, Subscription, missed_event
from relayline.envelope import Event
from relayline.hub.wire import text_frame
from relayline.observability import hub_metrics as m

log = structlog.get_logger("relayline.hub")


class Sink(Protocol):
    """A subscriber's outbound side (WebSocket outbox or SSE stream)."""

    closed: bool

    def push(self, frame: bytes, topic: str | None = None) -> None: ...


def sse_frame(event: Event) -> bytes:
    """The SSE form of an event: ``id: <epoch>:<seq>`` then the envelope as ``data:``."""
    return b"id: %s:%d\ndata: %s\n\n" % (event.epoch.encode(), event.seq, event.frame)


FRAMERS: dict[str, Callable[[Event], bytes]] = {
    "ws": lambda event: text_frame(event.frame),
    "sse": sse_frame,
}


# Labelled metric children resolved once: ``labels()`` takes a lock on every call.
_DELIVERED = {transport: m.EVENTS_DELIVERED.labels(transport) for transport in FRAMERS}
_BYTES = {transport: m.BYTES_SENT.labels(transport) for transport in FRAMERS}


class TopicSub:
    """One subscriber on one topic: the last seq it was given, and its replay buffer."""

    __slots__ = ("buffer", "epoch", "last_seq", "push", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.push = sink.push  # bound once: the fan-out loop calls it per delivery
        self.epoch = ""
        self.last_seq = 0
        self.buffer: list[Event] | None = []


class TopicState:
    __slots__ = ("bus_sub", "subs")

    def __init__(self) -> None:
        self.subs: dict[str, dict[Sink, TopicSub]] = {"ws": {}, "sse": {}}
        self.bus_sub: Subscription | None = None

    def empty(self) -> bool:
        return not self.subs["ws"] and not self.subs["sse"]


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    topic: str
    epoch: str
    seq: int
    replayed: int
    missed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "epoch": self.epoch,
            "seq": self.seq,
            "replayed": self.replayed,
            "missed": self.missed,
        }


def control_frame(kind: str, payload: dict[str, Any]) -> bytes:
    """A per-connection frame (ack, error, pong): encoded for one socket only."""
    body = {"type": kind, **payload}
    return text_frame(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())


class Hub:
    def __init__(self, bus: Bus, *, replay_max_events: int) -> None:
        self.bus = bus
        self.replay_max_events = replay_max_events
        self.topics: dict[str, TopicState] = {}
        self._creating: dict[str, asyncio.Lock] = {}
        # Told of each topic whose subscribers were sent events.missed by the bus (a topic
        # whose snapshot travels on the topic itself, a terminal's, asks for a fresh one).
        self.on_missed: Callable[[str], None] | None = None

    # Bus side

    def _listener(self, topic: str, state: TopicState) -> Callable[[Event], None]:
        def deliver(event: Event) -> None:
            self.dispatch(state, event)

        return deliver

    def dispatch(self, state: TopicState, event: Event) -> None:
        """Hot path: push one event to every local subscriber of its topic."""
        if event.type == EVENTS_MISSED:
            self._dispatch_missed(state, event)
            return
        seq = event.seq
        topic = event.topic
        for transport, subs in state.subs.items():
            if not subs:
                continue
            # Framed once; every subscriber gets the same bytes object.
            frame = FRAMERS[transport](event)
            sent = 0
            for sub in subs.values():
                if sub.buffer is not None:
                    sub.buffer.append(event)
                elif seq > sub.last_seq:
                    sub.last_seq = seq
                    sub.push(frame, topic)
                    sent += 1
            if sent:
                _DELIVERED[transport].inc(sent)
                _BYTES[transport].inc(sent * len(frame))

    def _dispatch_missed(self, state: TopicState, event: Event) -> None:
        if self.on_missed is not None:
            self.on_missed(event.topic)
        for transport, subs in state.subs.items():
            if not subs:
                continue
            frame = FRAMERS[transport](event)  # framed once, as in dispatch
            for sub in subs.values():
                if sub.buffer is not None:
                    sub.buffer.append(event)
                    continue
                sub.last_seq = event.seq
                sub.epoch = event.epoch
                sub.push(frame, event.topic)
                m.EVENTS_MISSED.inc()

    async def _topic(self, topic: str) -> TopicState:
        state = self.topics.get(topic)
        if state is not None:
            return state
        lock = self._creating.setdefault(topic, asyncio.Lock())
        async with lock:
            state = self.topics.get(topic)
            if state is None:
                state = TopicState()
                state.bus_sub = await self.bus.subscribe(topic, self._listener(topic, state))
                self.topics[topic] = state
        self._creating.pop(topic, None)
        return state

    def _release(self, topic: str, state: TopicState) -> None:
        if state.empty() and self.topics.get(topic) is state:
            del self.topics[topic]
            if state.bus_sub is not None:
                state.bus_sub.close()

    # Client side

    async def subscribe(
        self, sink: Sink, transport: str, topic: str, epoch: str | None, after_seq: int | None
    ) -> SubscribeResult:
        """Register ``sink`` on ``topic``; replay after ``after_seq`` when ``epoch`` matches."""
        state = await self._topic(topic)
        subs = state.subs[transport]
        old = subs.get(sink)
        if old is not None and old.buffer is None and epoch is None:
            return SubscribeResult(topic, old.epoch, old.last_seq, 0, False)
        sub = TopicSub(sink)
        subs[sink] = sub
        framer = FRAMERS[transport]
        replayed, missed = 0, False
        try:
            if epoch is not None and after_seq is not None:
                history = await self.bus.history(topic, after_seq, self.replay_max_events + 1)
                current = history.epoch
                fits = (
                    history.complete
                    and len(history.events) <= self.replay_max_events
                    and (not history.events or history.events[-1].seq >= history.last_seq)
                )
                if history.epoch == epoch and fits:
                    for event in history.events:
                        sink.push(framer(event), topic)
                    replayed = len(history.events)
                    sub.last_seq = history.events[-1].seq if history.events else after_seq
                    m.REPLAYS.inc()
                    m.REPLAYED_EVENTS.inc(replayed)
                else:
                    missed = True
                    sub.last_seq = history.last_seq
                    reason: MissedReason = "epoch_changed" if history.epoch != epoch else "gap"
                    sink.push(framer(missed_event(topic, current, history.last_seq, reason)), topic)
                    m.EVENTS_MISSED.inc()
            else:
                current, sub.last_seq = await self.bus.position(topic)
        except BaseException:
            subs.pop(sink, None)
            self._release(topic, state)
            raise
        sub.epoch = current
        buffered, sub.buffer = sub.buffer or [], None
        for event in buffered:
            if event.type == EVENTS_MISSED or event.seq > sub.last_seq:
                sub.last_seq = event.seq
                sub.epoch = event.epoch
                sink.push(framer(event), topic)
        return SubscribeResult(topic, current, sub.last_seq, replayed, missed)

    def unsubscribe(self, sink: Sink, transport: str, topic: str) -> bool:
        state = self.topics.get(topic)
        if state is None or state.subs[transport].pop(sink, None) is None:
            return False
        self._release(topic, state)
        return True

    def drop(self, sink: Sink, transport: str, topics: set[str]) -> None:
        """Forget a closed subscriber everywhere."""
        for topic in list(topics):
            self.unsubscribe(sink, transport, topic)

    def position_of(self, sink: Sink, transport: str, topic: str) -> tuple[str, int]:
        """The ``(epoch, seq)`` a subscriber was last brought to on ``topic``."""
        state = self.topics.get(topic)
        sub = state.subs[transport].get(sink) if state else None
        return (sub.epoch, sub.last_seq) if sub else ("", 0)

    def subscriber_count(self) -> int:
        return sum(len(s.subs["ws"]) + len(s.subs["sse"]) for s in self.topics.values())
