"""A relayline worker whose model writes the time each word leaves it into the word.

    python bench/stamped_worker.py --relay URL --key-id ID --secret S --capacity 1000 \
        --words 300 --delay 0.033 --barrier 1000 --barrier-timeout 30

It is ``relayline worker``'s own code (relay connection, agent runner, the frames it sends),
only the model is swapped: each word is ``<µs>;`` — ``time.monotonic_ns() // 1000`` when the
model yields it, a clock every process on the machine shares — so a subscriber can tell how
long the word took from the worker to it. ``--barrier N`` holds every answer's first word until
N answers are waiting (or ``--barrier-timeout`` passed), so that N answers stream at once.
``--figures-to PATH`` keeps in PATH (JSON, rewritten every 0.2 s, for the driver to read after
the run) the number of ``turn.delta`` frames sent, and the worker's garbage collections since
the barrier opened: how many of each generation, and the longest; and how long each word
waited in the worker, from the model's yield to its frame handed to the connection (the words of
one frame in eight, counted per whole millisecond: the coalescing's wait and the worker's own
delays). ``--stagger`` starts each answer at a random point of its first word's interval after
the barrier opens: they still stream at once, but their words do not all leave in the same
instant (as independent chats' would not).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from relayline.config import load_settings
from relayline.observability.logging import configure_logging
from relayline.protocol.generation import Generation
from relayline.worker.agent import AgentRunner
from relayline.worker.connection import RelayConnection
from relayline.worker.daemon import run_loop, settle_heap
from relayline.worker.llm.base import ChatMessage, StreamChunk, ToolChoice, ToolSpec, Usage
from relayline.worker.settings import WorkerSettings
from relayline.worker.tools.builtins import builtin_registry


class StampedModel:
    """``words`` stamped words per answer, ``delay`` seconds apart (the first after the
    barrier opens)."""

    def __init__(
        self, words: int, delay: float, barrier: int, barrier_timeout: float, stagger: bool
    ) -> None:
        self.words = words
        self.stagger = stagger
        self.delay = delay
        self.barrier = barrier
        self.barrier_timeout = barrier_timeout
        self.waiting = 0
        self.opened = asyncio.Event()
        if barrier <= 1:
            self.opened.set()

    async def aclose(self) -> None:
        return None

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        model: str,
        options: Generation | None = None,
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[StreamChunk]:
        if not self.opened.is_set():
            self.waiting += 1
            if self.waiting >= self.barrier:
                self.opened.set()
            try:
                async with asyncio.timeout(self.barrier_timeout):
                    await self.opened.wait()
            except TimeoutError:
                self.opened.set()  # go with the answers that came
        loop = asyncio.get_running_loop()
        # Paced on a schedule, not by sleeping a delay after each word's work: a busy loop
        # makes the words late, and a late word carries the time it really left.
        start = loop.time()
        if self.stagger:
            start += random.uniform(-self.delay, 0.0)
        for i in range(self.words):
            delay = start + (i + 1) * self.delay - loop.time()
            await asyncio.sleep(max(delay, 0))
            yield StreamChunk(text=f"{time.monotonic_ns() // 1000};")
        yield StreamChunk(finish_reason="stop")
        yield StreamChunk(usage=Usage(prompt_tokens=1, completion_tokens=self.words))


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--relay", required=True)
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--capacity", type=int, default=1000)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--delay", type=float, default=1 / 30)
    parser.add_argument("--barrier", type=int, default=0)
    parser.add_argument("--barrier-timeout", type=float, default=30.0)
    parser.add_argument("--stagger", action="store_true")
    parser.add_argument("--figures-to", type=Path)
    args = parser.parse_args()
    settings = WorkerSettings(
        relay_url=args.relay,
        worker_key_id=args.key_id,
        worker_secret=args.secret,
        worker_capacity=args.capacity,
        worker_id="stamped",
        llm_probe=False,
    )
    model = StampedModel(args.words, args.delay, args.barrier, args.barrier_timeout, args.stagger)
    runner = AgentRunner(model, builtin_registry([Path.cwd()]), model="local", max_tool_rounds=0)
    connection = RelayConnection(settings, runner, lambda: "closed", None)
    if args.figures_to is not None:
        keep_figures(connection, model, args.figures_to)
    settle_heap()  # as relayline worker does once started
    await connection.run(asyncio.Event())


def keep_figures(connection: RelayConnection, model: StampedModel, path: Path) -> None:
    """Count the ``turn.delta`` frames the connection sends, how long their words waited in the
    worker, and the collections after the barrier opened, kept in ``path``."""
    held = [0] * 1001  # words by whole ms waited in the worker, the last for 1 s or more
    figures: dict[str, Any] = {
        "frames": 0,
        "collections": [0, 0, 0],
        "longest_ms": 0.0,
        "held_ms": held,
    }
    send_text = connection._send_text

    async def counted(text: str) -> None:
        if text.startswith('{"type":"turn.delta"'):
            figures["frames"] += 1
            if not figures["frames"] & 7:  # one frame in 8: the reading costs the worker's CPU
                now = time.monotonic_ns() // 1000
                stamps = text[text.index('"text":"') + 8 : text.rindex(";")]
                for stamp in stamps.split(";"):
                    held[max(0, min((now - int(stamp)) // 1000, 1000))] += 1
        await send_text(text)

    connection._send_text = counted  # type: ignore[method-assign]
    began = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if not model.opened.is_set():
            return
        if phase == "start":
            began[0] = time.perf_counter()
            return
        figures["collections"][info["generation"]] += 1
        figures["longest_ms"] = max(figures["longest_ms"], (time.perf_counter() - began[0]) * 1e3)

    gc.callbacks.append(timed)

    async def keep() -> None:
        part = path.with_suffix(".part")
        while True:
            part.write_text(json.dumps(figures))
            part.replace(path)  # whole, for a reader at any moment
            await asyncio.sleep(0.2)

    task = asyncio.get_running_loop().create_task(keep())
    KEPT.add(task)


KEPT: set[asyncio.Task[None]] = set()


if __name__ == "__main__":
    # As relayline worker logs (RELAYLINE_LOG_LEVEL, the same pipeline and writer thread) and
    # runs.
    logging_runtime = configure_logging(load_settings())
    try:
        run_loop(main())
    finally:
        logging_runtime.close()
