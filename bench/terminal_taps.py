"""Where a keystroke's echo spends its time through relay + worker (``bench/terminal.py
--taps``): a worker that reaches the relay through a recording TCP tap in the driver, which
notes when each ``term.input`` frame leaves the relay for the worker and when the worker's
``term.output`` with the echo comes back. With the driver's own send and receive times that
splits a round trip in three:

- *client → relay → worker link*: the driver's ``term.input`` op through the relay (checks,
  routing) to the worker's socket;
- *worker, PTY and program*: the worker writes the PTY, the program echoes, the worker reads,
  decodes and sends ``term.output``;
- *relay → client*: the relay publishes the output on the topic and writes it to the page's
  socket.

The tap adds two loopback hops (one each way), so the tapped total is a little above the
untapped figures; the split is what this series is for.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from servers import HOST
from ttft import Tap, Watcher, WsFrames

WARMUP_KEYS = 20
KEY_PAUSE_S = 0.005
STEP_TIMEOUT_S = 60.0


@dataclass
class Marks:
    """What passed the tap, in order: ("in", data, when) and ("out", data, when)."""

    seen: list[tuple[str, str, float]] = field(default_factory=list)


class EchoWatcher(Watcher):
    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        self.from_worker = WsFrames()
        self.from_relay = WsFrames()

    def up(self, data: bytes, at: float) -> None:
        for payload in self.from_worker.feed(data):
            if b'"term.output"' in payload:
                frame = json.loads(payload)
                if not frame.get("snapshot"):
                    self.marks.seen.append(("out", str(frame.get("data", "")), at))

    def down(self, data: bytes, at: float) -> None:
        for payload in self.from_relay.feed(data):
            if b'"term.input"' in payload:
                frame = json.loads(payload)
                self.marks.seen.append(("in", str(frame.get("data", "")), at))


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def start_tap(relay_port: int, marks: Marks) -> Tap:
    tap = Tap(relay_port, lambda: EchoWatcher(marks))
    await tap.start()
    return tap


async def echo_split(term: Any, keys: int, marks: Marks) -> list[tuple[float, float, float]]:
    """(client → worker link, worker, → client) in ms for each measured key."""
    found: list[tuple[float, float, float]] = []
    for i in range(WARMUP_KEYS + keys):
        char = chr(ord("a") + i % 26)
        start_mark = len(marks.seen)
        sent = time.time()
        await term.send_input(char)
        seen = ""
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while char not in seen:
                seen += await term.output()
        received = time.time()
        if i >= WARMUP_KEYS:
            passed = marks.seen[start_mark:]
            into = next(at for kind, data, at in passed if kind == "in" and char in data)
            out = next(at for kind, data, at in passed if kind == "out" and char in data)
            found.append(((into - sent) * 1000, (out - into) * 1000, (received - out) * 1000))
        await asyncio.sleep(KEY_PAUSE_S)
    return found


def report(splits: list[tuple[float, float, float]]) -> str:
    names = ("client → relay → worker link", "worker, PTY and program", "relay → client")
    totals = [sum(s) for s in splits]
    rows = [
        f"| {name} | {statistics.median(v):.2f} | {nearest_rank(list(v), 0.99):.2f} |"
        for name, v in zip(names, zip(*splits, strict=True), strict=True)
    ]
    return "\n".join(
        [
            f"Echo through a recording tap between worker and relay ({len(splits)} keys):",
            "",
            "| segment | p50 ms | p99 ms |",
            "|---|---|---|",
            *rows,
            f"| round trip (with the tap's two hops) | {statistics.median(totals):.2f} "
            f"| {nearest_rank(totals, 0.99):.2f} |",
        ]
    )


def tapped_url(tap: Tap) -> str:
    return f"http://{HOST}:{tap.listen_port}"
