"""The relay's own backups on RELAYLINE_BACKUP_SCHEDULE: due from the backup folder, taken by
one instance, failures counted."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aredis

from relayline.api.app import open_store
from relayline.config import Settings, parse_schedule
from relayline.observability.metrics import BACKUP_FAILURES
from relayline.ops import backups
from relayline.ops.scheduled_backups import ScheduledBackups
from relayline.testing import RelayServer
from relayline.turns.coordination import LocalCoordinator, RedisCoordinator
from tests.conftest import SettingsFactory
from tests.scaleout.test_shared_instances import REDIS, _redis_up


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_schedules_parse_and_bad_ones_are_refused() -> None:
    assert parse_schedule("02:30").daily_at == (2, 30)
    assert parse_schedule("6h").every_s == 6 * 3600
    assert parse_schedule("90m").every_s == 90 * 60
    for bad in ("24:00", "2:30", "1m", "6 hours", "", "02:60"):
        with pytest.raises(ValueError):
            parse_schedule(bad)
    with pytest.raises(ValueError, match=r"RELAYLINE_BACKUP_SCHEDULE|backup_schedule"):
        Settings(_env_file=None, backup_schedule="tomorrow")


def test_a_daily_schedule_is_due_once_per_utc_day() -> None:
    daily = parse_schedule("02:30")
    # Never backed up: due.
    assert daily.due(0, at("2026-12-05T10:00:00"))
    # Backed up after today's 02:30: not due until tomorrow's.
    assert not daily.due(at("2026-12-05T02:31:00"), at("2026-12-05T23:59:59"))
    assert daily.due(at("2026-12-05T02:31:00"), at("2026-12-06T02:30:00"))
    # Before 02:30, yesterday's backup is the one that counts.
    assert not daily.due(at("2026-12-04T02:30:05"), at("2026-12-05T01:00:00"))
    assert daily.due(at("2026-12-04T01:00:00"), at("2026-12-05T01:00:00"))
    every = parse_schedule("6h")
    assert not every.due(at("2026-12-05T00:00:00"), at("2026-12-05T05:59:59"))
    assert every.due(at("2026-12-05T00:00:00"), at("2026-12-05T06:00:00"))


async def _database(make_settings: SettingsFactory, tmp_path: Path, **extra: object) -> Settings:
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        backup_dir=tmp_path / "backups",
        **extra,
    )
    db = await open_store(settings)
    await db.dispose()
    return settings


async def test_a_due_backup_is_taken_once(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = await _database(make_settings, tmp_path, backup_schedule="02:30")
    job = ScheduledBackups(settings, LocalCoordinator())
    assert await job.tick()  # none yet: due
    assert not await job.tick()  # the one just taken counts
    assert len(backups.list_backups(settings.backup_dir)) == 1


@pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}")
async def test_of_two_instances_one_takes_the_backup(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = await _database(make_settings, tmp_path, backup_schedule="6h")
    client = aredis.Redis.from_url(REDIS)
    prefix = f"rltest:{secrets.token_hex(4)}:"
    try:
        jobs = [
            ScheduledBackups(settings, RedisCoordinator(client, prefix, instance_id=name))
            for name in ("a", "b")
        ]
        took = await asyncio.gather(*(job.tick() for job in jobs))
        assert sorted(took) == [False, True]
        assert len(backups.list_backups(settings.backup_dir)) == 1
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_failed_backup_is_counted(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}",
        backup_dir=tmp_path / "backups",
        backup_schedule="6h",
    )
    before = BACKUP_FAILURES._value.get()
    assert not await ScheduledBackups(settings, LocalCoordinator()).tick()
    assert BACKUP_FAILURES._value.get() == before + 1


async def test_the_relay_runs_the_schedule(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = await _database(make_settings, tmp_path, backup_schedule="6h")
    relay = RelayServer(settings)
    await relay.start()
    try:
        async with asyncio.timeout(30):
            while not backups.list_backups(settings.backup_dir):
                await asyncio.sleep(0.1)
    finally:
        await relay.stop()
    (taken,) = backups.list_backups(settings.backup_dir)
    assert (await backups.verify(settings, taken.data))["integrity"] == "ok"
