"""The bus interface: a per-topic ordered event log with bounded history and live fan-out.

Every backend gives the same guarantees, stated on each method of :class:`Bus`. In short:

- Each topic has one log with an ``epoch`` and a ``seq`` counter. Within one epoch, seqs are
  1, 2, 3, ... with no gap and no repeat, whichever instance published.
- The log keeps at most ``history_max_events`` events and none older than
  ``history_max_age_s`` seconds; :meth:`Bus.history` says when that cut into the range asked for.
- The epoch changes whenever the log's past is lost (new process for the in-memory bus, a Redis
  flush, restart without persistence, or expiry of an idle topic). A client that holds an epoch
  other than the current one must reload its snapshot; it never mixes two logs.

Gap signalling
--------------
A listener normally sees every event of its topic, once, in seq order. When a backend cannot
guarantee that (the Redis bus found the log replaced, or fell behind its trimming, e.g. after a
reconnect), it calls the listener with a synthetic event instead of silently skipping::

    Event(type="events.missed", topic=<topic>, epoch=<current epoch>, seq=N,
          data={"epoch": <current epoch>, "seq": N, "reason": "epoch_changed" | "gap"})

meaning: "events up to ``N`` of ``epoch`` may not have reached you; delivery continues with
``N + 1`` of ``epoch``". Such an event is never stored, never returned by :meth:`Bus.history`,
and its ``frame`` is a valid envelope, so the hub can forward it to clients as is (clients then
reload the snapshot over REST). :data:`EVENTS_MISSED` is reserved: ``publish`` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self

import structlog

from relayline.envelope import Event, make_event
from relayline.errors import ValidationFailed

EVENTS_MISSED: Final = "events.missed"
DEFAULT_HISTORY_MAX_EVENTS: Final = 1000
DEFAULT_HISTORY_MAX_AGE_S: Final = 3600.0
MissedReason = Literal["epoch_changed", "gap", "overflow"]
"""Why ``events.missed`` was sent; ``overflow`` only comes from the hub (a slow client's queue
overflowed), never from a bus."""

_log = structlog.get_logger("relayline.bus")

Listener = Callable[[Event], None]
"""Called synchronously for each event; it must not block (queue the work, don't await it)."""


@dataclass(slots=True)
class History:
    """A page of a topic's log.

    ``events`` are the retained events with ``seq > after_seq``, ascending and contiguous, at
    most ``limit`` of them. ``complete`` is False when the log no longer holds every event after
    ``after_seq`` (trimmed by count or age, or ``after_seq`` is beyond ``last_seq``): the caller
    cannot replay and must resynchronise (send ``events.missed``). ``last_seq`` is the topic's
    position when the page was read; if ``events`` ends before it, page on from the last seq.
    """

    epoch: str
    events: list[Event]
    complete: bool
    last_seq: int


class Subscription:
    """A live registration of one listener on one topic; :meth:`close` it when done.

    Closing is idempotent and takes effect at once: the listener is not called again, even for
    an event being fanned out at that moment.
    """

    __slots__ = ("_bus", "active", "listener", "topic")

    def __init__(self, bus: Bus, topic: str, listener: Listener) -> None:
        self._bus = bus
        self.topic = topic
        self.listener = listener
        self.active = True

    def close(self) -> None:
        """Stop delivery (same as ``bus.unsubscribe(self)``)."""
        self._bus.unsubscribe(self)

    def __repr__(self) -> str:
        return f"Subscription(topic={self.topic!r}, active={self.active})"


class Bus(Protocol):
    """A per-topic ordered event log with bounded history and live fan-out.

    Use as ``async with bus:`` (or call :meth:`start` / :meth:`close`).
    """

    async def start(self) -> None:
        """Connect and start background work. Safe to call once; does not raise if a remote
        backend is unreachable (it keeps retrying, and :meth:`ready` says False meanwhile)."""

    async def close(self) -> None:
        """Stop background work, drop all subscriptions, release connections. Idempotent."""

    async def ready(self) -> bool:
        """Whether the bus can publish and deliver right now (False while disconnected)."""

    async def publish(self, topic: str, type: str, data: dict[str, Any]) -> Event:
        """Append one event and fan it out; returns the stored event.

        Ordering: the event gets the next seq of the topic, atomically with respect to every
        other publisher on any instance. At-most-once: a returned event is stored exactly once;
        the bus never retries internally, so an error (``Unavailable``) means the outcome is
        unknown and a caller's retry may store a second event with its own, new seq (the bus does
        not deduplicate; idempotency belongs to the caller, e.g. ``client_msg_id``).
        ``data`` must be JSON-serializable (else ``ValidationFailed``) and is not copied.
        """
        ...

    async def publish_many(
        self, topic: str, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[Event]:
        """Append ``(type, data)`` items as one atomic batch with contiguous seqs, in order.

        No other publisher's event lands between them; either all are stored or (on error)
        none are known to be. Same duplicate rules as :meth:`publish`. An empty batch is a no-op.
        """
        ...

    async def position(self, topic: str) -> tuple[str, int]:
        """The topic's current ``(epoch, last seq)``; seq is 0 for a log with no event yet.

        Creates the log (and so fixes its epoch) if it does not exist, so repeated calls return
        the same epoch until history is lost.
        """
        ...

    async def history(self, topic: str, after_seq: int, limit: int) -> History:
        """Retained events with ``seq > after_seq``, ascending, at most ``limit`` (see
        :class:`History` for ``complete``). Reading never changes seqs; it may trim events that
        have aged out. Creates the log if missing, like :meth:`position`."""
        ...

    async def subscribe(self, topic: str, listener: Listener) -> Subscription:
        """Register ``listener`` for live events of ``topic`` on this instance.

        Once this returns, every event published afterwards on the topic, by any instance, is
        passed to ``listener`` exactly once and in seq order, or replaced by an
        ``events.missed`` signal (module docstring) when the backend lost track. An event
        published concurrently with the call may or may not be delivered; to merge with
        :meth:`history` subscribe first, then read history, and drop live events whose seq is
        already covered. Listeners of one topic are called in subscription order; one that
        raises is logged and does not affect the others.
        """
        ...

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivery to ``subscription``'s listener at once. Idempotent."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BusContext:
    """Base for implementations: ``async with bus:`` starts it and always closes it."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def check_publish_args(type: str, data: object) -> None:
    """Shared argument checks of ``publish`` (the topic is checked separately)."""
    if type == EVENTS_MISSED:
        raise ValidationFailed(f"{EVENTS_MISSED!r} is reserved for the bus")
    if not isinstance(type, str) or not type:
        raise ValidationFailed("event type must be a non-empty string")
    if not isinstance(data, dict):
        raise ValidationFailed("event data must be a JSON object")


def check_bounds(history_max_events: int, history_max_age_s: float) -> None:
    if history_max_events < 1:
        raise ValueError("history_max_events must be at least 1")
    if history_max_age_s <= 0:
        raise ValueError("history_max_age_s must be positive")


def check_history_args(after_seq: int, limit: int) -> None:
    if after_seq < 0:
        raise ValidationFailed("after_seq must not be negative")
    if limit < 0:
        raise ValidationFailed("limit must not be negative")


def missed_event(topic: str, epoch: str, seq: int, reason: MissedReason) -> Event:
    """The synthetic ``events.missed`` signal described in the module docstring."""
    return make_event(
        topic, EVENTS_MISSED, {"epoch": epoch, "seq": seq, "reason": reason}, seq=seq, epoch=epoch
    )


def fan_out(subscriptions: tuple[Subscription, ...], event: Event) -> None:
    """Call each active listener with ``event``; a listener that raises is logged and skipped.

    ``subscriptions`` is an immutable snapshot, so a listener may (un)subscribe while this runs;
    the ``active`` check honours an unsubscribe made by an earlier listener of the same event.
    """
    for sub in subscriptions:
        if sub.active:
            try:
                sub.listener(event)
            except Exception:
                _log.exception(
                    "bus.listener_failed", topic=event.topic, seq=event.seq, event_id=event.id
                )
