"""Three ``relayline serve`` processes on one PostgreSQL database and one Redis, a worker
process connected to one of them, clients on all three.

Every client sees every event of its chat once and in order; a relay killed mid-answer loses
nothing (its clients resume on another instance, and a turn it was running is reclaimed and
answered once); a rate limit and ``client_msg_id`` idempotency hold across the instances.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fixtures import local_answer
from tests.scaleout.cluster import (
    Cluster,
    Watcher,
    post,
    post_raw,
    render,
    stored_messages,
    wait_for,
)
from tests.scaleout.test_shared_instances import REDIS, _redis_up

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}"),
]


@pytest.fixture
async def cluster(tmp_path: Path, own_pg_url: str) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path, own_pg_url, rate_limit_chat="12/minute")
    try:
        yield made
    finally:
        await made.close()


def saw(watchers: list[Watcher], type: str, turn_id: str) -> bool:
    return all(w.has(type, turn_id) for w in watchers)


async def test_clients_on_three_instances_see_every_event_once_in_order_through_two_kills(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster.start_relays(3)
    worker = cluster.start_worker([a, b, c])
    await cluster.wait_worker(a)
    key = await cluster.tenant_key(a)
    chat = await cluster.chat(b, key)
    watchers = [
        Watcher(f"{r.name}{i}", [a, b, c], n, key, chat)
        for n, r in enumerate((a, b, c))
        for i in (1, 2)
    ]
    try:
        for watcher in watchers:
            watcher.start()
        await wait_for(lambda: all(w.subscribed for w in watchers), 10, "every client subscribed")

        # 1. An answer streams to clients on all three; C dies mid-answer.
        first = await post(b, key, chat, "first question")
        await wait_for(lambda: saw(watchers, "message.delta", first), 15, "first deltas")
        c.kill()
        await wait_for(lambda: saw(watchers, "message.completed", first), 30, "first answer")

        # 2. A, which holds the worker and runs the turn, dies mid-answer: the worker moves
        # to B, the lease expires, and the turn is answered once, by a second attempt.
        second = await post(b, key, chat, "second question")
        await wait_for(lambda: saw(watchers, "message.delta", second), 15, "second deltas")
        a.kill()
        await wait_for(lambda: saw(watchers, "message.completed", second), 60, "second answer")

        # 3. What is left serves on: the worker now on B answers a third question.
        third = await post(b, key, chat, "third question")
        await wait_for(lambda: saw(watchers, "message.completed", third), 30, "third answer")
    finally:
        for watcher in watchers:
            await watcher.stop()

    assert worker.poll() is None, "the worker process exited"
    stored = await stored_messages(b, key, chat)
    history = [("user", "first question")]
    expected = [("user", "first question"), ("assistant", local_answer(*history))]
    history = [*expected, ("user", "second question")]
    expected = [*history, ("assistant", local_answer(*history))]
    history = [*expected, ("user", "third question")]
    expected = [*history, ("assistant", local_answer(*history))]
    assert [(m["role"], m["content"]) for m in stored] == expected
    assert all(m["status"] == "complete" for m in stored)

    reference = [e["id"] for e in watchers[0].events]
    for watcher in watchers:
        assert watcher.gaps == [] and watcher.duplicates == [], watcher.name
        assert watcher.missed == 0, watcher.name
        # Every client saw the same events, in the same order.
        assert [e["id"] for e in watcher.events] == reference, watcher.name
        # What each client rendered is what the store holds.
        assert render(watcher.events) == {m["id"]: (m["role"], m["content"]) for m in stored}
        retried = [e for e in watcher.events if e["type"] == "turn.retrying"]
        assert [(e["data"]["turn_id"], e["data"]["attempt"]) for e in retried] == [(second, 2)]
    for watcher in watchers[:2] + watchers[4:]:  # the clients of A and of C moved
        assert watcher.connections >= 2, watcher.name
    assert watchers[2].connections == 1 and watchers[3].connections == 1  # B's stayed


async def test_a_rate_limit_and_client_msg_id_hold_across_instances(cluster: Cluster) -> None:
    relays = await cluster.start_relays(3)
    key = await cluster.tenant_key(relays[0])

    # The same client_msg_id sent to two instances at once creates one message, every time.
    chat = await cluster.chat(relays[1], key)
    for n in range(5):
        first, second = relays[n % 3], relays[(n + 1) % 3]
        ids = await asyncio.gather(
            *(
                post_raw(r, key, chat, f"once {n}", client_msg_id=f"dup-{n}")
                for r in (first, second)
            )
        )
        assert {r.status_code for r in ids} == {202}
        assert len({r.json()["message"]["id"] for r in ids}) == 1
    stored = await stored_messages(relays[2], key, chat)
    assert [m["content"] for m in stored] == [f"once {n}" for n in range(5)]

    # The per-chat limit (12/minute) is one budget, wherever the posts land.
    limited = await cluster.chat(relays[2], key)
    statuses = []
    for n in range(15):
        r = await post_raw(relays[n % 3], key, limited, f"post {n}", client_msg_id=f"p{n}")
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["Retry-After"]) >= 1
    assert statuses == [202] * 12 + [429] * 3
    assert len(await stored_messages(relays[0], key, limited)) == 12
