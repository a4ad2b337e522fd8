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

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event | Reset:
        if self._queue is None:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            stopped = self.connection.stopped
            assert stopped is not None
            raise stopped
        if event.type == EventType.EVENTS_MISSED:
            snapshot = await self._load(self.topic)
            return Reset(self.topic, str(event.data.get("reason", "")), snapshot)
        return event

    async def aclose(self) -> None:
        if self._queue is not None:
            self.connection.unlisten(self.topic, self._queue)
            self._queue = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
