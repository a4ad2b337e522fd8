"""The cost of storing an answer on PostgreSQL, timed alone: ``relayline.store.turns.finish``
one after another on started turns, as the relay calls it at a turn's end (no HTTP, no bus).

    .venv/bin/python bench/finish_pg.py                       # the machine's server, database test
    .venv/bin/python bench/finish_pg.py --url postgresql://postgres@127.0.0.1:5432/test

It makes a database of its own next to the one named (dropped at the end), starts ``--turns``
turns, then stores each one's answer with its metrics, and prints this process's CPU time and
the wall time per answer, the median of ``--rounds`` rounds. Pinned to CPU 0, like the relay in
``bench/turns.py``. The same file runs in an older tree
(``cd TREE && PYTHONPATH=TREE .venv/bin/python bench/finish_pg.py``) to compare.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
from functools import partial

import asyncpg
import uvloop
from sqlalchemy import Connection

from relayline.config import Settings
from relayline.store import chats, migrate, tenants
from relayline.store import turns as store_turns
from relayline.store.database import Database
from relayline.store.turns import Assignment, start_attempt

ANSWER = "word " * 300


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def start(turn_id: str, conn: Connection) -> Assignment:
    return start_attempt(conn, turn_id, "w", max_messages=50, max_chars=10_000, lease_ms=60_000)


async def started_turns(db: Database, count: int) -> list[tuple[str, int]]:
    async with db.write() as session:
        tenant = await tenants.create_tenant(session, "bench")
    turns: list[tuple[str, int]] = []
    for _ in range(count):
        async with db.write() as session:
            chat = await chats.create_chat(session, tenant.id, "t")
        posted = await chats.post_user_message(db, tenant.id, chat.id, "question", None)
        assert posted.turn is not None
        assigned = await db.run_write(partial(start, posted.turn.id))
        turns.append((assigned.turn_id, assigned.attempt))
    return turns


async def round_(url: str, count: int) -> tuple[float, float]:
    db = Database(Settings(_env_file=None, database_url=url))
    try:
        await migrate.upgrade(db.engine)
        turns = await started_turns(db, count)
        cpu, wall = time.process_time(), time.perf_counter()
        for turn_id, attempt in turns:
            stored = await store_turns.finish(
                db,
                turn_id,
                attempt,
                state="completed",
                text=ANSWER,
                message_status="complete",
                metrics={"first_token_ms": 3, "latency_ms": 90, "tokens_in": 5, "tokens_out": 300},
                finish_reason="stop",
            )
            assert stored is not None
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await db.dispose()
    return cpu / count * 1e6, wall / count * 1e6


async def main(url: str, count: int, rounds: int) -> None:
    base = url.rsplit("/", 1)[0]
    results: list[tuple[float, float]] = []
    for _ in range(rounds):
        name = f"relayline_bench_finish_{os.getpid()}_{secrets.token_hex(3)}"
        await admin(url, f'CREATE DATABASE "{name}"')
        try:
            results.append(await round_(f"{base}/{name}", count))
        finally:
            await admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    cpu = statistics.median(r[0] for r in results)
    wall = statistics.median(r[1] for r in results)
    print("| answers stored | CPU µs per answer (this process) | wall µs per answer |")
    print("|---:|---:|---:|")
    print(f"| {count} x {rounds} | {cpu:.0f} | {wall:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unpinned", action="store_true", help="do not pin to CPU 0")
    args = parser.parse_args()
    if not args.unpinned:
        os.sched_setaffinity(0, {0})
    uvloop.run(main(args.url, args.turns, args.rounds))
