"""One worker link's queued frames do not hold the relay: after a slice of work the link's loop
lets the others in (a terminal flooding output on one worker left another worker's chat
deltas waiting behind its whole inbox)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from relayline.turns import worker_gateway
from relayline.turns.worker_gateway import WorkerGateway
from relayline.turns.worker_link import WorkerLink


class Link:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    def send(self, frame: dict[str, Any]) -> None:
        self.seen.append(self.name)


def queued(frames: int) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A link's receive whose frames are all waiting already (it never suspends)."""
    messages = iter(
        [{"type": "websocket.receive", "text": '{"type": "no.such.frame"}'}] * frames
        + [{"type": "websocket.disconnect"}]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    return receive


def gateway() -> WorkerGateway:
    gw = WorkerGateway.__new__(WorkerGateway)
    gw.dispatcher = cast(Any, None)
    gw._claimed = {}
    gw._raw = ()
    gw.observers = []
    return gw


async def serve_two(gw: WorkerGateway, seen: list[str]) -> None:
    busy, other = Link("busy", seen), Link("other", seen)
    await asyncio.gather(
        gw._serve(cast(WorkerLink, busy), queued(300)),  # type: ignore[arg-type]
        gw._serve(cast(WorkerLink, other), queued(1)),  # type: ignore[arg-type]
    )


async def test_a_link_with_a_full_inbox_lets_another_link_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_gateway, "FRAME_SLICE_S", 0.0)  # a slice ends after each frame
    seen: list[str] = []
    await serve_two(gateway(), seen)
    assert len(seen) == 301
    assert seen.index("other") < 5  # not after the busy link's 300 frames


async def test_within_a_slice_a_link_keeps_the_loop() -> None:
    seen: list[str] = []
    gw = gateway()
    original = worker_gateway.FRAME_SLICE_S
    try:
        worker_gateway.FRAME_SLICE_S = 60.0  # one slice holds every frame
        await serve_two(gw, seen)
    finally:
        worker_gateway.FRAME_SLICE_S = original
    assert seen == ["busy"] * 300 + ["other"]
