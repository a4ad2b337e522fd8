"""Many answers streaming at once: ``bench/turns.py --concurrent``.

``relayline serve`` (SQLite, in-process bus, the benches' lifted rate limits) pinned to CPU 0.
On CPU 1: ``bench/stamped_worker.py`` (relayline's worker with a model that writes into each
word the time it left, ``--words`` words ``--delay`` apart, every answer's first word held until
all ``--chats`` answers are waiting, so that they stream at once) and this driver (on uvloop),
which watches each chat with ``--subscribers`` WebSockets (raw asyncio sockets, frames kept as
they arrive and read after the run) and posts one message to every chat.

Reported: relay CPU while the answers stream, its RSS per running turn (RSS at the peak minus
RSS with every subscriber connected and no turn, over the turns), the delta latency worker →
subscriber (arrival minus the stamp of every word, p50/p99/max, all subscribers) and, apart, each
word's wait in the worker before its frame left (its coalescing's and its own delays), how many
answers streamed at once, and the check: each subscriber's text (its ``message.delta`` events
placed by offset) equals the stored answer, none lost or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from servers import ADMIN_KEY, ROOT, Server, gc_collections, start_relay
from wsclient import WsClient, busy_share, cpu_busy, cpu_seconds

TIME_LIMIT_S = 240.0


def cpu_split(pid: int) -> tuple[float, float]:
    """The process's CPU seconds so far: (user, system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watcher(WsClient):
    """One subscriber of one chat: acks counted, every later frame kept with its arrival (µs of
    ``time.monotonic``) for the reading after the run."""

    def __init__(self, port: int, key: str, topic: str, done: dict[str, float]) -> None:
        super().__init__("127.0.0.1", port, "/v1/ws", ["relayline.v1", f"bearer.{key}"])
        self.topic = topic
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.frames: list[tuple[int, bytes]] = []
        self.completed = done  # topic → arrival of its message.completed (first subscriber's)

    def on_open(self) -> None:
        self.send_text(json.dumps({"op": "subscribe", "ref": 1, "topic": self.topic}))

    def on_text(self, buf: bytes | bytearray, begin: int, start: int, end: int, now: int) -> None:
        payload = bytes(buf[start:end])
        if not self.subscribed.done():
            frame = json.loads(payload)
            if frame.get("type") == "ack":
                self.subscribed.set_result(None)
            elif frame.get("type") == "error":
                self.subscribed.set_exception(RuntimeError(f"subscribe refused: {frame}"))
            return
        self.frames.append((now, payload))
        if b'"message.completed"' in payload and self.topic not in self.completed:
            self.completed[self.topic] = now / 1e6


async def open_watchers(
    server: Server, chats: list[str], per_chat: int, done: dict[str, float]
) -> list[list[Watcher]]:
    loop = asyncio.get_running_loop()
    watchers = [
        [Watcher(server.port, server.publish_token, f"chat:{c}", done) for _ in range(per_chat)]
        for c in chats
    ]
    flat = [w for group in watchers for w in group]
    for i in range(0, len(flat), 100):  # handshakes in batches of a hundred
        batch = flat[i : i + 100]
        await asyncio.gather(
            *(loop.create_connection(lambda w=w: w, "127.0.0.1", server.port) for w in batch)
        )
        async with asyncio.timeout(30):
            await asyncio.gather(*(w.subscribed for w in batch))
    return watchers


def start_stamped_worker(
    server: Server, key_id: str, secret: str, chats: int, args: Any, workdir: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "stamped_worker.py"),
        "--relay",
        server.url,
        "--key-id",
        key_id,
        "--secret",
        secret,
        "--capacity",
        str(chats),
        "--words",
        str(args.words),
        "--delay",
        str(args.delay),
        "--barrier",
        str(chats),
        "--barrier-timeout",
        "60",
        "--figures-to",
        str(workdir / "worker-figures.json"),
        *(["--stagger"] if args.stagger else []),
    ]
    env = {**os.environ, "RELAYLINE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    with open(workdir / "stamped-worker.log", "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)}),
        )


def profiler(pid: int, path: str | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the relay while the answers stream (as ``bench/turns.py --profile``)."""
    if not path:
        return None
    spy = Path(sys.executable).parent / "py-spy"
    cmd = [str(spy), "record", "--pid", str(pid), "--rate", "250", "--gil", "--nonblocking"]
    cmd += ["--format", "raw", "-o", path]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_subscriber(
    watcher: Watcher, words: list[tuple[int, int]]
) -> tuple[dict[str, str], int, int, int]:
    """The answers this subscriber rendered (message id → text placed by offset), adding every
    word's (stamp, latency) in µs; also its count of message.delta events, gaps and overlaps."""
    texts: dict[str, list[str]] = {}
    lengths: dict[str, int] = {}
    events = gaps = overlaps = 0
    for now, payload in watcher.frames:
        frame = json.loads(payload)
        if frame.get("type") != "message.delta":
            continue
        events += 1
        data = frame["data"]
        mid, offset, text = data["message_id"], data["offset"], data["text"]
        have = lengths.get(mid, 0)
        if offset > have:
            gaps += 1
            continue
        if offset < have:
            overlaps += 1  # a repeat: keep what was placed, count it
            continue
        texts.setdefault(mid, []).append(text)
        lengths[mid] = have + len(text)
        words.extend((int(stamp), now - int(stamp)) for stamp in text.split(";")[:-1])
    return {mid: "".join(parts) for mid, parts in texts.items()}, events, gaps, overlaps


async def stored_answers(client: httpx.AsyncClient, auth: dict[str, str], chats: list[str]):
    """Each chat's assistant messages as stored: chat → [(message id, status, content)]."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    gate = asyncio.Semaphore(16)

    async def one(chat: str) -> None:
        async with gate:
            r = await client.get(f"/v1/chats/{chat}/messages", headers=auth)
        r.raise_for_status()
        out[chat] = [
            (m["id"], m.get("status", ""), m["content"])
            for m in r.json()["items"]
            if m["role"] == "assistant"
        ]

    await asyncio.gather(*(one(c) for c in chats))
    return out


async def run(args: Any, workdir: Path, log: Any) -> dict[str, Any]:
    from relayline.testing import free_port

    key_id, secret = "bench-stamped", "bench-stamped-secret-0123456789abcdef"
    env = {
        "RELAYLINE_WORKER_KEYS": f"{key_id}:{secret}",
        "RELAYLINE_MAX_WORKER_CAPACITY": str(args.chats),
    }
    if args.coalesce_ms is not None:
        env["RELAYLINE_DELTA_COALESCE_MS"] = str(args.coalesce_ms)
    server = start_relay(free_port(), workdir, env)
    worker: subprocess.Popen[bytes] | None = None
    watchers: list[list[Watcher]] = []
    try:
        auth = {"Authorization": f"Bearer {server.publish_token}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            chats: list[str] = []
            gate = asyncio.Semaphore(16)

            async def new_chat(i: int) -> None:
                async with gate:
                    r = await client.post("/v1/chats", json={"title": f"c{i}"}, headers=auth)
                r.raise_for_status()
                chats.append(r.json()["id"])

            await asyncio.gather(*(new_chat(i) for i in range(args.chats)))
            log(f"{len(chats)} chats")
            worker = start_stamped_worker(server, key_id, secret, args.chats, args, workdir)
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            async with asyncio.timeout(30):
                while True:
                    r = await client.get("/v1/admin/workers", headers=admin)
                    if r.status_code == 200 and r.json()["items"]:
                        break
                    await asyncio.sleep(0.2)
            done: dict[str, float] = {}
            watchers = await open_watchers(server, chats, args.subscribers, done)
            log(f"{sum(map(len, watchers))} subscribers")
            await asyncio.sleep(2)
            rss_idle = rss_mib(server.proc.pid)

            async def post(chat: str) -> None:
                async with gate:
                    r = await client.post(
                        f"/v1/chats/{chat}/messages", json={"content": "stream"}, headers=auth
                    )
                r.raise_for_status()

            posted_at = time.monotonic()
            await asyncio.gather(*(post(c) for c in chats))
            log(f"posted in {time.monotonic() - posted_at:.1f} s")
            # The answers start together once the worker holds every one of them.
            rss_peak = rss_idle
            gc_start = await asyncio.to_thread(gc_collections, server.port)
            spy = profiler(server.proc.pid, args.profile)
            user_start, system_start = cpu_split(server.proc.pid)
            cpu_start = user_start + system_start
            worker_start = cpu_seconds(worker.pid)
            driver_start = time.process_time()
            cores_start = cpu_busy()
            t_start = time.monotonic()
            deadline = t_start + TIME_LIMIT_S
            while len(done) < len(chats) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                rss_peak = max(rss_peak, rss_mib(server.proc.pid))
            t_end = time.monotonic()
            user_end, system_end = cpu_split(server.proc.pid)
            cpu = user_end + system_end - cpu_start
            system = system_end - system_start
            worker_cpu = cpu_seconds(worker.pid) - worker_start
            driver_cpu = time.process_time() - driver_start
            cores = busy_share(cores_start, cpu_busy())
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes the profile on SIGINT
                spy.wait(60)
            gc_end = await asyncio.to_thread(gc_collections, server.port)
            log(f"{len(done)} of {len(chats)} answers completed in {t_end - t_start:.1f} s")
            await asyncio.sleep(1)
            stored = await stored_answers(client, auth, chats)
            worker_figures = json.loads((workdir / "worker-figures.json").read_text())
    except BaseException:
        for name in ("stamped-worker.log",):
            with contextlib.suppress(OSError):
                log(name + ":\n" + (workdir / name).read_text(errors="replace")[-3000:])
        raise
    finally:
        for group in watchers:
            for w in group:
                w.abort()
        if worker is not None:
            worker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(15)
        server.stop()

    words: list[tuple[int, int]] = []
    lost = doubled = gaps = overlaps = events = 0
    first_word: list[float] = []
    last_word: list[float] = []
    for chat, group in zip(chats, watchers, strict=True):
        answers = stored.get(chat, [])
        for w in group:
            seen, n, g, o = read_subscriber(w, words)
            events += n
            gaps += g
            overlaps += o
            for mid, _status, content in answers:
                if seen.get(mid) != content:
                    lost += 1
            doubled += sum(1 for mid in seen if mid not in {a[0] for a in answers})
        if group and group[0].frames:
            deltas = [now for now, p in group[0].frames if b'"message.delta"' in p]
            if deltas:
                first_word.append(deltas[0] / 1e6)
                last_word.append(deltas[-1] / 1e6)
    answered = sum(1 for c in chats if any(s == "complete" for _, s, _ in stored.get(c, [])))
    # How many answers were streaming at once: the most first-to-last spans over one instant.
    spans = sorted([(t, 1) for t in first_word] + [(t, -1) for t in last_word])
    running = peak = 0
    for _, step in spans:
        running += step
        peak = max(peak, running)
    streaming_s = (max(last_word) - min(first_word)) if first_word else 0.0
    ms = sorted(latency / 1000 for _, latency in words)
    return {
        "chats": len(chats),
        "subscribers": args.subscribers,
        "words": args.words,
        "delay": args.delay,
        "stagger": args.stagger,
        "worker_frames": worker_figures["frames"],
        "worker_gc": worker_figures["collections"],
        "worker_gc_longest_ms": worker_figures["longest_ms"],
        "worker_held": held_percentiles(worker_figures["held_ms"]),
        "coalesce_ms": args.coalesce_ms,
        "answered": answered,
        "completed_seen": len(done),
        "peak_streaming": peak,
        "streaming_s": streaming_s,
        "relay_cpu": cpu / max(t_end - t_start, 1e-9),
        "relay_system_share": system / max(cpu, 1e-9),
        "worker_cpu": worker_cpu / max(t_end - t_start, 1e-9),
        "driver_cpu": driver_cpu / max(t_end - t_start, 1e-9),
        "cores_busy": {str(c): round(share, 3) for c, share in sorted(cores.items())},
        "gc_collections": {g: gc_end[g] - gc_start.get(g, 0) for g in gc_end},
        "rss_idle_mib": rss_idle,
        "rss_peak_mib": rss_peak,
        "rss_per_turn_kib": (rss_peak - rss_idle) * 1024 / max(len(chats), 1),
        "events": events,
        "words_seen": len(words),
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p99_ms": ms[int(len(ms) * 0.99) - 1] if ms else float("nan"),
        "max_ms": ms[-1] if ms else float("nan"),
        "lost": lost,
        "doubled": doubled,
        "gaps": gaps,
        "overlaps": overlaps,
        **by_second(words),
    }


def held_percentiles(counts: list[int]) -> dict[str, int]:
    """p50 / p99 / max of the words' wait in the worker, from its count per whole millisecond:
    each the millisecond it began in (the last bucket holds a second or more)."""
    total = sum(counts)
    out: dict[str, int] = {}
    for name, share in (("p50", 0.5), ("p99", 0.99)):
        rank, seen = max(1, int(total * share + 0.999999)), 0
        for ms, n in enumerate(counts):
            seen += n
            if seen >= rank:
                out[name] = ms
                break
    out["max"] = max((ms for ms, n in enumerate(counts) if n), default=0)
    return out


def by_second(words: list[tuple[int, int]]) -> dict[str, Any]:
    """The latency's p99 for the words that left the worker in each second of the run, and its
    p50 / p99 without the first second (when every answer's first words leave together)."""
    if not words:
        return {"p99_by_second_ms": [], "after_first_s_p50_ms": None, "after_first_s_p99_ms": None}
    start = min(stamp for stamp, _ in words)
    seconds: dict[int, list[int]] = {}
    for stamp, latency in words:
        seconds.setdefault((stamp - start) // 1_000_000, []).append(latency)
    later = sorted(lat / 1000 for stamp, lat in words if stamp - start >= 1_000_000)
    return {
        "p99_by_second_ms": [
            round(nearest(sorted(seconds[k]), 0.99) / 1000, 1) for k in sorted(seconds)
        ],
        "after_first_s_p50_ms": nearest(later, 0.5) if later else None,
        "after_first_s_p99_ms": nearest(later, 0.99) if later else None,
    }


def nearest(ordered: list[Any], share: float) -> Any:
    """The nearest-rank percentile of an ascending list."""
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * share + 0.999999) - 1))]


def report(found: dict[str, Any], command: str) -> str:
    f = found
    return "\n".join(
        [
            f"Command: `{command}` ({time.strftime('%Y-%m-%d')}).",
            "",
            "| measure | result |",
            "|---|---|",
            f"| answers streaming at once (peak) | {f['peak_streaming']} of {f['chats']} |",
            f"| delta latency worker → subscriber, p50 / p99 / max | {f['p50_ms']:.1f} / "
            f"{f['p99_ms']:.1f} / {f['max_ms']:.1f} ms |",
            "| of each word, the wait in the worker (model → frame written), p50 / p99 / max | "
            f"{f['worker_held'].get('p50', 0)} / {f['worker_held'].get('p99', 0)} / "
            f"{f['worker_held']['max']} ms (whole ms begun) |",
            f"| relay CPU while streaming | {f['relay_cpu']:.0%} of one core "
            f"({f['relay_system_share']:.0%} of it in the kernel) |",
            f"| the other core: worker / this driver / whole core busy | {f['worker_cpu']:.0%} / "
            f"{f['driver_cpu']:.0%} / {f['cores_busy'].get('1', 0):.0%} (CPU 0 "
            f"{f['cores_busy'].get('0', 0):.0%}) |",
            "| the worker's collections by generation 0 / 1 / 2, the longest | "
            + " / ".join(f"{n:,}" for n in f["worker_gc"])
            + f", {f['worker_gc_longest_ms']:.1f} ms |",
            "| relay's garbage collections while streaming, by generation 0 / 1 / 2 | "
            + " / ".join(f"{f['gc_collections'].get(g, 0):,}" for g in ("0", "1", "2"))
            + " |",
            f"| relay RSS, idle with subscribers → peak | {f['rss_idle_mib']:.0f} → "
            f"{f['rss_peak_mib']:.0f} MiB ({f['rss_per_turn_kib']:.0f} KiB per running turn) |",
            f"| answered / lost / doubled / gaps / repeats | {f['answered']} / {f['lost']} / "
            f"{f['doubled']} / {f['gaps']} / {f['overlaps']} |",
            "",
            f"{f['chats']} chats x {f['subscribers']} subscribers, {f['words']} words an answer "
            f"{f['delay'] * 1000:.0f} ms apart ({1 / f['delay']:.0f} words/s), streamed over "
            f"{f['streaming_s']:.1f} s; {f['words_seen']} word arrivals measured in "
            f"{f['events']} `message.delta` events ({f['events'] // max(f['subscribers'], 1)} "
            f"published, from {f['worker_frames']} `turn.delta` frames; "
            + (
                "default coalescing"
                if f["coalesce_ms"] is None
                else f"`RELAYLINE_DELTA_COALESCE_MS={f['coalesce_ms']}`"
            )
            + "). Every answer's words "
            + (
                "started at a random point of the first word's interval (`--stagger`)."
                if f["stagger"]
                else "left the worker in step (each word of every answer at the same instant)."
            ),
        ]
    )
