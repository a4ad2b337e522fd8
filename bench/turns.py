"""Turn benchmark: turns per second through relay + worker, and the relay's added latency per
answer delta.

    .venv/bin/python bench/turns.py            # ~1 min; rewrites the "## Turns" section of
                                               # docs/benchmarks.md
    .venv/bin/python bench/turns.py --quick    # small counts, ~20 s; prints only
    .venv/bin/python bench/turns.py --wait-quiet 300   # first wait for idle CPUs
    .venv/bin/python bench/turns.py --concurrent       # 1,000 answers streaming at once,
                                                       # two subscribers each

Throughput: ``relayline serve`` (SQLite, in-process bus) pinned to CPU 0 and ``relayline worker``
(built-in model with no pause between words, capacity 16) pinned to CPU 1, as separate
processes. This driver, also on CPU 1, posts every message at once over the REST API, spread
over many chats (a chat answers one turn at a time), and waits for each ``message.completed``
on one WebSocket. Turns/s = turns / (last completion - first post).

Delta latency: a relay with ``RELAYLINE_DELTA_COALESCE_MS=0`` on CPU 0. This driver (CPU 1) is
both a scripted worker and a subscriber of the chat: the worker sends ``turn.delta`` frames at
a steady pace, each carrying its send time; the subscriber notes when the ``message.delta``
carrying it arrives. The figure is worker send → subscriber receipt: what the relay adds plus
two loopback hops and this process's own JSON work, so an upper bound of the relay's share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from cpu_quota import PERIOD_US
from servers import ADMIN_KEY, ROOT, Server, machine, start_relay, versions
from websockets.asyncio.client import ClientConnection, connect
from wsclient import busy_share, cpu_busy

from relayline.protocol.signing import signed_headers

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- turns:results:begin -->", "<!-- turns:results:end -->"
WORKER_PATH = "/v1/worker/ws"
KEY_ID = "bench-worker"
SECRET = "bench-secret-" + secrets.token_hex(16)

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "turns": 2000,
        "chats": 50,
        "capacity": 16,
        "deltas": 6000,
        "rate": 1000.0,
        "latency_runs": 3,
    },
    "quick": {
        "turns": 300,
        "chats": 30,
        "capacity": 16,
        "deltas": 1500,
        "rate": 1000.0,
        "latency_runs": 1,
    },
}
TIME_LIMIT_S = 180.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit_s: float, log: Any) -> dict[int, float]:
    """Wait (at most ``limit_s``) until no CPU is more than 20% busy; return the last reading."""
    deadline = time.monotonic() + limit_s
    while True:
        before = cpu_busy()
        time.sleep(2)
        load = busy_share(before, cpu_busy())
        if max(load.values()) <= 0.2 or time.monotonic() >= deadline:
            return load
        log("background load " + ", ".join(f"CPU {c} {v:.0%}" for c, v in load.items()))


def pin(cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


def start_worker(server: Server, capacity: int, workdir: Path) -> subprocess.Popen[bytes]:
    log = workdir / "worker.log"
    env = {
        **os.environ,
        "RELAYLINE_LOCAL_MODEL_DELAY_S": "0",
        "RELAYLINE_LOG_LEVEL": "WARNING",
        "RELAYLINE_ADMIN_KEY": ADMIN_KEY,
    }
    cmd = [
        sys.executable,
        "-m",
        "relayline",
        "worker",
        "--relay",
        server.url,
        "--key-id",
        KEY_ID,
        "--secret",
        SECRET,
        "--capacity",
        str(capacity),
    ]
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=lambda: pin(1)
        )


async def wait_for_worker(client: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with asyncio.timeout(30):
        while True:
            r = await client.get("/v1/admin/workers", headers=admin)
            if r.status_code == 200 and r.json()["items"]:
                return
            await asyncio.sleep(0.1)


async def subscriber(server: Server, token: str, topics: list[str]) -> ClientConnection:
    url = f"ws://127.0.0.1:{server.port}/v1/ws"
    ws = await connect(
        url,
        subprotocols=["relayline.v1", f"bearer.{token}"],  # type: ignore[list-item]
        max_size=None,
        ping_interval=None,
        compression=None,
    )
    for ref, topic in enumerate(topics, 1):
        await ws.send(json.dumps({"op": "subscribe", "ref": ref, "topic": topic}))
    acked = 0
    while acked < len(topics):
        frame = json.loads(await ws.recv())
        if frame.get("type") == "ack":
            acked += 1
        elif frame.get("type") == "error":
            raise RuntimeError(f"subscribe refused: {frame}")
    return ws


# Throughput


async def throughput(server: Server, profile: dict[str, Any], workdir: Path) -> dict[str, Any]:
    key = server.publish_token
    auth = {"Authorization": f"Bearer {key}"}
    worker = start_worker(server, profile["capacity"], workdir)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await wait_for_worker(client)
            chats = []
            for _ in range(profile["chats"]):
                r = await client.post("/v1/chats", json={"title": "bench"}, headers=auth)
                r.raise_for_status()
                chats.append(r.json()["id"])
            ws = await subscriber(server, key, [f"chat:{c}" for c in chats])
            try:
                # Warm-up: one turn per chat, not measured.
                await run_turns(client, ws, auth, chats, len(chats))
                pids = {"relay": server.proc.pid, "worker": worker.pid, "driver": os.getpid()}
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                cores = cpu_busy()
                spy = start_profiler(server.proc.pid, profile.get("profile_to"))
                try:
                    result = await run_turns(client, ws, auth, chats, profile["turns"])
                finally:
                    stop_profiler(spy)
                core_busy = busy_share(cores, cpu_busy())
                result["cpu"] = {
                    name: (cpu_seconds(pid) - before[name]) / result["seconds"]
                    for name, pid in pids.items()
                }
                # What else kept the relay's core busy meanwhile (other processes' work).
                result["other_on_relay_core"] = max(0.0, core_busy[0] - result["cpu"]["relay"])
                return result
            finally:
                await ws.close()
    finally:
        worker.terminate()
        worker.wait(15)


def start_profiler(pid: int, path: str | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the relay while turns run: folded stacks of the thread holding the GIL.

    ``--nonblocking``: read the stacks without stopping the relay. Stopped for every sample,
    the relay stops where it next enters the kernel, which on this machine overstated the code
    right before a system call (``asyncio.get_running_loop``'s ``getpid``, the event loop's
    wake-ups) and slowed the run by a fifth; a stack read while it runs is now and then torn,
    which the per-phase sums absorb."""
    if not path:
        return None
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
    cmd = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        "--gil",
        "--nonblocking",
        "--format",
        "raw",
        "-o",
        path,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the first post
    return proc


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)  # py-spy writes the profile on SIGINT
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def run_turns(
    client: httpx.AsyncClient | list[httpx.AsyncClient],
    ws: ClientConnection,
    auth: dict[str, str],
    chats: list[str],
    count: int,
) -> dict[str, Any]:
    pending: set[str] = set()
    early: set[str] = set()
    failed = 0
    done = asyncio.Event()
    last = 0.0

    async def collect() -> None:
        nonlocal failed, last
        async for raw in ws:
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind not in ("message.completed", "turn.failed"):
                continue
            turn_id = frame["data"]["turn_id"]
            failed += kind == "turn.failed"
            if turn_id in pending:
                pending.discard(turn_id)
            else:
                early.add(turn_id)  # finished before its POST returned
            last = time.perf_counter()
            if posted == count and not pending:
                done.set()

    posted = refused = 0
    gate = asyncio.Semaphore(32)
    doors = client if isinstance(client, list) else [client]  # posts go round robin

    async def post(i: int) -> None:
        nonlocal posted, refused
        async with gate:
            r = await doors[i % len(doors)].post(
                f"/v1/chats/{chats[i % len(chats)]}/messages",
                json={"content": f"benchmark message number {i}"},
                headers=auth,
            )
        posted += 1
        if r.status_code >= 500:
            # Counted and reported, not retried: the figure is for what the relay took.
            refused += 1
            if posted == count and not pending:
                done.set()
            return
        r.raise_for_status()
        turn_id = r.json()["turn_id"]
        if turn_id in early:
            early.discard(turn_id)
        else:
            pending.add(turn_id)
        if posted == count and not pending:
            done.set()

    reader = asyncio.create_task(collect())
    started = time.perf_counter()
    try:
        await asyncio.gather(*(post(i) for i in range(count)))
        async with asyncio.timeout(TIME_LIMIT_S):
            await done.wait()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    took = last - started
    answered = count - refused - failed
    return {
        "turns": count,
        "refused": refused,
        "failed": failed,
        "seconds": took,
        "turns_per_s": answered / took,
    }


# Throughput over several instances


async def throughput_cluster(
    count: int, env: dict[str, str], profile: dict[str, Any], workdir: Path, log: Any
) -> dict[str, Any]:
    """``count`` relays on one PostgreSQL and Redis (all on CPU 0), ``--workers`` workers (on
    CPU 1) spread round robin over them; turns posted round robin to the relays."""
    import instances
    from cpu_quota import Quota

    servers = instances.start_cluster(count, workdir, env)
    workers: list[subprocess.Popen[bytes]] = []
    quota = Quota(profile["relay_cpu"]) if profile.get("relay_cpu") else None
    try:
        if quota is not None:
            for server in servers:
                quota.add(server.proc.pid)
        key = servers[0].publish_token
        auth = {"Authorization": f"Bearer {key}"}
        for n in range(profile["workers"]):
            server = servers[n % count]
            folder = workdir / f"worker-{count}-{n}"
            folder.mkdir()
            workers.append(start_worker(server, profile["capacity"], folder))
        clients = [httpx.AsyncClient(base_url=s.url, timeout=30) for s in servers]
        try:
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            async with asyncio.timeout(30):
                while True:
                    r = await clients[0].get("/v1/admin/workers", headers=admin)
                    if r.status_code == 200 and len(r.json()["items"]) >= len(workers):
                        break
                    await asyncio.sleep(0.1)
            chats = []
            for _ in range(profile["chats"]):
                r = await clients[0].post("/v1/chats", json={"title": "bench"}, headers=auth)
                r.raise_for_status()
                chats.append(r.json()["id"])
            # One subscriber, on the first instance: the other instances' events reach it
            # through Redis.
            ws = await subscriber(servers[0], key, [f"chat:{c}" for c in chats])
            try:
                await run_turns(clients, ws, auth, chats, len(chats))  # warm-up
                pids = [s.proc.pid for s in servers] + [w.pid for w in workers]
                before = {pid: cpu_seconds(pid) for pid in pids}
                spy = start_profiler(servers[0].proc.pid, profile.get("profile_to"))
                try:
                    result = await run_turns(clients, ws, auth, chats, profile["turns"])
                finally:
                    stop_profiler(spy)
                took = result["seconds"]
                used = {pid: (cpu_seconds(pid) - t) / took for pid, t in before.items()}
                result["cpu"] = {
                    "relays": sum(used[s.proc.pid] for s in servers),
                    "workers": sum(used[w.pid] for w in workers),
                }
                result["instances"] = count
                if quota is not None:
                    result["throttled_s"] = quota.throttled_s()
                log(
                    f"{count} instance(s): {result['turns_per_s']:.0f} turns/s, relays "
                    f"{result['cpu']['relays']:.0%} of a core"
                )
                return result
            finally:
                await ws.close()
        finally:
            for c in clients:
                await c.aclose()
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.wait(15)
        instances.stop_all(servers)
        if quota is not None:
            quota.close()


def cluster_report(results: list[dict[str, Any]], profile: dict[str, Any], command: str) -> str:
    base = results[0]["turns_per_s"]
    quota = bool(profile.get("relay_cpu"))
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}).",
        "",
        "| relay instances | turns/s | vs one | relays' CPU (cores) | workers' CPU (cores) "
        "| failed / refused |" + (" relays held by their quota (s) |" if quota else ""),
        "|---|---|---|---|---|---|" + ("---|" if quota else ""),
    ]
    for r in results:
        lines.append(
            f"| {r['instances']} | {r['turns_per_s']:.0f} | {r['turns_per_s'] / base:.2f}x "
            f"| {r['cpu']['relays']:.2f} | {r['cpu']['workers']:.2f} "
            f"| {r['failed']} / {r['refused']} |"
            + (f" {r['throttled_s']:.1f} |" if "throttled_s" in r else "")
        )
    lines += [
        "",
        f"{profile['turns']} turns over {profile['chats']} chats, {profile['workers']} workers "
        f"(built-in model at zero delay, capacity {profile['capacity']} each) spread round robin "
        "over the instances, posts round robin to the instances, one subscriber on the first. "
        "Every relay pinned to CPU 0, workers and driver on CPU 1; PostgreSQL and Redis are the "
        "machine's services (not pinned).",
    ]
    share = profile.get("relay_cpu")
    if share:
        lines[-1] += (
            f" Each relay in a CPU cgroup of its own with a quota of {share:g} of a core "
            f"(bench/cpu_quota.py, a {PERIOD_US // 1000} ms period): every instance gets the "
            "same share, so N instances have N times one's CPU."
        )
    else:
        lines[-1] += " The instances share CPU 0: the same budget in every case."
    return "\n".join(lines)


# Delta latency


async def delta_latency(server: Server, profile: dict[str, Any]) -> dict[str, Any]:
    key = server.publish_token
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        worker = await connect(
            f"ws://127.0.0.1:{server.port}{WORKER_PATH}",
            additional_headers=signed_headers(KEY_ID, SECRET, "GET", WORKER_PATH),
            compression=None,
        )
        await worker.send(json.dumps({"type": "hello", "worker_id": "bench", "capacity": 1}))
        json.loads(await worker.recv())  # welcome
        r = await client.post("/v1/chats", json={"title": "latency"}, headers=auth)
        r.raise_for_status()
        chat = r.json()["id"]
        ws = await subscriber(server, key, [f"chat:{chat}"])
        r = await client.post(
            f"/v1/chats/{chat}/messages", json={"content": "measure"}, headers=auth
        )
        r.raise_for_status()
        while True:
            frame = json.loads(await worker.recv())
            if frame["type"] == "turn.assigned":
                break
        base = {"type": "turn.delta", "turn_id": frame["turn_id"], "attempt": frame["attempt"]}
        samples_ns: list[int] = []
        events = 0
        total = profile["deltas"]
        warmup = total // 10

        async def receive() -> None:
            nonlocal events
            seen = 0
            async for raw in ws:
                now = time.perf_counter_ns()
                msg = json.loads(raw)
                if msg.get("type") == "message.completed":
                    return
                if msg.get("type") != "message.delta":
                    continue
                events += 1
                for stamp in msg["data"]["text"].split(";")[:-1]:
                    seen += 1
                    if seen > warmup:
                        samples_ns.append(now - int(stamp))

        reader = asyncio.create_task(receive())
        interval = 1.0 / profile["rate"]
        started = time.perf_counter()
        for i in range(total):
            delay = started + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await worker.send(json.dumps({**base, "text": f"{time.perf_counter_ns()};"}))
        await worker.send(json.dumps({**base, "type": "turn.done", "usage": {}}))
        async with asyncio.timeout(60):
            await reader
        await ws.close()
        await worker.close()
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "deltas": total - warmup,
        "events": events,
        "rate": profile["rate"],
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[int(len(ms) * 0.99) - 1],
        "max_ms": ms[-1],
    }


# Report


def report(
    results: dict[str, Any],
    profile: dict[str, Any],
    command: str,
    took: float,
    load: dict[int, float],
) -> str:
    t, runs = results["throughput"], results["latency"]
    d = sorted(runs, key=lambda r: r["p99_ms"])[len(runs) // 2]
    each = "; ".join(f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms" for r in runs)
    background = ", ".join(f"CPU {c} {v:.0%}" for c, v in sorted(load.items()))
    found = versions()
    return "\n".join(
        [
            BEGIN,
            "## Turns",
            "",
            f"Command: `{command}` (took {took:.0f} s, {time.strftime('%Y-%m-%d')}).",
            "",
            f"Machine: {machine()}. "
            + ", ".join(f"{k} {found[k]}" for k in ("python", "uvicorn", "uvloop", "websockets"))
            + ". Relay on CPU 0; worker and driver on CPU 1 (separate processes). "
            + f"Background load before the run: {background}.",
            "",
            "| measure | result |",
            "|---|---|",
            f"| turns/s, relay + worker, built-in model at zero delay | {t['turns_per_s']:.0f} |",
            f"| delta latency, worker send → subscriber receipt, p50 / p99 | "
            f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f} ms (max {d['max_ms']:.2f}) |",
            "",
            f"Throughput: {t['turns']} turns over {profile['chats']} chats, worker capacity "
            f"{profile['capacity']}, {'PostgreSQL' if profile.get('postgres') else 'SQLite'} "
            f"store, in {t['seconds']:.1f} s; {t['failed']} failed, "
            f"{t['refused']} posts refused with a 5xx (not counted as answered). "
            "CPU busy during the run: "
            + ", ".join(f"{name} {share:.0%}" for name, share in t["cpu"].items())
            + f"; other work on the relay's core {t['other_on_relay_core']:.0%}. "
            "A built-in answer is ~80 words, each a `turn.delta` frame, coalesced by the relay "
            "into `message.delta` events (default 40 ms / 1024 characters). "
            + store_note(profile, t["cpu"].get("relay", 0.0)),
            "",
            f"Latency: {d['deltas']} deltas at {d['rate']:.0f}/s to one subscriber, "
            f"`RELAYLINE_DELTA_COALESCE_MS=0` (they arrived in {d['events']} events), after "
            "10% warm-up. Send and receipt times come from one clock, in the driver process, "
            "so the figure includes two loopback hops and the driver's own work. "
            f"{len(runs)} runs, each on a fresh relay; the table shows the median run by p99 "
            f"(p50 / p99 of each: {each}). A p99 far above the p50 comes from a single pause "
            "that holds up the deltas queued behind it, mostly other processes on the relay's "
            "core of this shared machine.",
            END,
        ]
    )


def store_note(profile: dict[str, Any], relay_cpu: float) -> str:
    """What limits the throughput run, and what a turn costs the store, for the run's store."""
    limit = (
        "The relay's core is the limit"
        if relay_cpu >= 0.9
        else "The relay's core is not full (the store's server, the worker and the driver "
        "share the machine's cores with it)"
    )
    if profile.get("postgres"):
        return (
            f"{limit}; each turn costs three PostgreSQL write transactions (the message, the "
            "attempt, the answer) besides the frames, each a round trip to the server. A post "
            "that cannot get the store in time is answered 503 `unavailable` with "
            "`Retry-After`: those are the refused ones."
        )
    return (
        f"{limit}; each turn costs it three SQLite write transactions (the message, the "
        "attempt, the answer) besides the frames, and the relay's writers take turns on one "
        "lock. A post that still cannot get the store in time (another process holding it "
        "past the 5 s busy timeout) is answered 503 `unavailable` with `Retry-After`: those "
        "are the refused ones."
    )


def write_doc(section: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md; leave the rest as it is."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(head + section + tail)
    else:
        DOC.write_text(text.rstrip() + "\n\n" + section + "\n")


@contextlib.asynccontextmanager
async def store_url(server: str | None) -> AsyncIterator[dict[str, str]]:
    """The relay's store for the throughput run: a fresh SQLite file (the relay's default in
    the bench), or a database created on the PostgreSQL ``server`` and dropped afterwards."""
    if not server:
        yield {}
        return
    import asyncpg

    name = "relayline_bench_" + secrets.token_hex(4)
    admin = server.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield {"RELAYLINE_DATABASE_URL": admin.rsplit("/", 1)[0] + "/" + name}
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def measure(profile: dict[str, Any], workdir: Path, log: Any) -> dict[str, Any]:
    from relayline.testing import free_port

    # One subscriber watches every chat, so it may subscribe faster than a browser would.
    env = {"RELAYLINE_WORKER_KEYS": f"{KEY_ID}:{SECRET}", "RELAYLINE_WS_OP_BURST": "1000"}
    results: dict[str, Any] = {}
    log("throughput: relay + worker processes")
    async with store_url(profile.get("postgres")) as url:
        server = start_relay(free_port(), workdir, {**env, **url})
        try:
            results["throughput"] = await throughput(server, profile, workdir)
        except BaseException:
            server.stop()
            assert server.log is not None
            log("relay log, last lines:\n" + server.log.read_text(errors="replace")[-4000:])
            raise
        finally:
            server.stop()
    log(f"throughput: {results['throughput']['turns_per_s']:.0f} turns/s")
    results["latency"] = []
    for run in range(profile["latency_runs"]):
        log(f"latency {run + 1}: relay with delta coalescing off")
        server = start_relay(free_port(), workdir, {**env, "RELAYLINE_DELTA_COALESCE_MS": "0"})
        try:
            found = await delta_latency(server, profile)
        finally:
            server.stop()
        results["latency"].append(found)
        log(f"latency {run + 1}: p50 {found['p50_ms']:.2f} ms, p99 {found['p99_ms']:.2f} ms")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts; prints only")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPUs idle",
    )
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="sample the relay with py-spy during the measured turns; folded stacks to PATH "
        "(summarise with bench/profile_breakdown.py)",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run the throughput part on PostgreSQL: a fresh database created on this server "
        "(e.g. postgresql://postgres@127.0.0.1:5432/test) and dropped afterwards",
    )
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="instead: CHATS answers streaming at once, SUBSCRIBERS WebSockets watching each "
        "(bench/concurrent_turns.py); prints its table",
    )
    parser.add_argument(
        "--instances",
        metavar="N,M",
        help="with --postgres: the throughput part only, on N then M... relays sharing the "
        "database and Redis (RELAYLINE_REDIS_URL from --redis-url); prints its table",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--workers", type=int, default=3, help="with --instances")
    parser.add_argument(
        "--relay-cpu",
        type=float,
        metavar="SHARE",
        help="with --instances: each relay gets SHARE of a core (a CPU cgroup quota of its own; "
        "root), so N instances have N times one's CPU",
    )
    parser.add_argument("--chats", type=int, default=1000, help="with --concurrent")
    parser.add_argument("--subscribers", type=int, default=2, help="with --concurrent")
    parser.add_argument("--words", type=int, default=300, help="with --concurrent: per answer")
    parser.add_argument(
        "--delay", type=float, default=1 / 30, help="with --concurrent: seconds between words"
    )
    parser.add_argument(
        "--stagger",
        action="store_true",
        help="with --concurrent: each answer starts at a random point of its first word's "
        "interval (by default every answer's words leave the worker in step)",
    )
    parser.add_argument(
        "--coalesce-ms",
        type=int,
        help="with --concurrent: the relay's RELAYLINE_DELTA_COALESCE_MS (default: its default)",
    )
    args = parser.parse_args()
    if args.concurrent and args.postgres:
        parser.error("--concurrent runs on SQLite only")
    if args.concurrent:
        concurrent(args)
        return
    if args.relay_cpu and not args.instances:
        parser.error("--relay-cpu goes with --instances")
    if args.instances:
        if not args.postgres:
            parser.error("--instances needs --postgres")
        if args.relay_cpu:
            from cpu_quota import available, share_error

            why = share_error(args.relay_cpu) or available()
            if why is not None:
                parser.error(f"--relay-cpu: {why}")
        cluster(args)
        return
    profile = {
        **PROFILES["quick" if args.quick else "full"],
        "profile_to": args.profile,
        "postgres": args.postgres,
    }
    pin(1)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    load = wait_quiet(args.wait_quiet, log)
    with tempfile.TemporaryDirectory(prefix="relayline-bench-") as tmp:
        results = asyncio.run(measure(profile, Path(tmp), log))
    command = ("python bench/turns.py " + shlex.join(sys.argv[1:])).strip()
    section = report(results, profile, command, time.monotonic() - started, load)
    print(section)
    if not args.quick and not args.no_doc:
        write_doc(section)


def cluster(args: argparse.Namespace) -> None:
    import instances

    counts = [int(n) for n in args.instances.split(",") if n.strip()]
    profile = {
        **PROFILES["quick" if args.quick else "full"],
        "workers": args.workers,
        "relay_cpu": args.relay_cpu,
        "profile_to": args.profile,  # the first instance's
    }
    pin(1)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    admin_url = args.postgres.replace("postgresql+asyncpg://", "postgresql://")
    results = []
    with tempfile.TemporaryDirectory(prefix="relayline-bench-") as tmp:
        for count in counts:
            wait_quiet(args.wait_quiet, log)
            work = Path(tmp) / f"case-{count}"
            work.mkdir()
            with instances.shared_backends(admin_url, args.redis_url, work, log) as backends:
                env = {
                    **backends.relay_env(count),
                    "RELAYLINE_WORKER_KEYS": f"{KEY_ID}:{SECRET}",
                    "RELAYLINE_WS_OP_BURST": "1000",
                }
                results.append(asyncio.run(throughput_cluster(count, env, profile, work, log)))
    command = ("python bench/turns.py " + shlex.join(sys.argv[1:])).strip()
    print(cluster_report(results, profile, command))


def concurrent(args: argparse.Namespace) -> None:
    import resource

    import concurrent_turns

    # Two sockets per subscriber on this machine (ours and the relay's), and the worker's.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    pin(1)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    wait_quiet(args.wait_quiet, log)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="relayline-bench-") as tmp:
        # On uvloop, as the fan-out bench's load generator: this driver shares its core with the
        # worker, and every CPU second it spends is a wait for the worker's words.
        found = uvloop.run(concurrent_turns.run(args, Path(tmp), log))
    print(json.dumps(found, indent=1), file=sys.stderr)
    command = ("python bench/turns.py " + shlex.join(sys.argv[1:])).strip()
    print(concurrent_turns.report(found, command))
    if found["lost"] or found["doubled"] or found["answered"] < found["chats"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
