"""A completed answer is durable once ``message.completed`` is out: the relay stores the turn's
outcome (one transaction: the turn, the answer, its metrics) before it publishes the event, so
a relay killed with SIGKILL the moment a client sees the event still has the answer, complete
and whole, after a restart — on SQLite (WAL, ``synchronous=NORMAL``: a process crash loses no
commit) and on PostgreSQL. Relay and worker run as separate processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.scaleout.cluster import Cluster, RelayProcess, post, stored_messages
from tests.scaleout.test_shared_instances import REDIS, _redis_up

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}"),
]


@pytest.fixture
async def sqlite_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path, f"sqlite:///{tmp_path / 'relay.db'}", instances="1")
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def pg_cluster(tmp_path: Path, own_pg_url: str) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path, own_pg_url)
    try:
        yield made
    finally:
        await made.close()


async def completed_then_kill(relay: RelayProcess, key: str, chat: str) -> dict[str, str]:
    """Post a message, wait for its ``message.completed`` and SIGKILL the relay at once."""
    async with connect(
        relay.ws_url,
        subprotocols=["relayline.v1", f"bearer.{key}"],  # type: ignore[list-item]
        open_timeout=5,
        ping_interval=None,
    ) as ws:
        await ws.send(json.dumps({"op": "subscribe", "ref": 1, "topic": f"chat:{chat}"}))
        turn_id: str | None = None
        async with asyncio.timeout(30):
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "ack" and frame.get("ref") == 1 and turn_id is None:
                    turn_id = await post(relay, key, chat, "tell me something")
                elif frame.get("type") == "message.completed":
                    relay.kill()  # no drain, no shutdown hook: whatever was not stored is gone
                    data: dict[str, str] = frame["data"]
                    assert data["turn_id"] == turn_id
                    return data
    raise AssertionError("no message.completed")


async def test_on_sqlite_an_answer_completed_just_before_a_sigkill_is_stored_whole(
    sqlite_cluster: Cluster,
) -> None:
    await completed_answer_survives_a_sigkill(sqlite_cluster)


async def test_on_postgres_an_answer_completed_just_before_a_sigkill_is_stored_whole(
    pg_cluster: Cluster,
) -> None:
    await completed_answer_survives_a_sigkill(pg_cluster)


async def completed_answer_survives_a_sigkill(cluster: Cluster) -> None:
    (relay,) = await cluster.start_relays(1)
    cluster.start_worker([relay], delay_s=0.002)
    await cluster.wait_worker(relay)
    key = await cluster.tenant_key(relay)
    chat = await cluster.chat(relay, key)

    completed = await completed_then_kill(relay, key, chat)

    (again,) = await cluster.start_relays(1)
    messages = await stored_messages(again, key, chat)
    answers = [m for m in messages if m["role"] == "assistant"]
    assert len(answers) == 1, messages
    answer = answers[0]
    assert answer["id"] == completed["message_id"]
    assert answer["status"] == "complete"
    assert answer["content"] == completed["content"] and answer["content"]
    assert answer["finish_reason"] == completed["finish_reason"]
