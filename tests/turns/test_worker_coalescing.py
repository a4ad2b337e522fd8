"""A worker that coalesces its answers' texts itself: each ``turn.assigned`` tells it the
relay's window (``coalesce_ms``), and the relay publishes its frames as they come unless they come
closer together than half a window."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from relayline.store.turns import Assignment
from relayline.testing import WsHarness
from relayline.turns.claims import _assigned
from relayline.turns.running import Running
from relayline.turns.worker_link import WorkerLink
from tests.fixtures import FakeWorker, RelayFactory, Tenants, Workers, post, until_event


def _delta(turn_id: str, text: str) -> dict[str, Any]:
    return {"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": text}


WINDOW_MS = 2000


@asynccontextmanager
async def _turn(
    turn_relay: RelayFactory, tenants: Tenants, hello: dict[str, Any]
) -> AsyncIterator[tuple[FakeWorker, WsHarness, str]]:
    """A relay with a 2 s window, a chat watched, a fake worker with this ``hello`` extra and the
    turn it was assigned, after it streamed "a" (seen published) and then, more than half a
    window later, "b"; yields (worker, watcher, turn id)."""
    relay = await turn_relay(delta_coalesce_ms=WINDOW_MS, delta_coalesce_chars=100_000)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    async with (
        WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws,
        FakeWorker(relay, hello=hello) as fake,
    ):
        turn_id = await post(tenant, chat, "hi")
        assigned = await fake.expect("turn.assigned")
        assert assigned["coalesce_ms"] == WINDOW_MS and assigned["coalesce_chars"] == 100_000
        await fake.send(_delta(turn_id, "a"))
        first = await ws.expect("message.delta", 5)
        assert first["data"]["text"] == "a"
        await asyncio.sleep(WINDOW_MS / 1000 * 0.55)
        await fake.send(_delta(turn_id, "b"))
        yield fake, ws, turn_id


async def _answer(fake: FakeWorker, ws: WsHarness, turn_id: str) -> str:
    """End the turn; the stored answer."""
    await fake.send({"type": "turn.done", "turn_id": turn_id, "attempt": 1, "usage": {}})
    done = await until_event(ws, "message.completed", turn_id=turn_id)
    return str(done["data"]["content"])


async def test_the_window_travels_in_turn_assigned_and_a_coalescing_workers_frames_go_at_once(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    async with _turn(turn_relay, tenants, {"coalesces": True}) as (fake, ws, turn_id):
        # Past half a window: not held for the rest of one (the worker kept it a window apart).
        second = await ws.expect("message.delta", 0.8)
        assert (second["data"]["offset"], second["data"]["text"]) == (1, "b")
        # Closer than half a window is still held, as from any worker, and still delivered.
        await fake.send(_delta(turn_id, "c"))
        await ws.assert_silent(0.4, type="message.delta")
        third = await ws.expect("message.delta", 5)
        assert (third["data"]["offset"], third["data"]["text"]) == (2, "c")
        assert await _answer(fake, ws, turn_id) == "abc"


async def test_a_worker_that_does_not_coalesce_has_its_frames_held_by_the_relay(
    turn_relay: RelayFactory, tenants: Tenants
) -> None:
    async with _turn(turn_relay, tenants, {}) as (fake, ws, turn_id):
        await ws.assert_silent(0.5, type="message.delta")  # a whole window from its arrival
        second = await ws.expect("message.delta", 5)
        assert (second["data"]["offset"], second["data"]["text"]) == (1, "b")
        assert await _answer(fake, ws, turn_id) == "ab"


def test_a_completion_is_assigned_no_window() -> None:
    def assignment(request: dict[str, object] | None) -> Assignment:
        return Assignment("t", "c", "n", 1, "m", 1, [], {}, "r", request)

    def running(immediate: bool) -> Running:
        worker = cast(WorkerLink, None)
        return Running("t", "c", "n", 1, "m", worker, 0.0, 0.0, "r", immediate=immediate)

    chat = _assigned(assignment(None), running(False), 60.0, 40, 1024)
    completion = _assigned(assignment({"model": "x"}), running(True), 60.0, 40, 1024)
    assert (chat["coalesce_ms"], chat["coalesce_chars"]) == (40, 1024)
    assert completion["coalesce_ms"] == 0


async def test_the_worker_sends_its_answers_texts_coalesced(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    ms = 40
    relay = await turn_relay(delta_coalesce_ms=ms)
    worker = await workers.start(relay, local_model_delay_s=0.010)
    sent: list[tuple[float, str]] = []
    send_text = worker.connection._send_text

    async def spy(text: str) -> None:
        if '"turn.delta"' in text:
            sent.append((time.monotonic(), json.loads(text)["text"]))
        await send_text(text)

    worker.connection._send_text = spy  # type: ignore[method-assign]
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        turn_id = await post(tenant, chat, "tell me something")
        done = await until_event(ws, "message.completed", 30, turn_id=turn_id)
    content = done["data"]["content"]
    assert "".join(text for _, text in sent) == content
    words = len(content.split())
    # A word every 10 ms in a 40 ms window: several words a frame, frames a window apart.
    assert words >= 20 and len(sent) <= words // 2
    # (The last one went out before the turn's ending, whenever that came.)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(sent[:-1])]
    assert min(gaps) >= ms / 1000 - 0.005
