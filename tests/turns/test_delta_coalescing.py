"""How an answer's deltas become ``message.delta`` events: at most one per
``delta_coalesce_ms``, a delta after a quiet spell at once, a waiting one with the next that
finds the window passed or a window after it came, none lost or reordered."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any, cast

from relayline.turns.context import TurnContext
from relayline.turns.running import Running
from relayline.turns.streaming import DeltaStream
from relayline.turns.worker_link import WorkerLink


class Events:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.times: list[float] = []
        self.arrived = asyncio.Event()

    async def message_delta(
        self, chat_id: str, message_id: str, turn_id: str, offset: int, text: str
    ) -> None:
        self.sent.append((offset, text))
        self.times.append(asyncio.get_running_loop().time())
        self.arrived.set()


class Ctx:
    def __init__(self, shared: bool = False, ms: int = 40, chars: int = 1024) -> None:
        self.settings = SimpleNamespace(delta_coalesce_ms=ms, delta_coalesce_chars=chars)
        self.coordinator = SimpleNamespace(shared=shared)
        self.events = Events()
        self.spawned: list[asyncio.Task[None]] = []

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self.spawned.append(asyncio.get_running_loop().create_task(work))


def running() -> Running:
    return Running(
        turn_id="t",
        chat_id="c",
        tenant_id="n",
        attempt=1,
        message_id="m",
        worker=cast(WorkerLink, None),
        lease_expires=0.0,
        started=0.0,
        correlation_id="r",
    )


async def test_a_delta_after_a_quiet_spell_leaves_at_once_and_a_quick_one_waits() -> None:
    ctx = Ctx()
    stream = DeltaStream(cast(TurnContext, ctx))
    run = running()
    await stream.on_delta(run, "first ")  # the first text of an answer: at once
    assert ctx.events.sent == [(0, "first ")]
    await stream.on_delta(run, "quick ")  # within the window of the last event: waits
    assert ctx.events.sent == [(0, "first ")] and run.flush_handle is not None
    loop = asyncio.get_running_loop()
    assert 0 < run.flush_handle.when() - loop.time() <= 0.040
    handle = run.flush_handle
    await stream.on_delta(run, "and ")  # joins the waiting text, no second timer
    assert run.flush_handle is handle
    ctx.events.arrived.clear()
    async with asyncio.timeout(5):
        await ctx.events.arrived.wait()
    assert ctx.events.sent == [(0, "first "), (6, "quick and ")]
    assert run.flush_handle is None
    # A quiet spell longer than the window: the next delta is not held back.
    run.last_flush -= 1.0
    await stream.on_delta(run, "slow ")
    assert ctx.events.sent[-1] == (16, "slow ") and run.flush_handle is None
    assert run.published_text == "first quick and slow "


async def test_a_waiting_text_waits_a_window_from_its_own_arrival() -> None:
    ctx = Ctx()
    stream = DeltaStream(cast(TurnContext, ctx))
    run = running()
    await stream.on_delta(run, "first ")
    run.last_flush -= 0.030  # the first event went out 30 ms ago: 10 ms of its window left
    await stream.on_delta(run, "quick ")
    assert run.flush_handle is not None
    # Not the 10 ms left of the last event's window: a whole one, for the next text to join.
    assert run.flush_handle.when() - asyncio.get_running_loop().time() > 0.035
    stream.cancel_timer(run)


async def test_a_waiting_text_leaves_with_the_next_one_once_the_window_has_passed() -> None:
    ctx = Ctx()
    stream = DeltaStream(cast(TurnContext, ctx))
    run = running()
    await stream.on_delta(run, "first ")
    await stream.on_delta(run, "quick ")  # waits, its timer set
    assert ctx.events.sent == [(0, "first ")] and run.flush_handle is not None
    run.last_flush -= 1.0  # the window has passed before its timer fired
    await stream.on_delta(run, "next ")
    # Out together, at once, and the timer dropped (it would publish nothing, a window late).
    assert ctx.events.sent == [(0, "first "), (6, "quick next ")]
    assert run.flush_handle is None and run.pending == []


async def test_a_steady_stream_is_merged_and_its_events_stay_a_window_apart() -> None:
    ms = 50
    ctx = Ctx(ms=ms)
    stream = DeltaStream(cast(TurnContext, ctx))
    run = running()
    words = [f"w{i} " for i in range(24)]
    for word in words:  # one every fifth of a window (a late wake-up still well within it)
        await stream.on_delta(run, word)
        await asyncio.sleep(ms / 5 / 1000)
    async with asyncio.timeout(5):
        while run.pending:
            await asyncio.sleep(ms / 1000)
    assert "".join(text for _, text in ctx.events.sent) == "".join(words)
    assert run.published_text == "".join(words)
    # Merged: every event after the first carries two words or more (texts less than a window
    # apart never leave alone).
    assert len(ctx.events.sent) <= 1 + len(words) // 2
    gaps = [b - a for a, b in zip(ctx.events.times, ctx.events.times[1:], strict=False)]
    assert min(gaps) >= ms / 1000 - 0.002


async def test_a_coalescing_workers_text_waits_only_for_the_rest_of_half_a_window() -> None:
    ctx = Ctx()  # a 40 ms window
    stream = DeltaStream(cast(TurnContext, ctx))
    run = running()
    run.worker_coalesces = True
    await stream.on_delta(run, "first ")
    run.last_flush -= 0.025  # half a window (20 ms) has passed: out at once
    await stream.on_delta(run, "second ")
    assert ctx.events.sent == [(0, "first "), (6, "second ")] and run.flush_handle is None
    run.last_flush -= 0.015  # 15 ms ago: held for the 5 ms left of the half, not for 20 or 40
    await stream.on_delta(run, "third ")
    assert run.flush_handle is not None
    assert run.flush_handle.when() - asyncio.get_running_loop().time() <= 0.006
    ctx.events.arrived.clear()
    async with asyncio.timeout(5):
        await ctx.events.arrived.wait()
    assert ctx.events.sent[-1] == (13, "third ")


async def test_size_still_forces_a_flush_within_the_window() -> None:
    ctx = Ctx(chars=10)
    stream = DeltaStream(cast(TurnContext, ctx))
    run = running()
    await stream.on_delta(run, "a")
    await stream.on_delta(run, "b" * 5)
    assert ctx.events.sent == [(0, "a")]
    await stream.on_delta(run, "c" * 5)  # ten characters pending
    assert ctx.events.sent == [(0, "a"), (1, "b" * 5 + "c" * 5)]
    assert run.flush_handle is None


async def test_with_a_shared_coordinator_the_flush_runs_off_the_frame_loop() -> None:
    ctx = Ctx(shared=True)
    ctx.coordinator = SimpleNamespace(shared=True, append_partial=_append_partial)
    stream = DeltaStream(cast(TurnContext, ctx))
    run = running()
    await stream.on_delta(run, "first ")
    run.last_flush -= 1.0
    await stream.on_delta(run, "later ")
    # Not awaited here: spawned, counted as sent, so the next delta waits for the window.
    assert ctx.events.sent == [(0, "first ")] and len(ctx.spawned) == 1
    await stream.on_delta(run, "more ")
    assert len(ctx.spawned) == 1 and run.flush_handle is not None
    await asyncio.gather(*ctx.spawned)
    assert ctx.events.sent == [(0, "first "), (6, "later more ")]
    stream.cancel_timer(run)


async def _append_partial(*args: object) -> None:
    await asyncio.sleep(0)
