"""Soak: many clients on many chats, the built-in model, workers restarting now and then, for a
while; then what every client rendered is checked against the store.

    .venv/bin/python bench/soak.py                         # 10 minutes, 40 clients, 20 chats
    .venv/bin/python bench/soak.py --duration 60 --clients 8 --chats 4 --json /tmp/soak.json

Processes: ``relayline serve`` (SQLite, in-process bus; the benches' lifted rate limits) and two
``relayline worker`` (the built-in model, 10 ms a word). This driver runs the clients: each chat
has ``clients / chats`` of them on relayline's Python client (``relayline.client``: resume after
reconnects, ``events.missed`` → snapshot), and the first of each posts a message, waits for its
answer, pauses ``--pause`` seconds, and posts again. Every ``--restart-every`` seconds one worker
is stopped (gracefully, then the next time killed with SIGKILL) and started again.

Every 5 s the relay's ``/metrics`` is read: resident memory, open file descriptors, event-loop
tasks, store connections in use, open sockets. The report gives each one's first and last value
after the warm-up (the first fifth of the run) and its least-squares slope per minute, with the
post-to-answer time p50/p99 per fifth of the run. At the end the posts stop, every turn is let
end, and each client's rendering (its events placed by offset, a new attempt replacing the old
text, snapshots on ``events.missed``) is compared with the stored messages: lost (stored but
not shown, or shown with other text), doubled (a message shown as new twice), stuck (a turn still
queued or running). The exit status is 1 when any of those is not zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from servers import ADMIN_KEY, HOST, ROOT, machine, provision, spawn_relay

from relayline.client import Backoff, RelayClient, Reset, TurnCancelled, TurnFailed

KEY_ID = "bench-soak"
SECRET = "bench-soak-" + os.urandom(16).hex()
SAMPLE_S = 5.0
QUESTIONS = (
    "tell me about the sea",
    "what is a relay?",
    "write a short poem about ships",
    "list three colours",
)
GAUGES = {
    "rss_mib": "process_resident_memory_bytes",
    "open_fds": "process_open_fds",
    "tasks": "relayline_asyncio_tasks",
    "store_connections": "relayline_store_pool_connections_in_use",
    "sockets": 'relayline_connections{transport="ws"}',
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def every_message(chat: Any) -> list[dict[str, Any]]:
    """The chat's stored messages, page by page."""
    found: list[dict[str, Any]] = []
    while True:
        page = await chat.messages(after=found[-1]["seq"] if found else 0, limit=200)
        found += page
        if len(page) < 200:
            return found


@dataclass
class Rendering:
    """One client's view of its chat (as tests/faults/checker.py renders)."""

    texts: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)

    def take(self, type: str, data: dict[str, Any]) -> None:
        if type == "message.created":
            self.created.append(data["message"]["id"])
            self.texts[data["message"]["id"]] = data["message"]["content"]
        elif type == "message.delta":
            shown = self.texts.get(data["message_id"], "")
            self.texts[data["message_id"]] = shown[: data["offset"]] + data["text"]
        elif type == "message.completed":
            self.texts[data["message_id"]] = data["content"]

    def reload(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self.texts[message["id"]] = message["content"]
            if message["role"] == "user" and message["id"] not in self.created:
                self.created.append(message["id"])


@dataclass
class Soak:
    args: argparse.Namespace
    relay_url: str
    key: str
    stop_posting: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    failed_turns: int = 0
    renderings: dict[str, list[Rendering]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


async def follow(soak: Soak, chat_id: str, rendering: Rendering, ready: asyncio.Event) -> None:
    """A client that only watches (and renders) its chat until told to stop."""
    backoff = Backoff(base_s=0.2, max_s=2.0)
    async with RelayClient(soak.relay_url, soak.key, backoff=backoff) as client:
        chat = client.chat(chat_id)
        async with await chat.events() as events:
            # Subscribed first, then the chat as it is: nothing falls between the two.
            rendering.reload(await every_message(chat))
            ready.set()
            async for item in events:
                if isinstance(item, Reset):
                    rendering.reload(await every_message(chat))
                    continue
                rendering.take(item.type, item.data)


async def write(soak: Soak, chat_id: str, rendering: Rendering, ready: asyncio.Event) -> None:
    """The chat's poster: a message, its answer, a pause, again, until told to stop."""
    backoff = Backoff(base_s=0.2, max_s=2.0)
    async with RelayClient(soak.relay_url, soak.key, backoff=backoff) as client:
        chat = client.chat(chat_id)
        async with await chat.events() as events:

            async def render() -> None:
                async for item in events:
                    if isinstance(item, Reset):
                        rendering.reload(await every_message(chat))
                        continue
                    rendering.take(item.type, item.data)

            renderer = asyncio.ensure_future(render())
            ready.set()
            await soak.go.wait()  # every client of every chat is listening
            try:
                while not soak.stop_posting.is_set():
                    posted = time.monotonic()
                    answer = await chat.send(random.choice(QUESTIONS))
                    try:
                        await asyncio.wait_for(answer.text(), 120)
                        soak.latencies.append((posted - soak.started, time.monotonic() - posted))
                    except (TurnFailed, TurnCancelled, TimeoutError):
                        soak.failed_turns += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(soak.stop_posting.wait(), soak.args.pause)
                await asyncio.sleep(soak.args.settle)  # the last events reach every client
            finally:
                renderer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renderer


def start_worker(relay_url: str, name: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RELAYLINE_LOCAL_MODEL_DELAY_S": "0.01",
        "RELAYLINE_LOG_LEVEL": "WARNING",
        "RELAYLINE_ADMIN_KEY": ADMIN_KEY,
        "RELAYLINE_WORKER_ID": name,
    }
    cmd = [sys.executable, "-m", "relayline", "worker", "--relay", relay_url]
    cmd += ["--key-id", KEY_ID, "--secret", SECRET, "--capacity", "8"]
    with open(workdir / f"{name}.log", "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


async def restart_workers(soak: Soak, workers: list[subprocess.Popen[bytes]], workdir: Path) -> int:
    """Stop one worker (gracefully, then killed the next time) and start it again."""
    restarts = 0
    while not soak.stop_posting.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(soak.stop_posting.wait(), soak.args.restart_every)
            break
        index = restarts % len(workers)
        old = workers[index]
        old.send_signal(signal.SIGKILL if restarts % 2 else signal.SIGTERM)
        await asyncio.to_thread(old.wait, 60)
        workers[index] = start_worker(soak.relay_url, f"soak-worker-{index}", workdir)
        restarts += 1
    return restarts


def parse_metrics(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in text.splitlines():
        for name, metric in GAUGES.items():
            if line.startswith(metric + " "):
                value = float(line.split()[-1])
                found[name] = value / 2**20 if name == "rss_mib" else value
    return found


async def sample(soak: Soak, samples: list[tuple[float, dict[str, float]]]) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=soak.relay_url, timeout=10) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                r = await http.get("/metrics", headers=headers)
                if r.status_code == 200:
                    samples.append((time.monotonic() - soak.started, parse_metrics(r.text)))
            await asyncio.sleep(SAMPLE_S)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return math.nan
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return math.nan
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else math.nan


async def verdict(soak: Soak) -> dict[str, Any]:
    """Each client's rendering against the stored chat, after every turn has ended."""
    auth = {"Authorization": f"Bearer {soak.key}"}
    lost: list[str] = []
    doubled: list[str] = []
    stuck: list[str] = []
    stored_count = 0
    async with httpx.AsyncClient(base_url=soak.relay_url, timeout=10) as http:
        deadline = time.monotonic() + 120
        for chat_id in soak.renderings:
            while True:
                snapshot = (await http.get(f"/v1/chats/{chat_id}", headers=auth)).json()
                if snapshot.get("turn") is None or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            if snapshot.get("turn") is not None:
                stuck.append(f"{chat_id}: {snapshot['turn'].get('state')}")
        await asyncio.sleep(soak.args.settle)
        for chat_id, renderings in soak.renderings.items():
            stored: list[dict[str, Any]] = []
            after = 0
            while True:
                page = (
                    await http.get(
                        f"/v1/chats/{chat_id}/messages",
                        headers=auth,
                        params={"after": after, "limit": 200},
                    )
                ).json()
                stored += page["items"]
                if page["next_after"] is None:
                    break
                after = page["next_after"]
            stored_count += len(stored)
            for i, rendering in enumerate(renderings):
                for message in stored:
                    if rendering.texts.get(message["id"]) != message["content"]:
                        lost.append(f"{chat_id} client {i}: {message['role']} {message['id']}")
                twice = {m for m in rendering.created if rendering.created.count(m) > 1}
                doubled += [f"{chat_id} client {i}: {m}" for m in sorted(twice)]
    return {"stored": stored_count, "lost": lost, "doubled": doubled, "stuck": stuck}


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    port = free_port()
    env = {"RELAYLINE_WORKER_KEYS": f"{KEY_ID}:{SECRET}", **dict(args.relay_env)}
    relay, _ = spawn_relay(port, workdir, env)
    relay_url = f"http://{HOST}:{port}"
    workers = [start_worker(relay_url, f"soak-worker-{i}", workdir) for i in range(2)]
    try:
        _, key, _ = provision(relay_url)
        soak = Soak(args, relay_url, key)
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=relay_url, timeout=10) as http:
            chats = [
                (await http.post("/v1/chats", json={"title": f"soak {i}"}, headers=auth)).json()[
                    "id"
                ]
                for i in range(args.chats)
            ]
        per_chat = max(1, args.clients // args.chats)
        tasks: list[asyncio.Task[None]] = []
        watchers: list[asyncio.Task[None]] = []
        for chat_id in chats:
            soak.renderings[chat_id] = [Rendering() for _ in range(per_chat)]
            for i, rendering in enumerate(soak.renderings[chat_id]):
                ready = asyncio.Event()
                if i == 0:
                    tasks.append(asyncio.ensure_future(write(soak, chat_id, rendering, ready)))
                else:
                    watchers.append(asyncio.ensure_future(follow(soak, chat_id, rendering, ready)))
                await asyncio.wait_for(ready.wait(), 30)
        samples: list[tuple[float, dict[str, float]]] = []
        sampler = asyncio.ensure_future(sample(soak, samples))
        soak.started = time.monotonic()
        soak.go.set()
        restarter = asyncio.ensure_future(restart_workers(soak, workers, workdir))
        await asyncio.sleep(args.duration)
        soak.stop_posting.set()
        restarts = await restarter
        await asyncio.gather(*tasks)
        found = await verdict(soak)
        for task in (*watchers, sampler):
            task.cancel()
        await asyncio.gather(*watchers, sampler, return_exceptions=True)
    finally:
        for proc in (*workers, relay):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    warm = args.duration / 5
    steady = [(t, values) for t, values in samples if t >= warm]
    gauges = {}
    for name in GAUGES:
        points = [(t, v[name]) for t, v in steady if name in v]
        gauges[name] = {
            "first": points[0][1] if points else math.nan,
            "last": points[-1][1] if points else math.nan,
            "max": max((v for _, v in points), default=math.nan),
            "slope_per_min": slope_per_minute(points),
        }
    fifths = []
    for k in range(5):
        lo, hi = k * args.duration / 5, (k + 1) * args.duration / 5
        window = [s for t, s in soak.latencies if lo <= t < hi]
        fifths.append(
            {
                "answers": len(window),
                "p50_s": nearest_rank(window, 0.5),
                "p99_s": nearest_rank(window, 0.99),
            }
        )
    return {
        "duration_s": args.duration,
        "clients": args.chats * per_chat,
        "chats": args.chats,
        "answers": len(soak.latencies),
        "failed_turns": soak.failed_turns,
        "worker_restarts": restarts,
        "gauges": gauges,
        "latency_by_fifth": fifths,
        **found,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"Soak: {result['duration_s']:.0f} s, {result['clients']} clients on {result['chats']} "
        f"chats, {result['answers']} answers ({result['failed_turns']} turns failed), "
        f"{result['worker_restarts']} worker restarts; {machine()}",
        "",
        "| gauge (after the warm-up) | first | last | max | slope per minute |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, g in result["gauges"].items():
        lines.append(
            f"| {name} | {g['first']:.1f} | {g['last']:.1f} | {g['max']:.1f} "
            f"| {g['slope_per_min']:+.2f} |"
        )
    lines += ["", "| fifth of the run | answers | p50 | p99 |", "|---:|---:|---:|---:|"]
    for k, f in enumerate(result["latency_by_fifth"], 1):
        lines.append(f"| {k} | {f['answers']} | {f['p50_s']:.2f} s | {f['p99_s']:.2f} s |")
    lines += [
        "",
        f"Stored messages {result['stored']}: lost {len(result['lost'])}, doubled "
        f"{len(result['doubled'])}, stuck turns {len(result['stuck'])}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--pause", type=float, default=1.0, help="between a poster's turns")
    parser.add_argument("--restart-every", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument(
        "--relay-env",
        action="append",
        default=[],
        type=lambda text: tuple(text.split("=", 1)),
        metavar="NAME=VALUE",
        help="a setting for the relay (repeatable), e.g. RELAYLINE_HISTORY_MAX_EVENTS=200 to "
        "have the bus's replay history full early in the run",
    )
    args = parser.parse_args()
    if not (5 <= args.duration <= 24 * 3600 and 1 <= args.chats <= args.clients <= 5000):
        parser.error("duration 5 s to 24 h; 1 <= chats <= clients <= 5000")
    with tempfile.TemporaryDirectory(prefix="relayline-soak-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if result["lost"] or result["doubled"] or result["stuck"]:
        for problem in (*result["lost"], *result["doubled"], *result["stuck"])[:20]:
            print("problem:", problem, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
