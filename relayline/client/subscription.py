"""A topic's events as an async iterator, with ``events.missed`` turned into a :class:`Reset`
that carries the reloaded snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Self

from relayline.client.connection import Connection
from relayline.client.events import Event, Reset, Snapshot
from relayline.protocol.names import EventType

SnapshotLoader = Callable[[str], Awaitable[Snapshot | None]]


class Subscription:
    """Yields the topic's :class:`Event` items in ``seq`` order, each once, across reconnects;
    when the relay no longer held what was missed, a :class:`Reset` with the topic's snapshot
    (for a chat) instead. Raises :class:`ConnectionStopped` when the connection ends for good.
    ``aclose()`` (or leaving an ``async with``) stops listening."""

    def __init__(self, connection: Connection, topic: str, load: SnapshotLoader) -> None:
        self.connection = connection
        self.topic = topic
        self._load = load
        self._queue: asyncio.Queue[Event | None] | None = connection.listen(topic)
        # The Reset being made (its snapshot loading): a caller that stops waiting for it (a
        # timeout, a cancel) gets it on its next call, not a Reset lost with the wait.
        self._reset: asyncio.Task[Reset] | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event | Reset:
        if self._queue is None:
            raise StopAsyncIteration
        if self._reset is None:
            event = await self._queue.get()
            if event is None:
                stopped = self.connection.stopped
                assert stopped is not None
                raise stopped
            if event.type != EventType.EVENTS_MISSED:
                return event
            self._reset = asyncio.ensure_future(self._make_reset(event))
        reset = self._reset
        try:
            return await asyncio.shield(reset)
        finally:
            if reset.done():
                self._reset = None  # handed over, or failed: the next call reads on

    async def _make_reset(self, missed: Event) -> Reset:
        snapshot = await self._load(self.topic)
        return Reset(self.topic, str(missed.data.get("reason", "")), snapshot)

    async def aclose(self) -> None:
        if self._reset is not None:
            self._reset.cancel()
            self._reset = None
        if self._queue is not None:
            self.connection.unlisten(self.topic, self._queue)
            self._queue = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
