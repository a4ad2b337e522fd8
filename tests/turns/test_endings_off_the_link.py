"""A worker's ``turn.done`` or ``turn.failed`` releases the attempt at once, and the answer is
stored and announced by a task: the worker's frames for its other turns do not wait for that
store write (at 1,000 answers ending together they waited behind every one of them). The
attempt's later frames are refused as soon as it ended, the chat's next turn still waits for
the stored outcome, and a relay stopping waits for endings in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from relayline.store.models import Turn
from relayline.testing import RelayServer, WsHarness
from relayline.turns import outcomes
from tests.fixtures import FakeWorker, RelayFactory, Tenants, dispatcher_of, post, until_event


class HeldStore:
    """``store.finish`` as the outcomes use it, held until :meth:`let_go`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached = asyncio.Event()
        self._go = asyncio.Event()
        original: Callable[..., Awaitable[Any]] = outcomes.store.finish

        async def finish(*args: Any, **kwargs: Any) -> Any:
            self.reached.set()
            await self._go.wait()
            return await original(*args, **kwargs)

        monkeypatch.setattr(outcomes.store, "finish", finish)

    def let_go(self) -> None:
        self._go.set()


async def state_of(relay: RelayServer, turn_id: str) -> str:
    async with relay.app.http.state.relay.db.read() as session:
        turn = await session.get(Turn, turn_id)
    assert turn is not None
    return turn.state


@pytest.mark.parametrize("ending", ["turn.done", "turn.failed"])
async def test_other_turns_stream_while_an_ending_is_stored(
    turn_relay: RelayFactory, tenants: Tenants, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    first, second = await tenant.chat(), await tenant.chat()
    topics = [f"chat:{first}", f"chat:{second}"]
    async with (
        WsHarness(relay, token=tenant.key, topics=topics) as ws,
        FakeWorker(relay, "two-turns", capacity=2) as worker,
    ):
        ended = await post(tenant, first, "one")
        one = await worker.expect("turn.assigned")
        going_on = await post(tenant, second, "two")
        two = await worker.expect("turn.assigned")
        assert (one["turn_id"], two["turn_id"]) == (ended, going_on)
        held = HeldStore(monkeypatch)
        await worker.send({"type": "turn.delta", "turn_id": ended, "attempt": 1, "text": "a"})
        await worker.send({"type": ending, "turn_id": ended, "attempt": 1, "category": "internal"})
        await asyncio.wait_for(held.reached.wait(), 5)
        # The store write of the first turn's ending is held; the same worker's next frames
        # are read meanwhile: the second turn streams, the first one's frames are refused.
        await worker.send({"type": "turn.delta", "turn_id": going_on, "attempt": 1, "text": "b"})
        delta = await until_event(ws, "message.delta", 5, turn_id=going_on)
        assert delta["data"]["text"] == "b"
        await worker.send({"type": "turn.delta", "turn_id": ended, "attempt": 1, "text": "late"})
        assert (await worker.expect("error", 5))["code"] == "stale_attempt"
        # The ended chat's next turn waits for the stored outcome.
        after = await post(tenant, first, "three")
        await asyncio.sleep(0.2)
        assert not [f for f in worker.seen if f.get("turn_id") == after]
        assert await state_of(relay, ended) == "running"
        held.let_go()
        outcome = "message.completed" if ending == "turn.done" else "turn.failed"
        await until_event(ws, outcome, 5, turn_id=ended)
        assert await state_of(relay, ended) == ("completed" if ending == "turn.done" else "failed")
        assert (await worker.expect("turn.assigned"))["turn_id"] == after
    assert not ws.events(topics[0], "turn.retrying")
    text = [e["data"]["text"] for e in ws.events(topics[0], "message.delta")]
    assert text == ["a"]


async def test_a_stopping_relay_waits_for_an_ending_in_flight(
    turn_relay: RelayFactory, tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    async with FakeWorker(relay, "ending") as worker:
        turn_id = await post(tenant, chat, "one")
        await worker.expect("turn.assigned")
        held = HeldStore(monkeypatch)
        await worker.send({"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "a"})
        await worker.send({"type": "turn.done", "turn_id": turn_id, "attempt": 1})
        await asyncio.wait_for(held.reached.wait(), 5)
    stopping = asyncio.create_task(dispatcher_of(relay).stop())  # as the relay's shutdown does
    await asyncio.sleep(0.2)
    assert not stopping.done()  # the ending's store write is still held
    held.let_go()
    await asyncio.wait_for(stopping, 5)
    assert await state_of(relay, turn_id) == "completed"


async def test_an_ending_that_fails_is_logged_and_frees_the_chat(
    turn_relay: RelayFactory,
    tenants: Tenants,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    failing = asyncio.Event()

    async def finish(*args: Any, **kwargs: Any) -> Any:
        failing.set()
        raise RuntimeError("the store is away")

    async with FakeWorker(relay, "ending") as worker:
        turn_id = await post(tenant, chat, "one")
        await worker.expect("turn.assigned")
        monkeypatch.setattr(outcomes.store, "finish", finish)
        with capture_logs() as logs:
            await worker.send({"type": "turn.done", "turn_id": turn_id, "attempt": 1})
            await asyncio.wait_for(failing.wait(), 5)
            await dispatcher_of(relay).outcomes.settle(5.0)
            await asyncio.sleep(0)  # the task's done callback
        # The worker stays connected, and the chat is not held by the ended attempt here:
        # the store keeps the turn running until its lease lapses and a sweep retries it.
        assert dispatcher_of(relay).turns.by_chat.get(chat) is None
        assert worker.ws is not None and worker.ws.close_code is None
    assert await state_of(relay, turn_id) == "running"
    (failed,) = [e for e in logs if e["event"] == "turn_ending_failed"]
    assert failed["error"] == "RuntimeError: the store is away"
