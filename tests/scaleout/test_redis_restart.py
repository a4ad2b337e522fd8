"""Redis restarts (losing everything: no persistence) while an answer streams to clients of two
relay processes. The relays keep serving, say not-ready while Redis is away, and reconnect;
clients either resume or are told ``events.missed`` and reload the snapshot. Nothing is lost
silently: what every client renders equals what the store holds.

The Redis here is a private ``redis-server`` on its own port, so restarting it disturbs nothing
else.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from relayline.testing import free_port
from tests.fixtures import local_answer
from tests.scaleout.cluster import (
    Cluster,
    RelayProcess,
    Watcher,
    post,
    stored_messages,
    wait_for,
)

REDIS_SERVER = shutil.which("redis-server")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """Gone at once, with everything it held (no persistence)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def cluster(
    tmp_path: Path, own_pg_url: str, private_redis: PrivateRedis
) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path, own_pg_url, redis_url=private_redis.url)
    try:
        yield made
    finally:
        await made.close()


async def readiness(relay: RelayProcess) -> int:
    async with httpx.AsyncClient(base_url=relay.url, timeout=5) as http:
        return (await http.get("/health/ready")).status_code


async def wait_ready_status(relay: RelayProcess, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := await readiness(relay)) != status:
        assert time.monotonic() < deadline, f"{relay.name}: /health/ready {got}, not {status}"
        await asyncio.sleep(0.1)


async def answer_stored(relay: RelayProcess, key: str, chat: str, count: int) -> bool:
    stored = await stored_messages(relay, key, chat)
    answers = [m for m in stored if m["role"] == "assistant" and m["status"] == "complete"]
    return len(answers) >= count


def renders_store(watchers: list[Watcher], stored: list[dict[str, str]]) -> bool:
    truth = {m["id"]: (m["role"], m["content"]) for m in stored}
    return all(w.rendered == truth for w in watchers)


async def test_a_redis_restart_mid_answer_loses_nothing_any_client_shows(
    cluster: Cluster, private_redis: PrivateRedis
) -> None:
    a, b = await cluster.start_relays(2)
    cluster.start_worker([a, b], delay_s=0.04)
    await cluster.wait_worker(a)
    key = await cluster.tenant_key(a)
    chat = await cluster.chat(b, key)
    watchers = [Watcher(f"{r.name}{i}", [r], 0, key, chat) for r in (a, b) for i in (1, 2)]
    for watcher in watchers:
        watcher.start()
    try:
        await wait_for(lambda: all(w.subscribed for w in watchers), 10, "every client subscribed")
        history: list[tuple[str, str]] = []

        # 1. Redis is away for a moment mid-answer and back before the answer ends.
        history.append(("user", "first question"))
        first = await post(b, key, chat, "first question")
        await wait_for(lambda: all(w.has("message.delta", first) for w in watchers), 15, "deltas")
        private_redis.kill()
        await wait_ready_status(a, 503, 10)
        await asyncio.sleep(0.5)
        private_redis.start()
        await wait_ready_status(a, 200, 20)
        await wait_ready_status(b, 200, 20)
        history.append(("assistant", local_answer(*history)))
        stored = await settled(a, key, chat, watchers, answers=1)
        assert [(m["role"], m["content"]) for m in stored] == history

        # 2. Redis is away until the answer has ended: its last events were never published.
        history.append(("user", "second question"))
        second = await post(a, key, chat, "second question")
        await wait_for(lambda: all(w.has("message.delta", second) for w in watchers), 15, "deltas")
        private_redis.kill()
        deadline = time.monotonic() + 30
        while not await answer_stored(b, key, chat, 2):  # REST still serves from the store
            assert time.monotonic() < deadline, "the second answer was not stored"
            await asyncio.sleep(0.1)
        assert not any(w.has("message.completed", second) for w in watchers)
        private_redis.start()
        history.append(("assistant", local_answer(*history)))
        stored = await settled(b, key, chat, watchers, answers=2)
        assert [(m["role"], m["content"]) for m in stored] == history

        # 3. After both restarts, a new answer streams to everyone as usual.
        history.append(("user", "third question"))
        third = await post(b, key, chat, "third question")
        await wait_for(
            lambda: all(w.has("message.completed", third) for w in watchers), 30, "third answer"
        )
        history.append(("assistant", local_answer(*history)))
        stored = await settled(a, key, chat, watchers, answers=3)
        assert [(m["role"], m["content"]) for m in stored] == history
    finally:
        for watcher in watchers:
            await watcher.stop()

    for watcher in watchers:
        # Every restart lost the logs' history; each client was told, never left guessing.
        assert watcher.missed >= 2, watcher.name
        assert watcher.gaps == [] and watcher.duplicates == [], watcher.name
        assert watcher.connections == 1, watcher.name  # the relays stayed up throughout


async def settled(
    relay: RelayProcess, key: str, chat: str, watchers: list[Watcher], answers: int
) -> list[dict[str, str]]:
    """Wait until ``answers`` answers are stored and every client renders exactly the store."""
    deadline = time.monotonic() + 30
    while True:
        stored = await stored_messages(relay, key, chat)
        done = sum(m["role"] == "assistant" and m["status"] == "complete" for m in stored)
        if done >= answers and renders_store(watchers, stored):
            return stored
        if time.monotonic() > deadline:
            shown = {w.name: w.rendered for w in watchers}
            raise AssertionError(f"clients do not show what is stored:\n{stored}\n{shown}")
        await asyncio.sleep(0.1)
