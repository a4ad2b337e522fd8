"""Relay and worker *processes* for scale-out tests, and a client that follows one chat across
relay instances.

``Cluster`` starts ``relayline serve`` processes sharing one PostgreSQL database and one Redis
key prefix, and ``relayline worker`` processes; everything it started is killed at the end.
``Watcher`` is a client as a browser tab behaves: it keeps its chat's last ``(epoch, seq)``, and
when its connection drops it moves to the next instance and resumes from there; it records
gaps, duplicates and ``events.missed`` instead of hiding them, and on ``events.missed`` it
reloads the chat's snapshot as the web UI does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

import relayline
from relayline.testing import free_port
from tests.scaleout.test_shared_instances import REDIS

SOURCE_ROOT = str(Path(relayline.__file__).resolve().parents[1])
ADMIN_KEY = "admin-" + "k" * 40
WORKER_KEY = ("procs", "s" * 40)
Frame = dict[str, Any]


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.05)


@dataclass
class RelayProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def kill(self) -> None:
        """Die at once (SIGKILL): no drain, no goodbye to clients, workers or Redis."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Cluster:
    def __init__(
        self, workdir: Path, database_url: str, redis_url: str = REDIS, **settings: str
    ) -> None:
        self.workdir = workdir
        self.prefix = f"rlproc:{secrets.token_hex(4)}:"
        self.redis_url = redis_url
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "PYTHONPATH": SOURCE_ROOT,
            "RELAYLINE_DATABASE_URL": database_url,
            "RELAYLINE_REDIS_URL": redis_url,
            "RELAYLINE_REDIS_PREFIX": self.prefix,
            "RELAYLINE_ADMIN_KEY": ADMIN_KEY,
            "RELAYLINE_WORKER_KEYS": f"{WORKER_KEY[0]}:{WORKER_KEY[1]}",
            "RELAYLINE_INSTANCES": "3",
            "RELAYLINE_TURN_LEASE_S": "2",
            "RELAYLINE_SHUTDOWN_DRAIN_S": "1",
            "RELAYLINE_LOG_FORMAT": "json",
            **{f"RELAYLINE_{name.upper()}": value for name, value in settings.items()},
        }
        self.relays: list[RelayProcess] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "relayline", *args],
                env=env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    async def start_relays(self, count: int) -> list[RelayProcess]:
        started = []
        for _ in range(count):
            name = "abcdefgh"[len(self.relays)]
            port = free_port()
            log = self.workdir / f"relay-{name}.log"
            proc = self._spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], self.env, log)
            relay = RelayProcess(name, port, proc, log)
            self.relays.append(relay)
            started.append(relay)
        for relay in started:
            await self.wait_ready(relay)
        return started

    async def wait_ready(self, relay: RelayProcess, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=relay.url, timeout=2) as http:
            while True:
                if relay.proc.poll() is not None:
                    raise AssertionError(f"relay {relay.name} exited:\n{relay.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/health/ready")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"relay {relay.name} not ready:\n{relay.log_tail()}")
                await asyncio.sleep(0.1)

    def start_worker(
        self, relays: list[RelayProcess], delay_s: float = 0.05, **settings: str
    ) -> subprocess.Popen[bytes]:
        workspace = self.workdir / "workspace"
        workspace.mkdir(exist_ok=True)
        env = {
            **{k: v for k, v in self.env.items() if not k.startswith("RELAYLINE_")},
            "RELAYLINE_RELAY_URL": ",".join(r.url for r in relays),
            "RELAYLINE_WORKER_KEY_ID": WORKER_KEY[0],
            "RELAYLINE_WORKER_SECRET": WORKER_KEY[1],
            "RELAYLINE_WORKER_CAPACITY": "2",
            "RELAYLINE_LOCAL_MODEL_DELAY_S": str(delay_s),
            "RELAYLINE_RECONNECT_BASE_S": "0.2",
            "RELAYLINE_RECONNECT_MAX_S": "1",
            "RELAYLINE_WORKSPACE_ROOTS": str(workspace),
            "RELAYLINE_LOG_FORMAT": "json",
            **{f"RELAYLINE_{name.upper()}": value for name, value in settings.items()},
        }
        return self._spawn(["worker"], env, self.workdir / "worker.log")

    async def wait_worker(self, relay: RelayProcess, timeout: float = 30) -> None:
        async with httpx.AsyncClient(base_url=relay.url, timeout=2, headers=admin()) as http:

            async def connected() -> bool:
                r = await http.get("/v1/admin/workers")
                return r.status_code == 200 and len(r.json()["items"]) > 0

            deadline = time.monotonic() + timeout
            while not await connected():
                if time.monotonic() > deadline:
                    log = (self.workdir / "worker.log").read_text(errors="replace")
                    raise AssertionError(f"no worker on {relay.name}:\n{log[-3000:]}")
                await asyncio.sleep(0.1)

    async def tenant_key(self, relay: RelayProcess) -> str:
        async with httpx.AsyncClient(base_url=relay.url, timeout=10, headers=admin()) as http:
            r = await http.post("/v1/admin/tenants", json={"name": f"t-{secrets.token_hex(3)}"})
            assert r.status_code == 201, r.text
            r = await http.post(f"/v1/admin/tenants/{r.json()['id']}/keys", json={})
            assert r.status_code == 201, r.text
            key: str = r.json()["key"]
            return key

    async def chat(self, relay: RelayProcess, key: str) -> str:
        async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
            r = await http.post("/v1/chats", json={}, headers=bearer(key))
        assert r.status_code == 201, r.text
        chat_id: str = r.json()["id"]
        return chat_id

    async def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 5)
        with contextlib.suppress(Exception):
            import redis.asyncio as aredis

            client = aredis.Redis.from_url(self.redis_url)
            keys = [k async for k in client.scan_iter(match=f"{self.prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


def admin() -> dict[str, str]:
    return bearer(ADMIN_KEY)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post_raw(
    relay: RelayProcess, key: str, chat: str, content: str, **extra: str
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        return await http.post(
            f"/v1/chats/{chat}/messages", json={"content": content, **extra}, headers=bearer(key)
        )


async def post(relay: RelayProcess, key: str, chat: str, content: str) -> str:
    """Post a user message; the id of the turn it started."""
    r = await post_raw(relay, key, chat, content)
    assert r.status_code == 202, r.text
    turn_id: str = r.json()["turn_id"]
    return turn_id


async def stored_messages(relay: RelayProcess, key: str, chat: str) -> list[Frame]:
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        r = await http.get(f"/v1/chats/{chat}/messages", params={"limit": 200}, headers=bearer(key))
    assert r.status_code == 200, r.text
    items: list[Frame] = r.json()["items"]
    return items


def apply(rendered: dict[str, tuple[str, str]], event: Frame) -> bool:
    """Fold one chat event into ``message id -> (role, content)``, as the web UI does; False
    when a delta starts past the end of what is shown (a gap: reload the snapshot)."""
    kind, data = event["type"], event["data"]
    if kind == "message.created":
        message = data["message"]
        rendered[message["id"]] = (message["role"], message["content"])
    elif kind == "turn.started":  # an attempt's answer starts from scratch
        rendered[data["message_id"]] = ("assistant", "")
    elif kind == "message.delta":
        _, have = rendered.get(data["message_id"], ("assistant", ""))
        offset, text = data["offset"], data["text"]
        if offset > len(have):
            return False
        if offset + len(text) > len(have):
            rendered[data["message_id"]] = ("assistant", have + text[len(have) - offset :])
    elif kind == "message.completed":
        rendered[data["message_id"]] = ("assistant", data["content"])
    return True


def render(events: list[Frame]) -> dict[str, tuple[str, str]]:
    rendered: dict[str, tuple[str, str]] = {}
    for event in events:
        assert apply(rendered, event), f"delta past the end of its message: {event}"
    return rendered


class Watcher:
    """One client of one chat that survives relay instances going away (see the module
    docstring). ``events`` holds the chat's events in arrival order; ``rendered`` is what a
    browser would show: the snapshot it last loaded with every later event folded in."""

    def __init__(
        self, name: str, relays: list[RelayProcess], first: int, key: str, chat: str
    ) -> None:
        self.name = name
        self.relays = relays
        self.index = first
        self.key = key
        self.chat = chat
        self.topic = f"chat:{chat}"
        self.events: list[Frame] = []
        self.rendered: dict[str, tuple[str, str]] = {}
        self.epoch: str | None = None
        self.seq = 0
        self.subscribed = False
        self.connections = 0
        self.missed = 0
        self.reloads_for_gaps = 0
        self.reload_failures = 0
        self.gaps: list[tuple[int, int]] = []
        self.duplicates: list[str] = []
        self.close_codes: list[int] = []
        self._seen: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def has(self, type: str, turn_id: str) -> bool:
        return any(e["type"] == type and e["data"].get("turn_id") == turn_id for e in self.events)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            relay = self.relays[self.index % len(self.relays)]
            try:
                await self._session(relay)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
                    self.close_codes.append(exc.rcvd.code)
                if isinstance(exc, InvalidStatus):
                    self.close_codes.append(exc.response.status_code)
            self.index += 1
            await asyncio.sleep(0.1)

    async def _session(self, relay: RelayProcess) -> None:
        async with connect(
            relay.ws_url,
            subprotocols=["relayline.v1", f"bearer.{self.key}"],  # type: ignore[list-item]
            open_timeout=5,
            ping_interval=None,
            compression=None,
        ) as ws:
            self.connections += 1
            subscribe: Frame = {"op": "subscribe", "ref": 1, "topic": self.topic}
            if self.epoch is not None:
                subscribe.update(epoch=self.epoch, after_seq=self.seq)
            await ws.send(json.dumps(subscribe))
            async for raw in ws:
                await self._on_frame(json.loads(raw), relay)
            raise ConnectionClosed(ws.protocol.close_rcvd, ws.protocol.close_sent)

    async def _on_frame(self, frame: Frame, relay: RelayProcess) -> None:
        if frame.get("type") == "ack" and frame.get("ref") == 1:
            if self.epoch is None:
                self.epoch, self.seq = frame["data"]["epoch"], frame["data"]["seq"]
                await self._reload(relay)
            self.subscribed = True
            return
        if frame.get("topic") != self.topic or "seq" not in frame:
            return
        if frame["type"] == "events.missed":
            self.missed += 1
            self.epoch, self.seq = frame["data"]["epoch"], frame["seq"]
            await self._reload(relay)
            return
        if frame["seq"] != self.seq + 1:
            self.gaps.append((self.seq, frame["seq"]))
        if frame["id"] in self._seen:
            self.duplicates.append(frame["id"])
        self._seen.add(frame["id"])
        self.seq = frame["seq"]
        self.events.append(frame)
        if not apply(self.rendered, frame):
            self.reloads_for_gaps += 1
            await self._reload(relay)

    async def _reload(self, relay: RelayProcess) -> None:
        """Load the snapshot (stored messages and the answer in progress so far), retrying
        while the relay answers 503, as the web UI does."""
        for attempt in range(100):
            try:
                async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
                    r = await http.get(f"/v1/chats/{self.chat}", headers=bearer(self.key))
                    r.raise_for_status()
                    snapshot = r.json()
                    messages = await stored_messages(relay, self.key, self.chat)
                break
            except (httpx.HTTPError, AssertionError):
                self.reload_failures += 1
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
        else:
            raise AssertionError(f"{self.name}: the snapshot could not be loaded")
        self.rendered = {m["id"]: (m["role"], m["content"]) for m in messages}
        if snapshot.get("partial_message_id"):
            partial = snapshot["partial_text"] or ""
            self.rendered[snapshot["partial_message_id"]] = ("assistant", partial)
