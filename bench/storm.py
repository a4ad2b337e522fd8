"""Reconnect storm: many subscribed clients, one relay restart, how fast everyone is back.

    .venv/bin/python bench/storm.py --quick                 # 1,000 clients, in-process bus;
                                                            # prints only
    .venv/bin/python bench/storm.py --wait-quiet 120        # 10,000 clients; rewrites its own
                                                            # section of docs/benchmarks.md
    .venv/bin/python bench/storm.py --bus redis --quick     # Redis bus + PostgreSQL store
    .venv/bin/python bench/storm.py --bus redis --instances 3   # the storm on one of three

One relay (``relayline serve``, pinned to CPU 0, 127.0.0.1 only) and ``--clients`` WebSockets
spread over ``--chats`` chats, each subscribed to its chat's topic with a session token of its
own for that chat. The clients run in ``--workers`` processes (pinned to CPU 1, each an asyncio loop
with its share of the clients). Then the relay gets SIGTERM (it closes every socket with 1012)
and a new ``relayline serve`` starts on the same port and the same database. The clients
follow the design's reconnect rules with the web UI's numbers (``reconnect.js``): after 1012 wait
uniform in [0, 3 s], after a failed attempt n wait uniform in [0, min(30 s, 0.5 s * 2^n)];
subscribe again with ``epoch`` + ``after_seq``; on ``events.missed`` reload the chat snapshot
(``GET /v1/chats/{id}``). A client is resumed once its subscription is acknowledged (and, after
``events.missed``, its snapshot loaded).

``--bus memory`` (default): SQLite store, in-process bus; the new relay has a new epoch, so every
client gets ``events.missed``. After everyone is resumed, ``--events`` events per chat are
published and every client must get each exactly once.

``--bus redis``: a fresh PostgreSQL database and a fresh Redis key prefix (both removed at the
end, as in ``bench/instances.py``). The driver publishes ``--rate`` events a second (round robin
over the chats, ``POST /v1/publish``) from before the restart until after everyone is resumed;
every client must then hold every accepted event after its first subscription exactly once:
the ones published while it was away come as a replay.

``--instances N`` (Redis bus only): N relays on the same PostgreSQL and Redis, all pinned to CPU 0
(one core shared, as one small machine would run them). Every client first connects to the first
instance, and only that one restarts; a client then reconnects to any instance (chosen at random
for each attempt, as a load balancer would spread them), and the publisher posts to the last one.

Every loop is bounded: connecting (``--bound`` seconds), the restart, the resume (``--bound``
seconds from SIGTERM; a client not resumed by then is reported stuck), the final delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import instances
from runner import describe_load, free_port, wait_quiet, write_doc
from servers import ADMIN_KEY, HOST, SECRET_KEY, gc_collections, machine, spawn_relay, versions
from turns import start_profiler, stop_profiler
from wsclient import HttpClient, WsClient, cpu_seconds, open_socket, rss_kb

from relayline import session_tokens

MARKERS = "<!-- storm:{bus}:begin -->", "<!-- storm:{bus}:end -->"  # one section per bus
# The web UI's policy (relayline/web/static/js/reconnect.js, RESTART_SPREAD_MS).
BASE_S, MAX_S, FACTOR, RESTART_SPREAD_S = 0.5, 30.0, 2.0, 3.0
CONNECT_CONCURRENCY = 200  # per worker, for the first connect only (the storm is unpaced)
STEP_TIMEOUT_S = 10.0  # one handshake, one subscribe, one snapshot GET
SNAPSHOT_CONNECTIONS = 16  # keep-alive HTTP connections per worker for snapshot reloads
Log = Callable[[str], None]


# -- the clients (in the worker processes) ----------------------------------------------------


@dataclass
class Peer:
    """One logical client: survives its sockets; what it saw, checked at the end."""

    index: int
    chat_id: str
    token: str
    epoch: str | None = None
    last_seq: int = 0
    first_seq: int = -1  # the topic's seq at the first acknowledged subscription
    seen: dict[str, list[int]] = field(default_factory=dict)  # epoch -> seqs received
    resumed_at: float = 0.0
    resumes: int = 0
    missed: int = 0
    gaps: int = 0

    @property
    def topic(self) -> str:
        return f"chat:{self.chat_id}"


class Conn(WsClient):
    """One socket of a peer: subscribes on open, records events and the subscribe answer."""

    def __init__(self, peer: Peer, port: int) -> None:
        super().__init__(HOST, port, "/v1/ws", ["relayline.v1", f"bearer.{peer.token}"])
        self.peer = peer
        self.answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_open(self) -> None:
        op: dict[str, Any] = {"op": "subscribe", "topic": self.peer.topic, "ref": 1}
        if self.peer.epoch is not None:
            op["epoch"], op["after_seq"] = self.peer.epoch, self.peer.last_seq
        self.send_text(json.dumps(op))

    def on_text(self, buf: bytes | bytearray, begin: int, start: int, end: int, now: int) -> None:
        frame = json.loads(bytes(buf[start:end]))
        kind = frame.get("type")
        peer = self.peer
        if kind in ("ack", "error"):
            if frame.get("ref") == 1 and not self.answer.done():
                self.answer.set_result(frame)
        elif kind == "events.missed":
            peer.missed += 1
            peer.epoch, peer.last_seq = frame["data"]["epoch"], frame["data"]["seq"]
        elif isinstance(kind, str) and kind.startswith("custom."):
            seq = frame["seq"]
            if peer.last_seq and seq != peer.last_seq + 1:
                peer.gaps += 1
            peer.last_seq = seq
            peer.seen.setdefault(peer.epoch or "", []).append(seq)


@dataclass
class WorkerStats:
    handshakes: list[float] = field(default_factory=list)  # monotonic times of 101s
    refused: Counter[str] = field(default_factory=Counter)  # why an attempt failed
    closes: Counter[int] = field(default_factory=Counter)  # close codes of open sockets
    snapshots: Counter[int] = field(default_factory=Counter)  # GET /v1/chats/{id} statuses
    subscribe_errors: Counter[str] = field(default_factory=Counter)


class Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.ports: list[int] = spec["ports"]
        self.port: int = self.ports[0]  # every first connect
        self.peers = [Peer(i, chat, token) for i, chat, token in spec["peers"]]
        self.stats = WorkerStats()
        self.stopping = False
        self.conns: dict[int, Conn] = {}
        self.http: asyncio.Queue[HttpClient] = asyncio.Queue()
        self.deadline = 0.0

    async def open_http(self) -> None:
        for _ in range(SNAPSHOT_CONNECTIONS):
            self.http.put_nowait(HttpClient(HOST, self.ports[-1]))

    async def snapshot(self, peer: Peer) -> bool:
        client = await self.http.get()
        try:
            for attempt in range(3):
                try:
                    status, _ = await asyncio.wait_for(
                        client.request(
                            "GET",
                            f"/v1/chats/{peer.chat_id}",
                            headers={"Authorization": f"Bearer {peer.token}"},
                        ),
                        STEP_TIMEOUT_S,
                    )
                except (OSError, TimeoutError):
                    client.close()
                    client = HttpClient(HOST, self.ports[-1])
                    status = 0
                self.stats.snapshots[status] += 1
                if status == 200:
                    return True
                await asyncio.sleep(random.uniform(0, BASE_S * FACTOR**attempt))
            return False
        finally:
            self.http.put_nowait(client)

    async def attempt(self, peer: Peer) -> Conn | None:
        """One connect + subscribe (+ snapshot); the open socket, or None (reason counted)."""
        loop = asyncio.get_running_loop()
        port = self.port if peer.resumes == 0 else random.choice(self.ports)
        try:
            sock = await asyncio.wait_for(open_socket(HOST, port), STEP_TIMEOUT_S)
        except ConnectionRefusedError:
            self.stats.refused["TCP refused (relay down)"] += 1
            return None
        except (OSError, TimeoutError) as exc:
            self.stats.refused[f"connect {type(exc).__name__}"] += 1
            return None
        conn = Conn(peer, port)
        try:
            await loop.create_connection(lambda: conn, sock=sock)
            await asyncio.wait_for(conn.opened, STEP_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            conn.abort()
            status = str(exc).split(" ")
            why = f"HTTP {status[1]}" if str(exc).startswith("HTTP/") else "handshake dropped"
            self.stats.refused[
                why if not isinstance(exc, TimeoutError) else "handshake timeout"
            ] += 1
            return None
        self.stats.handshakes.append(time.monotonic())
        either: set[asyncio.Future[Any]] = {conn.answer, conn.done}
        await asyncio.wait(either, timeout=STEP_TIMEOUT_S, return_when="FIRST_COMPLETED")
        if not conn.answer.done():
            if conn.done.done():
                self.stats.refused[f"closed {conn.done.result()} before the ack"] += 1
            else:
                conn.abort()
                self.stats.refused["subscribe timeout"] += 1
            return None
        answer = conn.answer.result()
        if answer["type"] != "ack":
            self.stats.subscribe_errors[str(answer.get("data", {}).get("code"))] += 1
            conn.close()
            return None
        data = answer["data"]
        if peer.first_seq < 0:
            peer.first_seq = data["seq"]
        if data.get("missed") and not await self.snapshot(peer):
            conn.close()
            return None
        peer.epoch = data["epoch"]
        peer.last_seq = max(peer.last_seq, data["seq"]) if not data.get("missed") else data["seq"]
        peer.resumed_at = time.monotonic()
        peer.resumes += 1
        return conn

    async def keep(self, peer: Peer, ready: asyncio.Semaphore | None) -> None:
        """A peer's life: connect, stay, come back after each close, until told to stop."""
        failures = 0
        delay = 0.0
        while not self.stopping and time.monotonic() < self.deadline:
            await asyncio.sleep(delay)
            if ready is not None:
                async with ready:
                    conn = await self.attempt(peer)
                ready = None
            else:
                conn = await self.attempt(peer)
            if conn is None:
                failures += 1
                delay = random.uniform(0, min(MAX_S, BASE_S * FACTOR**failures))
                continue
            failures = 0
            self.conns[peer.index] = conn
            code = await conn.done
            self.conns.pop(peer.index, None)
            if self.stopping:
                return
            self.stats.closes[code] += 1
            delay = (
                random.uniform(0, RESTART_SPREAD_S) if code == 1012 else random.uniform(0, BASE_S)
            )

    def status(self, since: float) -> dict[str, Any]:
        back = [p.resumed_at for p in self.peers if p.resumed_at > since and p.index in self.conns]
        return {"open": len(self.conns), "resumed": len(back), "last": max(back, default=0.0)}

    def finish(self, since: float, expected: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Every peer against the accepted events: lost, doubled, stuck."""
        lost = doubled = lossy = stuck = 0
        for peer in self.peers:
            if peer.resumed_at <= since:
                stuck += 1
            want = expected.get(peer.topic)
            if want is None:
                continue
            got = Counter(peer.seen.get(want["epoch"], []))
            should = [s for s in want["seqs"] if s > peer.first_seq]
            missing = sum(1 for s in should if got[s] == 0)
            lost += missing
            lossy += missing > 0
            doubled += sum(n - 1 for n in got.values() if n > 1)
        stats = self.stats
        return {
            "lost": lost,
            "doubled": doubled,
            "clients_with_loss": lossy,
            "stuck": stuck,
            "missed": sum(p.missed for p in self.peers),
            "gaps": sum(p.gaps for p in self.peers),
            "handshakes": [t for t in stats.handshakes if t > since],
            "resumes": [p.resumed_at for p in self.peers if p.resumed_at > since],
            "refused": dict(stats.refused),
            "closes": {str(k): v for k, v in stats.closes.items()},
            "snapshots": {str(k): v for k, v in stats.snapshots.items()},
            "subscribe_errors": dict(stats.subscribe_errors),
        }


def worker_main(pipe: Connection, cpu: int) -> None:
    """A worker process: waits for its clients' spec, then answers the driver's commands."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve_driver(pipe))


async def serve_driver(pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def read_commands() -> None:
        # A blocking read on a thread of its own: a command larger than the pipe's buffer (the
        # clients' spec) arrives in pieces, which a reader callback on the loop cannot wait for.
        while True:
            try:
                command = pipe.recv()
            except (EOFError, OSError):
                return
            loop.call_soon_threadsafe(commands.put_nowait, command)

    threading.Thread(target=read_commands, daemon=True).start()
    worker: Worker | None = None
    tasks: list[asyncio.Task[None]] = []
    while True:
        cmd, arg = await commands.get()
        if cmd == "connect":
            worker = Worker(arg)
            worker.deadline = arg["deadline"]
            await worker.open_http()
            gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
            tasks = [loop.create_task(worker.keep(p, gate)) for p in worker.peers]
            pipe.send("ok")
        elif cmd == "status":
            assert worker is not None
            pipe.send(worker.status(arg))
        elif cmd == "finish":
            assert worker is not None
            worker.stopping = True
            result = worker.finish(arg["since"], arg["expected"])
            for conn in list(worker.conns.values()):
                conn.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            pipe.send(result)
            return


# -- the driver ------------------------------------------------------------------------------


class Workers:
    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.pipes: list[Connection] = []
        self.procs = []
        for _ in range(count):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(theirs, 1 % (os.cpu_count() or 1)))
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    def ask(self, cmd: str, args: list[Any], timeout: float) -> list[Any]:
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((cmd, arg))
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError(f"a client worker did not answer {cmd} within {timeout:.0f} s")
            out.append(pipe.recv())
        return out

    def close(self) -> None:
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def provision(url: str, chats: int) -> tuple[str, str, list[str]]:
    """A tenant, its key and ``chats`` chats: (tenant id, key, [chat id])."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, timeout=30) as client:
        tenant = client.post("/v1/admin/tenants", json={"name": "storm"}, headers=admin)
        tenant.raise_for_status()
        tenant_id = tenant.json()["id"]
        made = client.post(f"/v1/admin/tenants/{tenant_id}/keys", json={}, headers=admin)
        made.raise_for_status()
        key = made.json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        out = []
        for n in range(chats):
            chat = client.post("/v1/chats", json={"title": f"storm {n}"}, headers=auth)
            chat.raise_for_status()
            out.append(chat.json()["id"])
        return tenant_id, key, out


def session_token(tenant_id: str, chat_id: str) -> str:
    """A session token of its own for one client, for one chat, as ``POST /v1/sessions`` mints
    it (same code, the relays' secret; minted here to spare 10,000 requests of set-up)."""
    token, _ = session_tokens.mint(SECRET_KEY, tenant_id, [chat_id], 86_400, int(time.time()))
    return token


@dataclass
class Publisher:
    """Events through ``POST /v1/publish``; what was accepted, per topic, and what was not."""

    url: str
    key: str
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    epoch_changes: int = 0

    async def one(self, client: httpx.AsyncClient, topic: str, n: int) -> None:
        body = {"topic": topic, "events": [{"type": "custom.storm", "data": {"n": n}}]}
        try:
            res = await client.post(
                "/v1/publish", json=body, headers={"Authorization": f"Bearer {self.key}"}
            )
        except httpx.HTTPError as exc:
            self.statuses[type(exc).__name__] += 1
            return
        self.statuses[str(res.status_code)] += 1
        if res.status_code != 202:
            return
        got = res.json()
        mine = self.accepted.setdefault(topic, {"epoch": got["epoch"], "seqs": []})
        if mine["epoch"] != got["epoch"]:
            self.epoch_changes += 1
            mine["epoch"], mine["seqs"] = got["epoch"], []
        mine["seqs"] += got["seqs"]

    async def burst(self, topics: list[str], per_topic: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=STEP_TIMEOUT_S) as client:
            for n in range(per_topic):
                await asyncio.gather(*(self.one(client, t, n) for t in topics))

    async def steady(self, topics: list[str], rate: float, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            n, start = 0, time.monotonic()
            while not stop.is_set():
                await self.one(client, topics[n % len(topics)], n)
                n += 1
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))


@dataclass
class Sampler:
    """The relay's RSS and CPU, every 0.2 s while it runs."""

    pid: int
    peak_kb: int = 0
    cpu_start: float = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(OSError):
            self.cpu_start = cpu_seconds(self.pid)
        while not stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            await asyncio.sleep(0.2)


def relay_errors(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("Traceback") + text.count('"level": "error"') + text.count("[error")


async def storm(args: argparse.Namespace, env: dict[str, str], work: Path, log: Log) -> Any:
    port = free_port()
    clients = args.clients
    workers = Workers(args.workers)
    out: dict[str, Any] = {"clients": clients, "chats": args.chats, "workers": args.workers}
    first_dir, second_dir = work / "before", work / "after"
    first_dir.mkdir()
    second_dir.mkdir()
    env = {**env}
    if args.bus == "memory":
        env["RELAYLINE_DATABASE_URL"] = f"sqlite:///{work / 'storm.db'}"
    proc, first_log = await asyncio.to_thread(spawn_relay, port, first_dir, env)
    new_proc: subprocess.Popen[bytes] | None = None
    others: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    try:
        for n in range(1, args.instances):
            other_dir = work / f"instance-{n}"
            other_dir.mkdir()
            other_port = free_port()
            other, other_log = await asyncio.to_thread(spawn_relay, other_port, other_dir, env)
            others.append((other_port, other, other_log))
        ports = [port] + [p for p, _, _ in others]
        url = f"http://{HOST}:{port}"
        tenant_id, key, chats = await asyncio.to_thread(provision, url, args.chats)
        topics = [f"chat:{c}" for c in chats]
        log(f"relay pid {proc.pid} on port {port}; {clients:,} clients over {len(chats)} chats")
        shares: list[list[Any]] = [[] for _ in range(args.workers)]
        for i in range(clients):
            chat = chats[i % len(chats)]
            shares[i % args.workers].append((i, chat, session_token(tenant_id, chat)))
        started = time.monotonic()
        overall = started + args.bound * 3 + 120
        specs = [{"ports": ports, "peers": s, "deadline": overall} for s in shares]
        await asyncio.to_thread(workers.ask, "connect", specs, 30)
        while True:
            status = await asyncio.to_thread(workers.ask, "status", [0.0] * args.workers, 30)
            resumed = sum(s["resumed"] for s in status)
            if resumed >= clients or time.monotonic() - started > args.bound:
                break
            await asyncio.sleep(0.5)
        out["connect_s"] = time.monotonic() - started
        out["connected"] = resumed
        out["rss_before_kb"] = rss_kb(proc.pid)
        log(
            f"{resumed:,} subscribed in {out['connect_s']:.1f} s; "
            f"relay {rss_kb(proc.pid) // 1024} MB"
        )
        if resumed < clients:
            raise RuntimeError(f"only {resumed} of {clients} clients subscribed")

        publisher = Publisher(f"http://{HOST}:{ports[-1]}", key)
        await publisher.burst(topics, 2)  # every topic has a seq to resume from
        stop_pub = asyncio.Event()
        pub_task = None
        if args.bus == "redis":
            pub_task = asyncio.create_task(publisher.steady(topics, args.rate, stop_pub))
            await asyncio.sleep(2.0)
        await asyncio.sleep(1.0)

        # The restart.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            out["old_relay_killed"] = True
        out["old_exit_s"] = time.monotonic() - t0
        out["old_exit_code"] = proc.returncode
        log(f"old relay exited ({proc.returncode}) {out['old_exit_s']:.1f} s after SIGTERM")
        new_env = {**env, "RELAYLINE_AUTO_MIGRATE": "false"}
        started_proc, second_log = await asyncio.to_thread(spawn_relay, port, second_dir, new_env)
        new_proc = started_proc
        out["new_healthy_s"] = time.monotonic() - t0
        log(f"new relay pid {started_proc.pid} healthy {out['new_healthy_s']:.1f} s after SIGTERM")
        spy = start_profiler(started_proc.pid, args.profile)
        gc_at_healthy = await asyncio.to_thread(gc_collections, port)
        sampler = Sampler(started_proc.pid)
        stop_sample = asyncio.Event()
        sample_task = asyncio.create_task(sampler.run(stop_sample))
        healthy_at = time.monotonic()
        others_cpu = [cpu_seconds(o.pid) for _, o, _ in others]
        while True:
            status = await asyncio.to_thread(workers.ask, "status", [t0] * args.workers, 30)
            resumed = sum(s["resumed"] for s in status)
            if resumed >= clients or time.monotonic() - t0 > args.bound:
                break
            await asyncio.sleep(0.25)
        last = max(s["last"] for s in status)
        out["resumed"] = resumed
        out["all_resumed_s"] = (last - t0) if resumed >= clients else None
        cpu_used = cpu_seconds(started_proc.pid) - sampler.cpu_start
        window_s = max(1e-9, (last if last else time.monotonic()) - healthy_at)
        out["relay_cpu_share"] = cpu_used / window_s
        out["others_cpu_share"] = [
            (cpu_seconds(o.pid) - c) / window_s
            for (_, o, _), c in zip(others, others_cpu, strict=True)
        ]
        out["others_rss_kb"] = [rss_kb(o.pid) for _, o, _ in others]
        stop_sample.set()
        await sample_task
        out["relay_peak_rss_kb"] = sampler.peak_kb
        gc_at_end = await asyncio.to_thread(gc_collections, port)
        out["gc_collections"] = {g: gc_at_end[g] - gc_at_healthy.get(g, 0) for g in gc_at_end}
        stop_profiler(spy)
        log(f"{resumed:,} of {clients:,} resumed; last {out['all_resumed_s']} s after SIGTERM")

        if args.bus == "memory":
            publisher.accepted.clear()
            await publisher.burst(topics, args.events)
        else:
            await asyncio.sleep(2.0)
            stop_pub.set()
            assert pub_task is not None
            await pub_task
        await asyncio.sleep(3.0)  # delivery of the last events
        expected = publisher.accepted
        finals = await asyncio.to_thread(
            workers.ask, "finish", [{"since": t0, "expected": expected}] * args.workers, 120
        )
        out["published"] = sum(len(v["seqs"]) for v in expected.values())
        out["publish_statuses"] = dict(publisher.statuses)
        out["publish_epoch_changes"] = publisher.epoch_changes
        for name in ("lost", "doubled", "clients_with_loss", "stuck", "missed", "gaps"):
            out[name] = sum(f[name] for f in finals)
        for name in ("refused", "closes", "snapshots", "subscribe_errors"):
            total: Counter[str] = Counter()
            for f in finals:
                total.update(f[name])
            out[name] = dict(total)
        back = sorted(t - t0 for f in finals for t in f["resumes"])
        if back:
            out["resume_p50_p90_p99_s"] = [back[int(q * (len(back) - 1))] for q in (0.5, 0.9, 0.99)]
        times = sorted(t for f in finals for t in f["handshakes"])
        out["handshakes"] = len(times)
        if len(times) > 1:
            out["handshakes_per_s"] = len(times) / max(1e-9, times[-1] - times[0])
            per_second = Counter(int(t - times[0]) for t in times)
            out["handshakes_peak_per_s"] = max(per_second.values())
            out["handshake_window_s"] = (times[0] - t0, times[-1] - t0)
        out["relay_log_errors"] = (
            relay_errors(first_log)
            + relay_errors(second_log)
            + sum(relay_errors(log) for _, _, log in others)
        )
        return out
    finally:
        for p in (proc, new_proc, *(o for _, o, _ in others)):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        workers.close()


def section_name(args: argparse.Namespace) -> str:
    return args.bus if args.instances == 1 else f"{args.bus}-{args.instances}"


def fives(r: dict[str, Any]) -> int:
    n = 0
    for table in ("snapshots", "publish_statuses"):
        n += sum(int(v) for k, v in r.get(table, {}).items() if k.isdigit() and int(k) >= 500)
    n += sum(int(v) for k, v in r.get("refused", {}).items() if k.startswith("HTTP 5"))
    return n


def counts(table: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(table.items())) or "none"


def report(
    r: dict[str, Any], args: argparse.Namespace, command: str, took: float, load: Any
) -> str:
    bus = (
        "in-process bus + SQLite"
        if args.bus == "memory"
        else f"Redis bus + PostgreSQL ({r['about']})"
    )
    resumed = r["all_resumed_s"]
    checked = "after the resume" if args.bus == "memory" else "across the restart"
    window = r.get("handshake_window_s", (0.0, 0.0))
    begin, end = (m.format(bus=section_name(args)) for m in MARKERS)
    lines = [
        begin,
        f"Command: `{command}` (took {took:.0f} s, {time.strftime('%Y-%m-%d')}).",
        "",
        f"Machine: {machine()}. python {versions()['python']}, uvicorn {versions()['uvicorn']}. "
        f"Relay on CPU 0; {args.workers} client processes and the driver on CPU 1. "
        f"Background load just before the run (other processes): {describe_load(load)}.",
        "",
        f"{r['clients']:,} clients over {r['chats']} chats, {bus}"
        + (
            f", {args.instances} instances (all on CPU 0; the clients first on the first one, "
            "which restarts; they come back to any of them)"
            if args.instances > 1
            else ""
        )
        + "; reconnect policy of the web UI "
        f"(after 1012 uniform in [0, {RESTART_SPREAD_S:.0f} s], then full jitter "
        f"{BASE_S} s x 2^n capped at {MAX_S:.0f} s).",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| first connect: {r['connected']:,} subscribed in | {r['connect_s']:.1f} s | |",
        f"| old relay exited after SIGTERM | {r['old_exit_s']:.1f} s "
        f"(exit code {r['old_exit_code']}) | |",
        f"| new relay healthy after SIGTERM | {r['new_healthy_s']:.1f} s | |",
        "| all clients resumed after SIGTERM | "
        + (f"{resumed:.1f} s" if resumed is not None else f"not all: {r['resumed']:,}")
        + " | ≤ 30 s |",
        "| clients resumed after SIGTERM: p50 / p90 / p99 | "
        + " / ".join(f"{x:.1f} s" for x in r.get("resume_p50_p90_p99_s", []))
        + " | |",
        f"| clients stuck (not resumed within {args.bound:.0f} s) | {r['stuck']:,} | 0 |",
        f"| handshakes after SIGTERM (101s) | {r['handshakes']:,}, from {window[0]:.1f} s to "
        f"{window[1]:.1f} s | |",
        f"| handshakes/s: mean over that window / peak second | "
        f"{r.get('handshakes_per_s', 0):,.0f} / {r.get('handshakes_peak_per_s', 0):,} | |",
        f"| new relay CPU, healthy → all resumed (share of one core) "
        f"| {r['relay_cpu_share']:.0%}"
        + "".join(f"; instance {n + 2}: {c:.0%}" for n, c in enumerate(r["others_cpu_share"]))
        + " | |",
        f"| relay RSS: old with all subscribed / new peak | {r['rss_before_kb'] / 1024:.0f} MB / "
        f"{r['relay_peak_rss_kb'] / 1024:.0f} MB | |",
        "| new relay's garbage collections, healthy → all resumed, by generation 0 / 1 / 2 | "
        + " / ".join(f"{r['gc_collections'].get(g, 0):,}" for g in ("0", "1", "2"))
        + " | |",
        f"| failed attempts, by reason | {counts(r['refused'])} | |",
        f"| close codes seen by open sockets | {counts(r['closes'])} | |",
        f"| subscribe errors | {counts(r['subscribe_errors'])} | |",
        f"| `events.missed` received / snapshot GETs (by status) | {r['missed']:,} / "
        f"{counts(r['snapshots'])} | |",
        f"| 5xx (handshakes, snapshots, publishes) | {fives(r)} | 0 |",
        f"| error lines in the relays' logs | {r['relay_log_errors']} | |",
        f"| events checked ({checked}) / all publishes by status "
        f"| {r['published']:,} / {counts(r['publish_statuses'])} | |",
        f"| events lost / doubled (client x event) | {r['lost']:,} / {r['doubled']:,} | 0 / 0 |",
        f"| clients with a loss | {r['clients_with_loss']:,} | 0 |",
        end,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 clients; prints only")
    parser.add_argument("--clients", type=int, help="default 10,000 (1,000 with --quick)")
    parser.add_argument("--chats", type=int, default=100)
    parser.add_argument("--workers", type=int, default=3, help="client processes")
    parser.add_argument("--bus", choices=("memory", "redis"), default="memory")
    parser.add_argument(
        "--instances", type=int, default=1, help="redis: relays; the first one restarts"
    )
    parser.add_argument("--events", type=int, default=3, help="memory: events per chat after")
    parser.add_argument("--rate", type=float, default=50.0, help="redis: events/s published")
    parser.add_argument("--bound", type=float, default=90.0, help="seconds for each phase")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy profile of the new relay until everyone is resumed (folded stacks)",
    )
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--redis-url", default=instances.REDIS_URL)
    parser.add_argument("--pg-admin-url", default=instances.PG_ADMIN_URL)
    args = parser.parse_args()
    if args.clients is None:
        args.clients = 1000 if args.quick else 10_000
    if args.clients < 1 or args.chats < 1 or not 1 <= args.workers <= 16:
        parser.error("need --clients ≥ 1, --chats ≥ 1 and 1 ≤ --workers ≤ 16")
    if not 1 <= args.instances <= 5 or (args.instances > 1 and args.bus != "redis"):
        parser.error("--instances is 1 to 5, and more than 1 needs --bus redis")
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = wait_quiet(args.wait_quiet, log)
    with tempfile.TemporaryDirectory(prefix="relayline-storm-") as tmp:
        work = Path(tmp)
        if args.bus == "memory":
            result = asyncio.run(storm(args, {}, work, log))
        else:
            with instances.shared_backends(args.pg_admin_url, args.redis_url, work, log) as b:
                result = asyncio.run(storm(args, b.relay_env(args.instances), work, log))
                result["about"] = b.about
    took = time.monotonic() - started
    command = ("python bench/storm.py " + shlex.join(sys.argv[1:])).strip()
    section = report(result, args, command, took, load)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.quick and not args.no_doc:
        write_doc(section, *(m.format(bus=section_name(args)) for m in MARKERS))


if __name__ == "__main__":
    main()
