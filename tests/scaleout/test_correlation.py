"""One id follows a turn end to end: the X-Request-ID of the post that created it is on the
relay's and the worker's log lines about it and reaches the model server, across a reclaim by
another relay instance (relays and worker as separate processes)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.scaleout.cluster import Cluster, bearer, stored_messages, wait_for
from tests.scaleout.test_shared_instances import REDIS, _redis_up
from tests.worker.llm_fake_upstream import FakeUpstream, answer, stall_after_first

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}"),
]


@pytest.fixture
async def cluster(tmp_path: Path, own_pg_url: str) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path, own_pg_url)
    try:
        yield made
    finally:
        await made.close()


def lines_about(log: Path, correlation_id: str) -> list[dict[str, Any]]:
    """The JSON log lines that carry ``correlation_id``."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("correlation_id") == correlation_id:
            found.append(record)
    return found


async def test_the_posts_request_id_follows_the_turn_through_a_reclaim(
    cluster: Cluster, tmp_path: Path
) -> None:
    upstream = FakeUpstream()
    # The first call hangs mid-answer (its relay dies meanwhile); the retry answers.
    upstream.play(stall_after_first(60), answer(("Hel", "lo")))
    llm_url = await upstream.start()
    try:
        first, second = await cluster.start_relays(2)
        cluster.start_worker([first, second], llm_url=llm_url, llm_max_attempts="1")
        await cluster.wait_worker(first)
        key = await cluster.tenant_key(second)
        chat = await cluster.chat(second, key)
        request_id = f"trace-{secrets.token_hex(8)}"
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:
            r = await http.post(
                f"/v1/chats/{chat}/messages",
                json={"content": "follow me"},
                headers={**bearer(key), "X-Request-ID": request_id},
            )
        assert r.status_code == 202, r.text
        assert r.headers["x-request-id"] == request_id
        turn_id = r.json()["turn_id"]
        await wait_for(lambda: upstream.hits == 1, 30, "the worker's first model call")

        first.kill()  # the instance the worker runs the turn through dies mid-answer
        await wait_for(lambda: upstream.hits == 2, 60, "the retry's model call")

        async def answered() -> bool:
            items = await stored_messages(second, key, chat)
            return any(m["role"] == "assistant" and m["status"] == "complete" for m in items)

        deadline_checks = 0
        while not await answered():
            deadline_checks += 1
            assert deadline_checks < 300, "the retried turn was not answered"
            await __import__("asyncio").sleep(0.1)
    finally:
        await upstream.close()

    # The model server got the id on both calls.
    assert [h.get("x-request-id") for h in upstream.headers] == [request_id, request_id]
    # The relay that ran the first attempt, the one that reclaimed and finished the turn, and
    # the worker all logged the turn under the id.
    on_first = {r["event"] for r in lines_about(first.log, request_id)}
    assert "turn_assigned" in on_first
    on_second = lines_about(second.log, request_id)
    events = {r["event"] for r in on_second}
    assert {"turn_reclaimed", "turn_assigned", "turn_completed"} <= events
    assert {r["attempt"] for r in on_second if r["event"] == "turn_assigned"} == {2}
    assert all(r.get("turn_id") == turn_id for r in on_second if "turn_id" in r)
    worker_log = tmp_path / "worker.log"
    on_worker = lines_about(worker_log, request_id)
    started = [r for r in on_worker if r["event"] == "turn_started"]
    assert [r["attempt"] for r in started] == [1, 2]
    assert "turn_done" in {r["event"] for r in on_worker}
