"""The store's cost per transaction, timed alone: CPU time of this process for each kind of
transaction on a SQLite ``Database``, as the relay runs them (no HTTP, no bus).

    .venv/bin/python bench/store_tx.py               # pinned to CPU 0, like the relay
    .venv/bin/python bench/store_tx.py --unpinned    # free to use every core

Rows a tree does not have (``write_core``, ``read_core``, ``run_write``, ``run_read``) are left
out, so the same file can be
run in an older tree (``cd TREE && PYTHONPATH=TREE .venv/bin/python bench/store_tx.py``) to compare.
Prints a markdown table; every loop is bounded (``--times``).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from sqlalchemy import Connection, text
from ulid import ULID

from relayline.config import Settings
from relayline.ids import new_id
from relayline.store import turn_queue
from relayline.store.database import Database
from relayline.store.migrate import upgrade

ONE = text("SELECT 1")
INSERT = text("INSERT INTO bench_t (x) VALUES (1)")
HELD_TURNS = 1000


async def cpu_us(times: int, step: Callable[[], Awaitable[object]]) -> float:
    """CPU microseconds of this process per ``step``, after one unmeasured."""
    await step()
    started = time.process_time()
    for _ in range(times):
        await step()
    return (time.process_time() - started) / times * 1e6


def running_turns(path: Path, count: int) -> None:
    """``count`` running turns of as many chats, written past the store (no foreign keys)."""
    raw = sqlite3.connect(path)
    raw.executemany(
        "INSERT INTO turns (id, chat_id, tenant_id, message_id, state, attempt, created_at,"
        " correlation_id) VALUES (?, ?, 't', ?, 'running', 1, 0, 'x')",
        [(f"T{i:025d}", f"C{i}", f"M{i}") for i in range(count)],
    )
    raw.commit()
    raw.close()


async def measure(times: int) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="relayline-store-tx-") as tmp:
        path = Path(tmp) / "store.db"
        db = Database(Settings(database_url=f"sqlite:///{path}"))
        try:
            await upgrade(db.engine)
            async with db.engine.begin() as conn:
                await conn.execute(text("CREATE TABLE bench_t (x INTEGER)"))
            running_turns(path, HELD_TURNS)

            async with db.engine.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None

                async def hop() -> None:
                    await raw._execute(lambda: None)

                rows.append(("one call on aiosqlite's thread", await cpu_us(times, hop)))

            async def empty_write() -> None:
                async with db.write():
                    pass

            async def write_one() -> None:
                async with db.write() as session:
                    await session.execute(INSERT)

            async def write_three() -> None:
                async with db.write() as session:
                    for _ in range(3):
                        await session.execute(INSERT)

            rows.append(
                ("write transaction, no statement (`write`)", await cpu_us(times, empty_write))
            )
            rows.append(("write transaction, one INSERT (`write`)", await cpu_us(times, write_one)))
            rows.append(
                ("write transaction, three INSERTs (`write`)", await cpu_us(times, write_three))
            )
            write_core = getattr(db, "write_core", None)
            if write_core is not None:

                async def write_three_core() -> None:
                    async with write_core() as conn:
                        for _ in range(3):
                            await conn.execute(INSERT)

                rows.append(
                    (
                        "write transaction, three INSERTs (`write_core`)",
                        await cpu_us(times, write_three_core),
                    )
                )

            run_write = getattr(db, "run_write", None)
            if run_write is not None:

                def three_inserts(conn: Connection) -> None:
                    for _ in range(3):
                        conn.execute(INSERT)

                async def write_three_thread() -> None:
                    await run_write(three_inserts)

                async def write_nothing_thread() -> None:
                    await run_write(lambda conn: None)

                rows.append(
                    (
                        "write transaction, no statement (`run_write`, the store thread)",
                        await cpu_us(times, write_nothing_thread),
                    )
                )
                rows.append(
                    (
                        "write transaction, three INSERTs (`run_write`, the store thread)",
                        await cpu_us(times, write_three_thread),
                    )
                )

            async def read_two() -> None:
                async with db.read() as session:
                    (await session.execute(ONE)).first()
                    (await session.execute(ONE)).first()

            rows.append(("read transaction, two SELECTs (`read`)", await cpu_us(times, read_two)))
            read_core = getattr(db, "read_core", None)
            if read_core is not None:

                async def read_two_core() -> None:
                    async with read_core() as conn:
                        (await conn.execute(ONE)).first()
                        (await conn.execute(ONE)).first()

                rows.append(
                    (
                        "read transaction, two SELECTs (`read_core`)",
                        await cpu_us(times, read_two_core),
                    )
                )

            run_read = getattr(db, "run_read", None)
            if run_read is not None:

                def two_selects(conn: Connection) -> None:
                    conn.execute(ONE).first()
                    conn.execute(ONE).first()

                async def read_two_thread() -> None:
                    await run_read(two_selects)

                rows.append(
                    (
                        "read transaction, two SELECTs (`run_read`, the store thread)",
                        await cpu_us(times, read_two_thread),
                    )
                )

            transaction = write_core if write_core is not None else db.write
            for held in (0, 16, HELD_TURNS):
                chats = {f"C{i}" for i in range(held)}

                async def claim(chats: set[str] = chats) -> None:
                    if run_write is not None:
                        await run_write(
                            lambda conn: turn_queue.claimable_turn_id(conn, exclude_chats=chats)
                        )
                        return
                    async with transaction() as conn:
                        await turn_queue.claimable_turn_id(conn, exclude_chats=chats)  # type: ignore[misc]

                rows.append(
                    (
                        f"claim query, {held:,} held chats ({HELD_TURNS:,} running turns)",
                        await cpu_us(times // 10, claim),
                    )
                )
        finally:
            await db.dispose()

    async def ulid_str() -> None:
        str(ULID())

    async def relayline_id() -> None:
        new_id()

    rows.append(("`str(ULID())` (python-ulid)", await cpu_us(times * 10, ulid_str)))
    rows.append(("`relayline.ids.new_id()`", await cpu_us(times * 10, relayline_id)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--times", type=int, default=3000, help="per row (claims: a tenth)")
    parser.add_argument("--unpinned", action="store_true", help="do not pin to CPU 0")
    args = parser.parse_args()
    if not 10 <= args.times <= 100_000:
        parser.error("--times 10-100,000")
    if not args.unpinned:
        os.sched_setaffinity(0, {0})
    rows = uvloop.run(measure(args.times))
    where = "unpinned" if args.unpinned else "pinned to CPU 0"
    print(f"| CPU per operation ({where}, {args.times:,} times) | µs |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:,.1f} |")


if __name__ == "__main__":
    main()
