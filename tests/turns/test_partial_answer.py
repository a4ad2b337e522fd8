"""The running answer's partial text on Redis: appended in order, never another message's or
attempt's text, a prefix after a lost append and whole again after the next, expiring, and
written in bytes proportional to the answer; the in-process coordinator stores nothing."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.asyncio.connection import Connection, ConnectionPool

from relayline.turns.coordination import LocalCoordinator, RedisCoordinator
from tests.scaleout.test_shared_instances import REDIS, _redis_up

pytestmark = pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}")


class CountingConnection(Connection):
    """Counts the bytes written to Redis (commands with their protocol framing): exact for
    this client, whatever else talks to the same server meanwhile."""

    sent = 0

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        chunks = list(command)
        CountingConnection.sent += sum(len(chunk) for chunk in chunks)
        await super()._send_packed_command(chunks)


@pytest.fixture
async def coordinator() -> AsyncIterator[tuple[RedisCoordinator, Any]]:
    pool = ConnectionPool.from_url(REDIS, connection_class=CountingConnection)
    client = aredis.Redis(connection_pool=pool)
    prefix = f"rltest:{secrets.token_hex(4)}:"
    try:
        yield RedisCoordinator(client, prefix), client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await pool.aclose()


class Answer:
    """One attempt of a running answer as the streaming side keeps it: what it published."""

    def __init__(self, message_id: str, attempt: int = 1) -> None:
        self.message_id = message_id
        self.attempt = attempt
        self.text = ""

    async def flush(self, coordinator: RedisCoordinator, chat: str, piece: str) -> None:
        offset = len(self.text)
        self.text += piece
        await coordinator.append_partial(
            chat, self.message_id, self.attempt, offset, piece, lambda: self.text
        )


async def test_appends_in_order_give_the_whole_text_and_expire(coordinator: Any) -> None:
    coord, client = coordinator
    answer = Answer("m1")
    pieces = ["Hello", ", wörld", " — ünïcode ✓", "!" * 500]
    for piece in pieces:
        await answer.flush(coord, "c1", piece)
    assert await coord.partial("c1") == ("m1", "".join(pieces))
    # Counted in characters as the caller counts them (else every append would rewrite all).
    meta = coord._partial_keys("c1")[0]
    assert await client.hget(meta, "n") == str(len(answer.text)).encode()
    for key in coord._partial_keys("c1"):
        assert coord._partial_ttl - 5 < await client.ttl(key) <= coord._partial_ttl, key
    await coord.clear_partial("c1")
    assert await coord.partial("c1") is None


async def test_another_message_never_appends_to_this_one(coordinator: Any) -> None:
    coord, _ = coordinator
    first = Answer("m1")
    await first.flush(coord, "c1", "first answer")
    second = Answer("m2")  # the chat's next answer, whose first flush was lost
    second.text = "lost "
    await second.flush(coord, "c1", "second!")
    assert await coord.partial("c1") == ("m2", "lost second!")
    # An instance still streaming the first answer, at an offset that fits the second's length:
    # its text replaces the second's (read back with its own id), never extends it.
    await first.flush(coord, "c1", "?")
    assert await coord.partial("c1") == ("m1", "first answer?")


async def test_a_later_attempt_starts_afresh_and_an_earlier_one_stops_writing(
    coordinator: Any,
) -> None:
    coord, _ = coordinator
    taken_over = Answer("m1", attempt=1)
    await taken_over.flush(coord, "c1", "abc")
    retry = Answer("m1", attempt=2)
    await retry.flush(coord, "c1", "xyz")
    assert await coord.partial("c1") == ("m1", "xyz")
    # The first attempt's instance has not noticed yet: its append would fit at offset 3 of
    # the retry's text, and its whole text would replace it. Neither happens.
    await taken_over.flush(coord, "c1", "def")
    assert await coord.partial("c1") == ("m1", "xyz")
    await retry.flush(coord, "c1", "!")
    assert await coord.partial("c1") == ("m1", "xyz!")


async def test_a_flush_that_never_reached_redis_is_repaired_by_the_next(
    coordinator: Any,
) -> None:
    coord, _ = coordinator
    answer = Answer("m1")
    await answer.flush(coord, "c1", "one ")
    answer.text += "two "  # published, but its append never reached Redis
    assert await coord.partial("c1") == ("m1", "one ")  # a prefix, never more
    await answer.flush(coord, "c1", "three")
    assert await coord.partial("c1") == ("m1", "one two three")


@pytest.mark.parametrize("reply_lost", [False, True], ids=["request_lost", "reply_lost"])
async def test_an_append_that_raises_leaves_a_prefix_then_is_repaired(
    coordinator: Any, reply_lost: bool
) -> None:
    coord, _ = coordinator
    answer = Answer("m1")
    await answer.flush(coord, "c1", "one ")
    script = coord._append

    async def failing(**kwargs: Any) -> Any:
        if reply_lost:  # Redis ran it, the caller never heard back
            await script(**kwargs)
        raise ConnectionError("injected")

    coord._append = failing
    await answer.flush(coord, "c1", "two ")  # the failure is swallowed
    coord._append = script
    _, text = await coord.partial("c1")
    assert text in ("one ", "one two ")
    await answer.flush(coord, "c1", "three")
    assert await coord.partial("c1") == ("m1", "one two three")


async def test_a_text_evicted_without_its_hash_is_rewritten_whole(coordinator: Any) -> None:
    coord, client = coordinator
    answer = Answer("m1")
    await answer.flush(coord, "c1", "one ")
    await client.delete(coord._partial_keys("c1")[1])
    await answer.flush(coord, "c1", "two")
    assert await coord.partial("c1") == ("m1", "one two")


async def test_only_the_new_text_is_written_per_flush(coordinator: Any) -> None:
    coord, _ = coordinator
    answer = Answer("m1")
    await answer.flush(coord, "c1", "x" * 10)  # the script is loaded by now
    before = CountingConnection.sent
    for _ in range(50):
        await answer.flush(coord, "c1", "y" * 1000)
    written = CountingConnection.sent - before
    # 50 kB of answer; rewriting the whole text each time would be ~1.3 MB.
    assert 50_000 < written < 2 * 50_000, written
    assert await coord.partial("c1") == ("m1", answer.text)


async def test_the_single_instance_coordinator_stores_nothing() -> None:
    local = LocalCoordinator()
    await local.append_partial("c1", "m1", 1, 0, "text", lambda: "text")
    assert await local.partial("c1") is None
