"""Bytes written to Redis for a running answer's partial text, per answer.

    .venv/bin/python bench/partial_answer.py                 # 100,000-character answer, < 30 s
    .venv/bin/python bench/partial_answer.py --chars 20000   # another length

With several instances, each flush of a running answer stores the text published so far in
Redis, so that a chat snapshot served by any instance shows it. This streams one answer through
the real ``RedisCoordinator`` against the Redis at ``--redis-url`` (127.0.0.1 only), as flushes
of the sizes the relay's coalescing produces (random between 20 and 200 characters, and the
1,024-character cap a fast model reaches), and measures what Redis received: ``INFO stats``
``total_net_input_bytes`` before and after, so the figure includes the protocol's own bytes
(command names, lengths, keys). Two ways:

- **rewrite**: the whole text so far on every flush (``SET``), as the relay did before;
- **append**: only the new text (the ``append_partial`` script: ``APPEND`` guarded by the
  message id and length), as the relay does now.

Nothing else should talk to that Redis meanwhile (the counter is server-wide).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets

import redis.asyncio as aredis

from relayline.turns.coordination import RedisCoordinator


def flushes(chars: int, low: int, high: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    pieces, total = [], 0
    while total < chars:
        size = min(rng.randint(low, high), chars - total)
        pieces.append("".join(rng.choice("abcdefghij klmnop") for _ in range(size)))
        total += size
    return pieces


async def received(client: aredis.Redis) -> int:
    value: int = (await client.info("stats"))["total_net_input_bytes"]
    return value


PROFILES = {"20-200": (20, 200), "1024": (1024, 1024)}


async def measure(redis_url: str, chars: int, low: int, high: int) -> dict[str, tuple[int, int]]:
    """Bytes Redis received per way, and the number of flushes. Ids are shaped as the relay's
    (26-character ids, the default key prefix plus a random part)."""
    client = aredis.Redis.from_url(redis_url)
    prefix = f"relayline:{secrets.token_hex(4)}:"
    chat_id, message_id = new_id(), new_id()
    pieces = flushes(chars, low, high)
    results: dict[str, tuple[int, int]] = {}
    try:
        coord = RedisCoordinator(client, prefix)
        await coord.append_partial(chat_id, message_id, 0, "x", lambda: "x")  # load the script
        await coord.clear_partial(chat_id)

        key = f"{prefix}turns:partial:{chat_id}"
        before, text = await received(client), ""
        for piece in pieces:
            text += piece
            await client.set(key, f"{message_id}\n{text}", ex=600)
        results["rewrite"] = (await received(client) - before, len(pieces))

        published = ""
        before = await received(client)
        for piece in pieces:
            offset = len(published)
            published += piece
            await coord.append_partial(
                chat_id, message_id, offset, piece, lambda published=published: published
            )
        results["append"] = (await received(client) - before, len(pieces))
        stored = await coord.partial(chat_id)
        assert stored == (message_id, published), "the stored partial differs from the answer"
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
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
    print(f"answer: {args.chars:,} characters")
    print(
        "| flush sizes (characters) | flushes | rewrite: bytes received | ÷ answer "
        "| append: bytes received | ÷ answer |"
    )
    print("|---|---|---|---|---|---|")
    for name, (low, high) in PROFILES.items():
        results = asyncio.run(measure(args.redis_url, args.chars, low, high))
        (rewrite, count), (append, _) = results["rewrite"], results["append"]
        print(
            f"| {name} | {count:,} | {rewrite:,} | {rewrite / args.chars:.1f}x "
            f"| {append:,} | {append / args.chars:.2f}x |"
        )


if __name__ == "__main__":
    main()
