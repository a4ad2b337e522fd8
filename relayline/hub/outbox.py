"""A client's outbound path: written straight through while the socket keeps up, queued by
reference when it does not, and the slow-client rule past the bound.

Nothing here awaits. Frames are shared ``bytes`` objects (one per event for all subscribers),
so a queued frame costs a reference, not a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from relayline.hub.wire import Wire
from relayline.observability import hub_metrics as m
from relayline.protocol.close_codes import Close

SlowPolicy = Literal["close", "drop"]


class Outbox:
    """Bounded outbound frames of one WebSocket (bytes and count both bounded)."""

    __slots__ = (
        "closed",
        "dropped",
        "max_bytes",
        "max_events",
        "on_dropped",
        "pending",
        "pending_bytes",
        "policy",
        "wire",
    )

    def __init__(
        self,
        wire: Wire,
        *,
        max_bytes: int,
        max_events: int,
        policy: SlowPolicy,
        on_dropped: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.wire = wire
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.policy = policy
        self.on_dropped = on_dropped
        # A list, not a deque: it is drained whole, never popped from the left, and an empty
        # deque costs ~600 bytes per idle socket against a list's 56.
        self.pending: list[tuple[bytes, str | None]] = []
        self.pending_bytes = 0
        self.closed = False
        self.dropped = 0
        wire.on_drain = self._drain

    def push(self, frame: bytes, topic: str | None = None) -> None:
        """Send ``frame`` (a complete WebSocket frame) now, or queue it; never blocks."""
        if self.closed:
            return
        pending = self.pending
        if not pending and not self.wire.paused:
            self.wire.write(frame)
            return
        pending.append((frame, topic))
        self.pending_bytes += len(frame)
        if len(pending) > self.max_events or self.pending_bytes > self.max_bytes:
            self._overflow()

    def _drain(self) -> None:
        if self.closed or not self.pending:
            return
        frames = [frame for frame, _ in self.pending]
        self.pending = []
        self.pending_bytes = 0
        self.wire.writelines(frames)

    def _overflow(self) -> None:
        if self.policy == "drop":
            # Keep control frames (acks, errors); drop the oldest events, then tell the
            # client which topics lost events so it reloads them.
            topics = {topic for _, topic in self.pending if topic is not None}
            kept = [item for item in self.pending if item[1] is None]
            self.dropped += len(self.pending) - len(kept)
            m.EVENTS_DROPPED.inc(len(self.pending) - len(kept))
            self.pending = kept
            self.pending_bytes = sum(len(frame) for frame, _ in kept)
            if self.on_dropped is not None and topics:
                self.on_dropped(topics)
            if len(self.pending) <= self.max_events and self.pending_bytes <= self.max_bytes:
                return
        m.SLOW_CLIENT_CLOSES.inc()
        self.close(Close.SLOW, "too slow")

    def close(self, code: int, reason: str = "") -> None:
        """Drop what is queued and close the socket with ``code``."""
        if self.closed:
            return
        self.closed = True
        self.pending = []
        self.pending_bytes = 0
        self.wire.on_drain = None
        m.CLOSE_CODES.labels(str(code)).inc()
        self.wire.close(code, reason)
