"""Backup, verify and restore times: the recovery time an operator can count on.

    .venv/bin/python bench/restore.py                      # 100k and 1M messages, both backends
    .venv/bin/python bench/restore.py --messages 100000    # one size
    .venv/bin/python bench/restore.py --backends sqlite

For each backend and size: a fresh database migrated to the current schema and seeded with one
tenant, 100 chats and N messages (half of them answers with a metrics row), inserted in batches
of 10,000; then ``backups.create`` (SQLite: online backup API, uncompressed; PostgreSQL:
``pg_dump --format=custom``), ``backups.verify`` (PostgreSQL: includes a scratch restore) and
``backups.restore`` into a second, empty database (migrations included). PostgreSQL runs against
the local server (``--pg``, 127.0.0.1 only); its databases are created and dropped here.
Prints a markdown table of seconds and sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relayline.api.app import open_store  # noqa: E402
from relayline.config import Settings  # noqa: E402
from relayline.ids import new_id  # noqa: E402
from relayline.ops import backups  # noqa: E402
from relayline.store import chats, tenants  # noqa: E402
from relayline.store.models import Chat, Message, MessageMetric  # noqa: E402

BATCH = 10_000
CHATS = 100


def settings(url: str) -> Settings:
    return Settings(
        _env_file=None,
        env="test",
        database_url=url,
        admin_key="bench-" + "a" * 40,
        secret_key="bench-" + "s" * 40,
    )


async def seed(url: str, messages: int) -> None:
    db = await open_store(settings(url))
    try:
        async with db.write() as session:
            tenant = await tenants.create_tenant(session, "bench")
            chat_ids = [
                (await chats.create_chat(session, tenant.id, None)).id for _ in range(CHATS)
            ]
        per_chat = messages // CHATS
        pending: list[dict[str, Any]] = []
        metrics: list[dict[str, Any]] = []

        async def flush() -> None:
            async with db.write() as session:
                await session.execute(insert(Message), pending)
                if metrics:
                    await session.execute(insert(MessageMetric), metrics)
            pending.clear()
            metrics.clear()

        for chat_id in chat_ids:
            for seq in range(1, per_chat + 1):
                row = {
                    "id": new_id(),
                    "chat_id": chat_id,
                    "seq": seq,
                    "role": "assistant" if seq % 2 == 0 else "user",
                    "content": "A message of about a hundred characters, as chats have them. " * 2,
                    "status": "complete",
                    "created_at": 1_790_000_000_000 + seq,
                }
                pending.append(row)
                if row["role"] == "assistant":
                    metrics.append(
                        {
                            "id": new_id(),
                            "message_id": row["id"],
                            "tenant_id": tenant.id,
                            "chat_id": chat_id,
                            "latency_ms": 900,
                            "tokens_in": 50,
                            "tokens_out": 40,
                            "status": "complete",
                            "created_at": row["created_at"],
                        }
                    )
                if len(pending) >= BATCH:
                    await flush()
        if pending:
            await flush()
        async with db.write() as session:
            for chat_id in chat_ids:
                chat = await session.get(Chat, chat_id)
                assert chat is not None
                chat.last_seq = per_chat
    finally:
        await db.dispose()


async def timed(coro: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await coro
    return time.perf_counter() - started, result


async def run_one(backend: str, messages: int, pg: str, scratch: Path) -> dict[str, Any]:
    dbs: list[str] = []
    if backend == "sqlite":
        source, target = (f"sqlite:///{scratch / f'{n}.db'}" for n in ("source", "target"))
    else:
        base = pg.rsplit("/", 1)[0]
        for n in ("source", "target"):
            name = f"relayline_bench_{n}_{secrets.token_hex(4)}"
            conn = await asyncpg.connect(pg)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            dbs.append(name)
        source, target = (f"{base}/{name}" for name in dbs)
    try:
        seeded, _ = await timed(seed(source, messages))
        made_s, made = await timed(backups.create(settings(source), scratch / "backups"))
        verify_s, _ = await timed(backups.verify(settings(source), made.data))
        restore_s, restored = await timed(backups.restore(settings(target), made.data))
        assert restored["tables"]["messages"] == made.info["tables"]["messages"]
        return {
            "backend": backend,
            "messages": made.info["tables"]["messages"],
            "seed_s": seeded,
            "backup_s": made_s,
            "verify_s": verify_s,
            "restore_s": restore_s,
            "bytes": made.info["bytes"],
        }
    finally:
        for name in dbs:
            conn = await asyncpg.connect(pg)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    rows = []
    for messages in args.messages:
        for backend in args.backends:
            scratch = Path(tempfile.mkdtemp(prefix="relayline-bench-restore-"))
            try:
                rows.append(await run_one(backend, messages, args.pg, scratch))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            print(f"  done: {backend} {messages}", file=sys.stderr, flush=True)
    print("| backend | messages | backup (s) | verify (s) | restore (s) | backup size |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['backend']} | {row['messages']:,} | {row['backup_s']:.2f} | "
            f"{row['verify_s']:.2f} | {row['restore_s']:.2f} | {row['bytes'] / 1e6:.0f} MB |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if not args.pg.startswith("postgresql://postgres@127.0.0.1"):
        parser.error("--pg must be a server on 127.0.0.1")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
