"""The backups' last-success gauge comes from the backup folder, whoever took the backup."""

from __future__ import annotations

from pathlib import Path

from relayline.api.app import open_store
from relayline.observability.metrics import BACKUP_LAST_SUCCESS, READY
from relayline.ops import backups
from relayline.testing import RelayServer
from relayline.turns import figures
from tests.conftest import SettingsFactory
from tests.fixtures import dispatcher_of


async def test_the_newest_manifest_sets_the_gauge(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "backups"
    assert figures.newest_backup(folder) == 0.0  # no folder yet
    settings = make_settings(backup_dir=folder)
    db = await open_store(settings)
    await db.dispose()
    made = await backups.create(settings, folder)
    assert figures.newest_backup(folder) == made.manifest.stat().st_mtime
    relay = RelayServer(settings)
    await relay.start()
    try:
        dispatcher = dispatcher_of(relay)
        await figures.report(dispatcher.ctx, dispatcher.pool)
        assert BACKUP_LAST_SUCCESS._value.get() == made.manifest.stat().st_mtime
        made.manifest.unlink()  # a data file without its manifest is no backup
        await figures.report(dispatcher.ctx, dispatcher.pool)
        assert BACKUP_LAST_SUCCESS._value.get() == 0
    finally:
        await relay.stop()


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
