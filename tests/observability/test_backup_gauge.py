"""The backups' last-success gauge comes from the backup folder, whoever took the backup."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relayline.api.app import open_store
from relayline.observability.metrics import BACKUP_LAST_SUCCESS, READY
from relayline.ops import backups
from relayline.ops.scheduled_backups import ScheduledBackups, newest_finished
from relayline.testing import RelayServer
from relayline.turns.coordination import LocalCoordinator
from tests.conftest import SettingsFactory


async def test_the_newest_manifest_sets_the_gauge(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "backups"
    assert newest_finished(folder) == 0.0  # no folder yet
    settings = make_settings(backup_dir=folder)  # no schedule: backups are taken elsewhere
    db = await open_store(settings)
    await db.dispose()
    made = await backups.create(settings, folder)
    finished = made.manifest.stat().st_mtime
    assert newest_finished(folder) == finished
    BACKUP_LAST_SUCCESS.set(0)
    relay = RelayServer(settings)
    await relay.start()
    try:
        # The relay's first check, at start, reports it.
        async with asyncio.timeout(10):
            while BACKUP_LAST_SUCCESS._value.get() != finished:
                await asyncio.sleep(0.05)
    finally:
        await relay.stop()
    job = ScheduledBackups(settings, LocalCoordinator())
    made.manifest.unlink()  # a data file without its manifest is no backup
    assert not await job.tick()
    assert BACKUP_LAST_SUCCESS._value.get() == 0


async def test_readiness_is_a_gauge_per_check(make_settings: SettingsFactory) -> None:
    import httpx

    relay = RelayServer(make_settings())
    await relay.start()
    try:
        async with httpx.AsyncClient(base_url=relay.url) as http:
            assert (await http.get("/health/ready")).status_code == 200
    finally:
        await relay.stop()
    assert READY.labels("store")._value.get() == 1
