"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from relayline.store import migrate
from relayline.store.database import Database
from relayline.store.models import Base
from tests.conftest import SettingsFactory


async def test_migrations_reach_head_and_match_the_models(
    make_settings: SettingsFactory, db_url: str
) -> None:
    db = Database(make_settings(database_url=db_url))
    try:
        await migrate.upgrade(db.engine)
        assert await migrate.current_revision(db.engine) == migrate.head_revision()
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
        assert diff == []
    finally:
        await db.dispose()
