"""Bytes written to Redis for a running answer's partial text, per answer.

    .venv/bin/python bench/partial_answer.py                 # 100,000-character answer, ~1 s
    .venv/bin/python bench/partial_answer.py --chars 20000   # another length

With several instances, each flush of a running answer stores the text published so far in
Redis, so that a chat snapshot served by any instance shows it. This streams one answer through
the real ``RedisCoordinator`` against the Redis at ``--redis-url`` (127.0.0.1 only), as flushes
of the sizes the relay's coalescing produces (random between 20 and 200 characters, and the
1,024-character cap a fast model reaches), and measures the bytes written to Redis: those this
client's connections write to their sockets (commands with their protocol framing: command
names, lengths, keys, arguments), exact whatever else talks to the server. As a cross-check the
table also gives ``INFO stats`` ``total_net_input_bytes`` over the same run, which counts every
client of the server (on a quiet Redis, the first figure plus the 25 bytes of the closing
``INFO stats`` command). The answer is ASCII, so characters and bytes of text are equal. Two ways:

- **rewrite**: the whole text so far on every flush (``SET``), as the relay did before;
- **append**: only the new text (the ``append_partial`` script: ``APPEND`` guarded by the
  message id, the attempt and the stored length), as the relay does now.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
from collections.abc import Iterable

import redis.asyncio as aredis
from redis.asyncio.connection import Connection, ConnectionPool

from relayline.turns.coordination import RedisCoordinator


def flushes(chars: int, low: int, high: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    pieces, total = [], 0
    while total < chars:
        size = min(rng.randint(low, high), chars - total)
        pieces.append("".join(rng.choice("abcdefghij klmnop") for _ in range(size)))
        total += size
    return pieces


class CountingConnection(Connection):
    """Counts the bytes it writes to Redis."""

    sent = 0

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        chunks = list(command)
        CountingConnection.sent += sum(len(chunk) for chunk in chunks)
        await super()._send_packed_command(chunks)


async def server_received(client: aredis.Redis) -> int:
    value: int = (await client.info("stats"))["total_net_input_bytes"]
    return value


class Meter:
    """Bytes written by this client, and received by the server, between two readings."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self.sent = self.received = 0

    async def start(self) -> None:
        self.received = await server_received(self.client)
        self.sent = CountingConnection.sent  # after INFO: its bytes count in neither figure

    async def stop(self) -> tuple[int, int]:
        sent = CountingConnection.sent - self.sent
        received = await server_received(self.client) - self.received
        return sent, received


PROFILES = {"20-200": (20, 200), "1,024": (1024, 1024)}


async def measure(redis_url: str, pieces: list[str]) -> dict[str, tuple[int, int]]:
    """Per way, bytes this client wrote and bytes the server received. Keys and ids are the
    relay's: the default key prefix, 26-character ids (random, so no other key is touched)."""
    pool = ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = aredis.Redis(connection_pool=pool)
    coord = RedisCoordinator(client, "relayline:")
    chat_id, message_id = new_id(), new_id()
    rewritten = f"relayline:turns:partial:{chat_id}"
    results: dict[str, tuple[int, int]] = {}
    meter = Meter(client)
    try:
        await coord.append_partial(chat_id, message_id, 1, 0, "x", lambda: "x")  # load the script
        await coord.clear_partial(chat_id)

        text = ""
        await meter.start()
        for piece in pieces:
            text += piece
            await client.set(rewritten, f"{message_id}\n{text}", ex=600)
        results["rewrite"] = await meter.stop()

        published: list[str] = []
        offset = 0
        await meter.start()
        for piece in pieces:
            published.append(piece)
            await coord.append_partial(
                chat_id, message_id, 1, offset, piece, lambda: "".join(published)
            )
            offset += len(piece)
        results["append"] = await meter.stop()
        stored = await coord.partial(chat_id)
        assert stored == (message_id, "".join(published)), "the stored partial differs"
    finally:
        await client.delete(rewritten, *coord._partial_keys(chat_id))
        await client.aclose()
        await pool.aclose()
    return results


def new_id() -> str:
    return secrets.token_hex(13)  # 26 characters, as the relay's ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=100_000, help="length of the answer")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    if not args.redis_url.startswith(("redis://127.0.0.1", "redis://localhost")):
        parser.error("--redis-url: loopback only")
    print(f"answer: {args.chars:,} characters; bytes written by this client (server received)")
    print(
        "| flush sizes (characters) | flushes "
        "| rewrite: bytes | ÷ answer | append: bytes | ÷ answer |"
    )
    print("|---|---|---|---|---|---|")
    for name, (low, high) in PROFILES.items():
        pieces = flushes(args.chars, low, high)
        results = asyncio.run(measure(args.redis_url, pieces))
        cells = [
            f"{sent:,} ({received:,}) | {sent / args.chars:.2f}x"
            for sent, received in (results["rewrite"], results["append"])
        ]
        print(f"| {name} | {len(pieces):,} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
