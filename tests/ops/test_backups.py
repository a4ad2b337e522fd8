"""The restore drill, on SQLite and on PostgreSQL: seed a data set, back it up while a writer
keeps posting, verify the backup, restore it into a fresh database, compare every table with
the manifest, and use the restored database (a relay on it serves the chat). A corrupted backup
fails verification with a clear message; a restore onto data is refused without --force."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, update

from relayline.api.app import open_store
from relayline.config import Settings
from relayline.ids import new_id
from relayline.ops import backups
from relayline.ops.backups import BackupError
from relayline.store.models import Chat, Message, MessageMetric
from relayline.testing import RelayServer
from tests.conftest import PG_SERVER, SettingsFactory, _pg_admin
from tests.fixtures import new_tenant

SEED_MESSAGES = 3000


@pytest.fixture(params=["sqlite", "postgres"])
async def two_databases(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, str]]:
    """A source database and an empty target on the same backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'target.db'}"
        return
    try:
        await _pg_admin("SELECT 1")
    except Exception:
        pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}")
    names = [f"relayline_drill_{os.getpid()}_{secrets.token_hex(4)}_{i}" for i in (0, 1)]
    for name in names:
        await _pg_admin(f'CREATE DATABASE "{name}"')
    base = PG_SERVER.rsplit("/", 1)[0]
    try:
        yield f"{base}/{names[0]}", f"{base}/{names[1]}"
    finally:
        for name in names:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _seed(relay: RelayServer) -> tuple[str, str, str]:
    """A tenant with a key, a chat with SEED_MESSAGES messages and their metrics."""
    async with httpx.AsyncClient(base_url=relay.url, timeout=30) as http:
        tenant = await new_tenant(relay, http)
        chat = await tenant.chat()
    db = relay.app.http.state.relay.db
    rows = [
        {
            "id": new_id(),
            "chat_id": chat,
            "seq": seq,
            "role": "user" if seq % 2 else "assistant",
            "content": f"message {seq} " + "x" * (seq % 50),
            "status": "complete",
            "created_at": 1_700_000_000_000 + seq,
        }
        for seq in range(1, SEED_MESSAGES + 1)
    ]
    metrics = [
        {
            "id": new_id(),
            "message_id": row["id"],
            "tenant_id": tenant.id,
            "chat_id": chat,
            "latency_ms": seq,
            "tokens_in": seq,
            "tokens_out": seq,
            "usage_source": "reported",
            "status": "complete",
            "created_at": row["created_at"],
        }
        for seq, row in enumerate(rows)
        if row["role"] == "assistant"
    ]
    async with db.write() as session:
        await session.execute(insert(Message), rows)
        await session.execute(insert(MessageMetric), metrics)
        await session.execute(update(Chat).where(Chat.id == chat).values(last_seq=SEED_MESSAGES))
    return tenant.key, chat, tenant.id


async def _keep_posting(relay: RelayServer, key: str, chat: str, stop: asyncio.Event) -> int:
    posted = 0
    async with httpx.AsyncClient(base_url=relay.url, timeout=30) as http:
        while not stop.is_set() and posted < 500:
            r = await http.post(
                f"/v1/chats/{chat}/messages",
                json={"content": f"during the backup {posted}"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 202, r.text
            posted += 1
    return posted


async def test_the_restore_drill(
    two_databases: tuple[str, str], make_settings: SettingsFactory, tmp_path: Path
) -> None:
    source_url, target_url = two_databases
    source = make_settings(database_url=source_url)
    relay = RelayServer(source)
    await relay.start()
    try:
        key, chat, _ = await _seed(relay)
        stop = asyncio.Event()
        writer = asyncio.create_task(_keep_posting(relay, key, chat, stop))
        await asyncio.sleep(0.2)  # the writer is busy
        made = await backups.create(source, tmp_path / "backups", compress=True)
        stop.set()
        posted = await writer
    finally:
        await relay.stop()
    assert posted > 0
    info = made.info
    assert made.data.exists() and made.manifest.exists()
    assert info["schema_revision"] and info["tables"]["messages"] >= SEED_MESSAGES
    assert len(info["sha256"]) == 64 and info["bytes"] == made.data.stat().st_size
    assert not list((tmp_path / "backups").glob(".*"))  # nothing half-written left behind

    checked = await backups.verify(source, made.data)
    for table, count in info["tables"].items():
        assert checked["tables"][table] >= count

    target = make_settings(database_url=target_url)
    restored = await backups.restore(target, made.manifest)
    assert restored["schema_revision"]["now"] == info["schema_revision"]
    for table, count in info["tables"].items():
        # The dump of a live PostgreSQL may hold rows posted after they were counted.
        assert restored["tables"][table] >= count
        if source.uses_sqlite:
            assert restored["tables"][table] == count

    # The restored database serves the chat.
    served = RelayServer(target)
    await served.start()
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            r = await http.get(
                f"/v1/chats/{chat}/messages",
                params={"limit": 5},
                headers={"Authorization": f"Bearer {key}"},
            )
    finally:
        await served.stop()
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["content"].startswith("message 1")

    # Onto data, a restore is refused unless forced.
    with pytest.raises(BackupError, match="already holds data"):
        await backups.restore(target, made.data)
    again = await backups.restore(target, made.data, force=True)
    assert again["tables"]["messages"] == restored["tables"]["messages"]


async def _empty_sqlite(make_settings: SettingsFactory, tmp_path: Path) -> Settings:
    """Settings for a new SQLite database, migrated and empty."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    db = await open_store(settings)
    await db.dispose()
    return settings


@pytest.mark.parametrize("damage", ["flip", "truncate"])
async def test_a_damaged_backup_fails_verification(
    make_settings: SettingsFactory, tmp_path: Path, damage: str
) -> None:
    settings = await _empty_sqlite(make_settings, tmp_path)
    made = await backups.create(settings, tmp_path / "b")
    raw = bytearray(made.data.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    made.data.write_bytes(bytes(raw))
    with pytest.raises(BackupError, match="sha256 mismatch"):
        await backups.verify(settings, made.data)
    fresh = make_settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(BackupError, match="sha256 mismatch"):
        await backups.restore(fresh, made.data)


async def test_a_backup_whose_contents_disagree_with_its_manifest_fails(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = await _empty_sqlite(make_settings, tmp_path)
    made = await backups.create(settings, tmp_path / "b")
    info: dict[str, Any] = json.loads(made.manifest.read_text())
    info["tables"]["tenants"] = 7  # the manifest claims rows the file does not hold
    made.manifest.write_text(json.dumps(info))
    with pytest.raises(BackupError, match="tenants: 0 rows, the manifest says 7"):
        await backups.verify(settings, made.data)
    # A data file that is not SQLite at all, with a matching checksum.
    made.data.write_bytes(b"not a database " * 100)
    info["sha256"] = backups._sha256(made.data)
    made.manifest.write_text(json.dumps(info))
    with pytest.raises(BackupError, match=r"not a readable SQLite database|integrity"):
        await backups.verify(settings, made.data)


async def test_a_backup_without_its_manifest_is_not_a_backup(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = await _empty_sqlite(make_settings, tmp_path)
    made = await backups.create(settings, tmp_path / "b")
    made.manifest.unlink()
    with pytest.raises(BackupError, match="no manifest"):
        await backups.verify(settings, made.data)
    assert backups.list_backups(tmp_path / "b") == []


async def test_retention_keeps_the_newest_by_count_and_age(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = await _empty_sqlite(make_settings, tmp_path)
    folder = tmp_path / "b"
    day = 86400.0
    base = 1_790_000_000.0
    for i in range(5):
        await backups.create(settings, folder, now=base + i * day)
    gone = backups.prune(folder, keep=3, max_age_days=None, now=base + 5 * day)
    assert len(gone) == 2 and len(backups.list_backups(folder)) == 3
    gone = backups.prune(folder, keep=10, max_age_days=1.5, now=base + 4 * day + 60)
    left = backups.list_backups(folder)
    assert len(gone) == 1 and len(left) == 2
    # The newest is kept whatever its age.
    backups.prune(folder, keep=1, max_age_days=0.001, now=base + 100 * day)
    assert len(backups.list_backups(folder)) == 1


def test_the_commands(tmp_path: Path) -> None:
    """``relayline backup``, ``backup verify`` and ``restore`` as an operator runs them."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "RELAYLINE_DATABASE_URL": f"sqlite:///{tmp_path / 'live.db'}",
        "RELAYLINE_BACKUP_DIR": str(tmp_path / "backups"),
    }

    def relayline(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relayline", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert relayline("migrate").returncode == 0
    taken = relayline("backup", "--verify")
    assert taken.returncode == 0, taken.stderr
    path = json.loads(taken.stdout)["path"]
    assert json.loads(taken.stdout)["verified"]["integrity"] == "ok"
    checked = relayline("backup", "verify", path)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["integrity"] == "ok"
    restored = relayline(
        "restore", path, RELAYLINE_DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.db'}"
    )
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["duration_s"] >= 0
    with contextlib.suppress(FileNotFoundError):
        Path(path).write_bytes(b"garbage")
    broken = relayline("backup", "verify", path)
    assert broken.returncode == 1
    assert broken.stderr.strip().splitlines()[-1].startswith("fatal: sha256 mismatch")
