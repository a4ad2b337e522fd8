"""The PostgreSQL pool under a burst: with the default settings, requests past the pool wait for
a pooled connection rather than each opening one for a single use (an overflow connection is
closed after it, so sustained load would start a server backend per use)."""

from __future__ import annotations

import asyncio

from sqlalchemy import event, text

from relayline.config import Settings
from relayline.store.database import Database
from tests.conftest import SettingsFactory

POOL = 3
BURST = 12


def test_overflow_is_off_by_default_and_the_pool_takes_the_load() -> None:
    fields = Settings.model_fields
    assert fields["db_max_overflow"].default == 0
    assert fields["db_pool_size"].default >= 20


async def test_a_burst_past_the_pool_waits_for_it_and_opens_no_connection_per_use(
    make_settings: SettingsFactory, pg_url: str
) -> None:
    settings = make_settings(database_url=pg_url, db_pool_size=POOL)  # overflow as by default
    database = Database(settings)
    opened: list[object] = []
    event.listen(database.engine.sync_engine, "connect", lambda conn, _record: opened.append(conn))
    running = 0
    most = 0

    async def one() -> None:
        nonlocal running, most
        async with database.autocommit() as conn:
            running += 1
            most = max(most, running)
            await conn.execute(text("SELECT pg_sleep(0.02)"))
            running -= 1

    try:
        for _ in range(3):
            async with asyncio.timeout(30):
                await asyncio.gather(*(one() for _ in range(BURST)))
    finally:
        await database.dispose()
    # Every use of the three bursts was served, never more than the pool at once, by the same
    # connections: none opened for one use and closed after it.
    assert most == POOL
    assert len(opened) == POOL
