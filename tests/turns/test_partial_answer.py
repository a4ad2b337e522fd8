"""The running answer's partial text on Redis: appended, never another message's text, repaired
after a lost append, expiring; the in-process coordinator stores nothing."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from relayline.turns.coordination import LocalCoordinator, RedisCoordinator
from tests.scaleout.test_shared_instances import REDIS, _redis_up

pytestmark = pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}")


@pytest.fixture
async def coordinator() -> AsyncIterator[tuple[RedisCoordinator, Any]]:
    client = aredis.Redis.from_url(REDIS)
    prefix = f"rltest:{secrets.token_hex(4)}:"
    try:
        yield RedisCoordinator(client, prefix), client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


class Answer:
    """A running answer as the streaming side keeps it: what was published so far."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.text = ""

    async def flush(self, coordinator: RedisCoordinator, chat: str, piece: str) -> None:
        offset = len(self.text)
        self.text += piece
        await coordinator.append_partial(chat, self.message_id, offset, piece, lambda: self.text)


async def test_appends_in_order_give_the_whole_text(coordinator: Any) -> None:
    coord, client = coordinator
    answer = Answer("m1")
    pieces = ["Hello", ", wörld", " — ünïcode ✓", "!" * 500]
    for piece in pieces:
        await answer.flush(coord, "c1", piece)
    assert await coord.partial("c1") == ("m1", "".join(pieces))
    ttl = await client.ttl(coord._partial_keys("c1")[1])
    assert 0 < ttl <= int(coord._ttl_s * 20)
    await coord.clear_partial("c1")
    assert await coord.partial("c1") is None


async def test_another_message_never_appends_to_this_one(coordinator: Any) -> None:
    coord, _ = coordinator
    first = Answer("m1")
    await first.flush(coord, "c1", "first answer")
    second = Answer("m2")  # a new turn (or a new attempt) whose first flush was lost
    second.text = "lost "
    await second.flush(coord, "c1", "second")
    assert await coord.partial("c1") == ("m2", "lost second")


async def test_a_lost_append_is_repaired_by_the_next(coordinator: Any) -> None:
    coord, _ = coordinator
    answer = Answer("m1")
    await answer.flush(coord, "c1", "one ")
    answer.text += "two "  # published, but its append never reached Redis
    assert await coord.partial("c1") == ("m1", "one ")  # a prefix, never more
    await answer.flush(coord, "c1", "three")
    assert await coord.partial("c1") == ("m1", "one two three")


async def test_only_the_new_text_is_written_per_flush(coordinator: Any) -> None:
    coord, client = coordinator
    answer = Answer("m1")
    await answer.flush(coord, "c1", "x" * 10)  # the script is loaded by now
    before = (await client.info("stats"))["total_net_input_bytes"]
    for _ in range(50):
        await answer.flush(coord, "c1", "y" * 1000)
    written = (await client.info("stats"))["total_net_input_bytes"] - before
    # 50 kB of answer; rewriting the whole text each time would be ~1.3 MB.
    assert written < 3 * 50_000, written
    assert (await coord.partial("c1"))[1] == answer.text


async def test_the_single_instance_coordinator_stores_nothing() -> None:
    local = LocalCoordinator()
    await local.append_partial("c1", "m1", 0, "text", lambda: "text")
    assert await local.partial("c1") is None
