"""A chat's delta latency while a terminal floods output through the same relay.

    .venv/bin/python bench/terminal_chat.py                  # ~1 min; prints a markdown table
    .venv/bin/python bench/terminal_chat.py --rounds 3 --deltas 3000

``relayline serve`` (SQLite, in-process bus, ``RELAYLINE_DELTA_COALESCE_MS=0``) pinned to CPU
0. This driver is the chat's worker (a scripted one: it connects before any other worker, so the
turn is its own, and sends ``turn.delta`` frames at a steady pace, each carrying its send time)
and the chat's subscriber, which notes when each delta arrives: the figure is worker send →
subscriber receipt, as in ``bench/turns.py``. Each round measures the chat twice: idle, then
while ``relayline worker --terminals`` runs the bench's ``flood`` program (bench/term_programs.py,
one endless flood of 80-byte lines) and a viewer in a process of its own reads every
``term.output`` as a page would (bench/term_clients.py). The target: the chat's p99 with the
flood within 2x of idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
from servers import ADMIN_KEY, machine, spawn_relay
from term_clients import RelayTerminal
from terminal import KEY_ID, SECRET, free_port, start_worker, stop, wait_programs
from websockets.asyncio.client import connect

from relayline.protocol.signing import signed_headers

WORKER_PATH = "/v1/worker/ws"
FLOOD_MIB = 100_000  # more than any round reads: the flood runs until its terminal is ended


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(share * len(ordered) + 0.999999) - 1)]


def viewer(url: str, key: str, stop_it: EventType, started: EventType, out: Any) -> None:
    """A page watching the flooding terminal (its own process): reads until told to stop,
    then reports the characters it received and for how long."""

    async def run() -> None:
        async with RelayTerminal(url, key, "flood") as term:
            await term.send_input("\r")
            received = 0
            begin = time.perf_counter()
            started.set()
            while not stop_it.is_set():
                received += len(await term.output())
            out.put((received, time.perf_counter() - begin))

    asyncio.run(run())


async def measure_deltas(
    worker: Any, subscriber: Any, base: dict[str, Any], count: int, rate: float
) -> list[float]:
    """``count`` deltas at ``rate``/s; each one's send → receipt in ms (a tenth left out as
    warm-up)."""
    samples: list[float] = []
    warmup = count // 10
    seen = 0

    async def receive() -> None:
        nonlocal seen
        while seen < count:
            raw = await subscriber.recv()
            now = time.perf_counter_ns()
            msg = json.loads(raw)
            if msg.get("type") != "message.delta":
                continue
            for stamp in msg["data"]["text"].split(";")[:-1]:
                seen += 1
                if seen > warmup:
                    samples.append((now - int(stamp)) / 1e6)

    reader = asyncio.create_task(receive())
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await worker.send(json.dumps({**base, "text": f"{time.perf_counter_ns()};"}))
    async with asyncio.timeout(60):
        await reader
    return samples


async def one_round(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    port = free_port()
    env = {"RELAYLINE_WORKER_KEYS": f"{KEY_ID}:{SECRET}", "RELAYLINE_DELTA_COALESCE_MS": "0"}
    relay, _ = spawn_relay(port, workdir, env)
    url = f"http://127.0.0.1:{port}"
    term_worker = None
    try:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            r = await http.post("/v1/admin/tenants", json={"name": "bench"}, headers=admin)
            tenant = r.json()["id"]
            r = await http.post(f"/v1/admin/tenants/{tenant}/keys", json={}, headers=admin)
            key = r.json()["key"]
            auth = {"Authorization": f"Bearer {key}"}
            chat = (await http.post("/v1/chats", json={"title": "c"}, headers=auth)).json()["id"]
            worker = await connect(
                f"ws://127.0.0.1:{port}{WORKER_PATH}",
                additional_headers=signed_headers(KEY_ID, SECRET, "GET", WORKER_PATH),
                compression=None,
            )
            hello = {"type": "hello", "worker_id": "bench-chat", "capacity": 1}
            await worker.send(json.dumps(hello))
            json.loads(await worker.recv())  # welcome
            subscriber = await connect(
                f"ws://127.0.0.1:{port}/v1/ws",
                subprotocols=["relayline.v1", f"bearer.{key}"],  # type: ignore[list-item]
                max_size=None,
                compression=None,
            )
            await subscriber.send(
                json.dumps({"op": "subscribe", "ref": 1, "topic": f"chat:{chat}"})
            )
            r = await http.post(f"/v1/chats/{chat}/messages", json={"content": "x"}, headers=auth)
            r.raise_for_status()
            async with asyncio.timeout(30):
                while (frame := json.loads(await worker.recv()))["type"] != "turn.assigned":
                    pass
            base = {"type": "turn.delta", "turn_id": frame["turn_id"], "attempt": frame["attempt"]}
            idle = await measure_deltas(worker, subscriber, base, args.deltas, args.rate)
            # The terminal worker connects only now: the chat's turn is the driver's.
            term_worker = start_worker(url, workdir, FLOOD_MIB, args.lines, {})
            await asyncio.to_thread(wait_programs, url, key, term_worker)
            ctx = multiprocessing.get_context("spawn")
            stop_it, started, out = ctx.Event(), ctx.Event(), ctx.Queue()
            page = ctx.Process(target=viewer, args=(url, key, stop_it, started, out))
            page.start()
            try:
                if not await asyncio.to_thread(started.wait, 30):
                    raise RuntimeError("the terminal viewer did not start")
                await asyncio.sleep(1.0)  # the flood at full speed
                flooded = await measure_deltas(worker, subscriber, base, args.deltas, args.rate)
            finally:
                stop_it.set()
            received, seconds = await asyncio.to_thread(out.get, True, 30)
            await asyncio.to_thread(page.join, 30)
            await worker.send(json.dumps({**base, "type": "turn.done", "usage": {}}))
            await subscriber.close()
            await worker.close()
    finally:
        if term_worker is not None:
            stop(term_worker)
        stop(relay)
    return {"idle": idle, "flood": flooded, "flood_mib_s": received / seconds / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--deltas", type=int, default=2000, help="per phase")
    parser.add_argument("--rate", type=float, default=500.0, help="deltas a second")
    parser.add_argument("--lines", choices=("plain", "colour"), default="plain")
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="relayline-termchat-") as tmp:
        for n in range(args.rounds):
            work = Path(tmp) / f"round-{n}"
            work.mkdir()
            found = asyncio.run(one_round(args, work))
            rounds.append(found)
            print(
                f"round {n + 1}: idle p99 {nearest_rank(found['idle'], 0.99):.2f} ms, with the "
                f"flood {nearest_rank(found['flood'], 0.99):.2f} ms "
                f"({found['flood_mib_s']:.1f} MiB/s)",
                file=sys.stderr,
            )
    idle = [v for r in rounds for v in r["idle"]]
    flood = [v for r in rounds for v in r["flood"]]
    ratio = nearest_rank(flood, 0.99) / nearest_rank(idle, 0.99)
    mib = statistics.median(r["flood_mib_s"] for r in rounds)
    command = "python bench/terminal_chat.py " + " ".join(sys.argv[1:])
    print(
        "\n".join(
            [
                f"Command: `{command.strip()}` ({time.strftime('%Y-%m-%d')}); {machine()}.",
                "",
                "| chat deltas, worker send → subscriber receipt | p50 ms | p99 ms | max ms |",
                "|---|---|---|---|",
                f"| idle | {statistics.median(idle):.2f} | {nearest_rank(idle, 0.99):.2f} "
                f"| {max(idle):.2f} |",
                f"| while a terminal floods ({mib:.1f} MiB/s of {args.lines} lines to its "
                f"viewer) | {statistics.median(flood):.2f} | {nearest_rank(flood, 0.99):.2f} "
                f"| {max(flood):.2f} |",
                "",
                f"p99 with the flood / idle: {ratio:.2f} (target ≤ 2). {args.rounds} rounds, "
                f"{args.deltas} deltas a phase at {args.rate:.0f}/s.",
            ]
        )
    )
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
