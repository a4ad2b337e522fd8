"""A subscription's Reset survives a caller that stops waiting for it while the snapshot loads."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from relayline.client.connection import Connection
from relayline.client.events import Event, Reset, Snapshot
from relayline.client.subscription import Subscription
from relayline.protocol.names import EventType

TOPIC = "chat:01HZZZZZZZZZZZZZZZZZZZZZZZ"


class FakeConnection:
    """What a Subscription uses of a Connection: one listener queue per topic."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.stopped: BaseException | None = None

    def listen(self, topic: str) -> asyncio.Queue[Event | None]:
        return self.queue

    def unlisten(self, topic: str, queue: Any) -> None:
        pass


def event(type_: str, seq: int, **data: Any) -> Event:
    return Event(id=f"e{seq}", topic=TOPIC, type=type_, seq=seq, ts=0, data=data)


async def test_a_reset_whose_wait_timed_out_comes_on_the_next_call() -> None:
    connection = FakeConnection()
    loads: list[str] = []
    release = asyncio.Event()
    snapshot = cast(Snapshot, object())

    async def load(topic: str) -> Snapshot | None:
        loads.append(topic)
        await release.wait()  # a slow GET of the chat
        return snapshot

    sub = Subscription(cast(Connection, connection), TOPIC, load)
    connection.queue.put_nowait(event(EventType.EVENTS_MISSED, 0, reason="epoch_changed"))
    connection.queue.put_nowait(event("message.completed", 7, content="two"))

    try:
        await asyncio.wait_for(sub.__anext__(), 0.05)
    except TimeoutError:
        pass
    else:
        raise AssertionError("the snapshot was still loading")
    release.set()
    reset = await asyncio.wait_for(sub.__anext__(), 5)
    assert isinstance(reset, Reset)
    assert (reset.topic, reset.reason, reset.snapshot) == (TOPIC, "epoch_changed", snapshot)
    after = await asyncio.wait_for(sub.__anext__(), 5)
    assert isinstance(after, Event) and after.seq == 7
    assert loads == [TOPIC]  # loaded once, not again for the second wait
    await sub.aclose()


async def test_closing_while_a_snapshot_loads_stops_the_load() -> None:
    connection = FakeConnection()
    started = asyncio.Event()

    async def load(topic: str) -> Snapshot | None:
        started.set()
        await asyncio.Event().wait()
        return None

    sub = Subscription(cast(Connection, connection), TOPIC, load)
    connection.queue.put_nowait(event(EventType.EVENTS_MISSED, 0))
    waiting = asyncio.ensure_future(sub.__anext__())
    await started.wait()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    pending = sub._reset
    assert pending is not None and not pending.done()
    await sub.aclose()
    await asyncio.gather(pending, return_exceptions=True)
    assert pending.cancelled()
