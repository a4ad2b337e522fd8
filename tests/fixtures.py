"""The helpers that start relays, workers and clients for the tests, in one place (registered
for every test directory by ``pytest_plugins`` in tests/conftest.py).

- Relays in this event loop: ``start_relay`` (a factory), ``relay``, and a tenant with a key
  (``tenant``, :func:`new_tenant`) and an HTTP client (``http``).
- Turns: ``turn_relay`` (a relay that knows a worker key), real worker daemons run in this
  event loop (``workers``), and :class:`FakeWorker`, which speaks the worker protocol frame by
  frame; helpers to post messages and wait for answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relayline.protocol.generation import Generation
from relayline.protocol.signing import signed_headers
from relayline.testing import RelayServer, WsHarness
from relayline.worker.connection import PATH, RelayConnection
from relayline.worker.daemon import build_connection, probe_upstream
from relayline.worker.llm.base import (
    ChatMessage,
    LLMClient,
    StreamChunk,
    ToolChoice,
    ToolSpec,
)
from relayline.worker.settings import WorkerSettings
from tests.conftest import ADMIN_KEY, SettingsFactory


# Relays
@dataclass
class Tenant:
    id: str
    key: str
    http: httpx.AsyncClient

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def chat(self) -> str:
        r = await self.http.post("/v1/chats", json={"title": "t"}, headers=self.auth)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def session(self, chat_ids: list[str]) -> str:
        r = await self.http.post("/v1/sessions", json={"chat_ids": chat_ids}, headers=self.auth)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    async def publish(self, topic: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        r = await self.http.post(
            "/v1/publish", json={"topic": topic, "events": events}, headers=self.auth
        )
        assert r.status_code == 202, r.text
        body: dict[str, Any] = r.json()
        return body


RelayFactory = Callable[..., Awaitable[RelayServer]]


@pytest.fixture
async def start_relay(make_settings: SettingsFactory) -> AsyncIterator[RelayFactory]:
    servers: list[RelayServer] = []

    async def start(**overrides: Any) -> RelayServer:
        server = RelayServer(make_settings(**overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def relay(start_relay: RelayFactory) -> RelayServer:
    return await start_relay()


async def new_tenant(server: RelayServer, http: httpx.AsyncClient, name: str = "acme") -> Tenant:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = await http.post(f"{server.url}/v1/admin/tenants", json={"name": name}, headers=admin)
    assert r.status_code == 201, r.text
    tenant_id = r.json()["id"]
    r = await http.post(f"{server.url}/v1/admin/tenants/{tenant_id}/keys", json={}, headers=admin)
    assert r.status_code == 201, r.text
    return Tenant(tenant_id, r.json()["key"], http)


@pytest.fixture
async def http(relay: RelayServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as client:
        yield client


@pytest.fixture
async def tenant(relay: RelayServer, http: httpx.AsyncClient) -> Tenant:
    return await new_tenant(relay, http)


# Turns and workers
KEY_ID = "worker-key"
SECRET = "worker-secret-" + "z" * 24
Frame = dict[str, Any]


# Relay side


@pytest.fixture
def turn_relay(start_relay: RelayFactory) -> RelayFactory:
    """``await turn_relay(**settings)``: a relay that accepts the test worker key."""

    async def start(**overrides: Any) -> RelayServer:
        overrides.setdefault("worker_keys", [f"{KEY_ID}:{SECRET}"])
        return await start_relay(**overrides)

    return start


class Tenants:
    """Makes tenants on any relay of the test; closes their HTTP clients at teardown."""

    def __init__(self) -> None:
        self.clients: list[httpx.AsyncClient] = []

    async def new(self, relay: RelayServer, name: str = "acme") -> Tenant:
        return await new_tenant(relay, await self.client(relay), name)

    async def client(self, relay: RelayServer) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=relay.url, timeout=10)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def tenants() -> AsyncIterator[Tenants]:
    made = Tenants()
    yield made
    await made.close()


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


async def post(tenant: Tenant, chat_id: str, content: str) -> str:
    """Post a user message; return its turn id."""
    r = await tenant.http.post(
        f"/v1/chats/{chat_id}/messages", json={"content": content}, headers=tenant.auth
    )
    assert r.status_code == 202, r.text
    return str(r.json()["turn_id"])


async def messages(tenant: Tenant, chat_id: str) -> list[Frame]:
    r = await tenant.http.get(f"/v1/chats/{chat_id}/messages", headers=tenant.auth)
    assert r.status_code == 200, r.text
    items: list[Frame] = r.json()["items"]
    return items


async def answers(tenant: Tenant, chat_id: str) -> list[Frame]:
    return [m for m in await messages(tenant, chat_id) if m["role"] == "assistant"]


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0
) -> None:
    """Poll ``check`` until it holds; fail the test when it never does."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)


async def until_event(ws: WsHarness, type: str, timeout: float = 10.0, **data: Any) -> Frame:
    """Skip frames until an event of ``type`` whose data contains ``data`` arrives."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.expect(type, timeout)
            if all(frame["data"].get(k) == v for k, v in data.items()):
                return frame


async def completions(ws: WsHarness, *turn_ids: str, timeout: float = 10.0) -> dict[str, Frame]:
    """``message.completed`` of each of ``turn_ids``, in whatever order they come."""
    found: dict[str, Frame] = {}
    async with asyncio.timeout(timeout):
        while set(found) != set(turn_ids):
            frame = await ws.expect("message.completed", timeout)
            found[frame["data"]["turn_id"]] = frame
    return found


def dispatcher_of(relay: RelayServer) -> Any:
    return relay.app.http.state.relay.dispatcher


def local_answer(*history: tuple[str, str]) -> str:
    """What the built-in model answers to this conversation (it is deterministic)."""
    from relayline.worker.llm.local import respond

    text, _ = respond([ChatMessage.from_dict({"role": r, "content": c}) for r, c in history], set())
    return text


# Real workers


class SpyModel:
    """Wraps a model client: records what each call was offered and whether a stream was
    stopped before its end (a cancelled turn)."""

    def __init__(self, inner: LLMClient) -> None:
        self.inner = inner
        self.calls: list[tuple[list[ChatMessage], list[str]]] = []
        self.requests: list[tuple[str, Generation | None]] = []  # model and options per call
        self.active = 0
        self.max_active = 0
        self.stopped_early = 0
        self.finished = 0

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        model: str,
        options: Generation | None = None,
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[StreamChunk]:
        self.calls.append((list(messages), [t.name for t in tools]))
        self.requests.append((model, options))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        done = False
        chunks = (
            self.inner.stream(messages, tools, model=model, options=options)
            if tool_choice is None
            else self.inner.stream(
                messages, tools, model=model, options=options, tool_choice=tool_choice
            )
        )
        try:
            async for chunk in chunks:
                yield chunk
            done = True
        finally:
            self.active -= 1
            if done:
                self.finished += 1
            else:
                self.stopped_early += 1

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class RunningWorker:
    connection: RelayConnection
    model: SpyModel
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    @property
    def worker_id(self) -> str:
        return self.connection.worker_id

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: finish or hand back the turns, then return."""
        self.stop_event.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)

    async def kill(self) -> None:
        """Die at once, without handing anything back."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@dataclass
class Workers:
    workspace: Path
    running: list[RunningWorker] = field(default_factory=list)

    def settings(self, relay: RelayServer | str, **overrides: Any) -> WorkerSettings:
        values: dict[str, Any] = {
            "relay_url": relay if isinstance(relay, str) else relay.url,
            "worker_key_id": KEY_ID,
            "worker_secret": SECRET,
            "worker_capacity": 4,
            "local_model_delay_s": 0.002,
            "workspace_roots": [self.workspace],
            "reconnect_base_s": 0.05,
            "reconnect_max_s": 0.5,
            "shutdown_grace_s": 5.0,
            "state_interval_s": 5.0,
            "llm_probe": False,  # the fake upstream answers chat completions only
        }
        values.update(overrides)
        return WorkerSettings(_env_file=None, **values)

    async def start(
        self, relay: RelayServer | str, *, wait: bool = True, **overrides: Any
    ) -> RunningWorker:
        settings = self.settings(relay, **overrides)
        connection, llm = build_connection(settings)
        await probe_upstream(settings, llm)
        spy = SpyModel(llm)
        connection.runner.llm = spy
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(connection.run(stop))
        worker = RunningWorker(connection, spy, stop, task)
        self.running.append(worker)
        if wait:
            async with asyncio.timeout(10):
                await connection.connected.wait()
        return worker

    async def close(self) -> None:
        for worker in self.running:
            await worker.kill()
            await worker.model.aclose()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
async def workers(start_relay: RelayFactory, workspace: Path) -> AsyncIterator[Workers]:
    # Depends on start_relay so that workers stop before the relays they talk to.
    pool = Workers(workspace)
    yield pool
    await pool.close()


# A worker scripted frame by frame


class FakeWorker:
    """Speaks the worker protocol by hand: takes turns and sends exactly what a test says."""

    def __init__(
        self,
        relay: RelayServer,
        worker_id: str = "fake",
        capacity: int = 1,
        hello: Frame | None = None,
    ) -> None:
        self.relay = relay
        self.hello = hello or {}  # more fields for its hello
        self.worker_id = worker_id
        self.capacity = capacity
        self.ws: ClientConnection | None = None
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.seen: list[Frame] = []
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> Frame:
        url = self.relay.url.replace("http", "ws", 1) + PATH
        self.ws = await connect(
            url, additional_headers=signed_headers(KEY_ID, SECRET, "GET", PATH), open_timeout=5
        )
        await self.send(
            {"type": "hello", "worker_id": self.worker_id, "capacity": self.capacity, **self.hello}
        )
        welcome: Frame = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        assert welcome["type"] == "welcome", welcome
        self.worker_id = welcome["worker_id"]
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return welcome

    async def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                frame: Frame = json.loads(raw)
                self.seen.append(frame)
                await self.frames.put(frame)

    async def send(self, frame: Frame) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(frame))

    async def expect(self, type: str, timeout: float = 10.0) -> Frame:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if frame.get("type") == type:
                    return frame

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        assert self.ws is not None
        self.ws.transport.abort()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader

    async def __aenter__(self) -> FakeWorker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
