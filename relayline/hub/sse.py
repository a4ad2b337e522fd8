"""Server-Sent Events as a hub transport: the bounded sink one stream's events go into (the
slow-client rule is the WebSocket one: past the bound the stream ends), and ``Last-Event-ID``
parsing. The route, ``GET /v1/events``, is :mod:`relayline.api.routes.events`.
"""

from __future__ import annotations

import asyncio
from collections import deque

from relayline.auth import Principal
from relayline.observability import hub_metrics as m


class SseSink:
    """Bounded queue of SSE frames for one stream; ``push`` never blocks."""

    def __init__(self, who: Principal, max_bytes: int, max_events: int) -> None:
        self.who = who
        self.frames: deque[bytes] = deque()
        self.size = 0
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.closed = False
        self.wakeup = asyncio.Event()

    def push(self, frame: bytes, topic: str | None = None) -> None:
        if self.closed:
            return
        self.frames.append(frame)
        self.size += len(frame)
        if len(self.frames) > self.max_events or self.size > self.max_bytes:
            m.SLOW_CLIENT_CLOSES.inc()
            self.closed = True
            self.frames.clear()
        self.wakeup.set()

    def end_by_auth(self, code: int, reason: str) -> None:
        """End the stream now (its credential stopped being good); nothing queued is sent."""
        self.closed = True
        self.wakeup.set()

    def take(self) -> list[bytes]:
        frames = list(self.frames)
        self.frames.clear()
        self.size = 0
        self.wakeup.clear()
        return frames


def parse_last_event_id(value: str | None) -> tuple[str, int] | None:
    if not value or ":" not in value:
        return None
    epoch, _, seq = value.rpartition(":")
    if not epoch or not seq.isdigit() or len(value) > 100:
        return None
    return epoch, int(seq)
