"""``relayline aggregate``: one day, a backfill, or yesterday, printed as JSON; bad arguments
refused with one ``fatal:`` line."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from relayline.store import analytics, migrate
from relayline.store.database import Database
from tests.conftest import SettingsFactory
from tests.store.analytics_data import brute_force, seed
from tests.store.test_analytics import stored
from tests.test_cli import relayline_cmd

pytestmark = pytest.mark.slow


@pytest.fixture
def database(make_settings: SettingsFactory, tmp_path: Path) -> Database:
    """The relay's SQLite database (as the command finds it), migrated and seeded."""

    async def build() -> None:
        db = Database(make_settings(database_url=f"sqlite:///{tmp_path / 'relay.db'}"))
        try:
            await migrate.upgrade(db.engine)
            await seed(db)
        finally:
            await db.dispose()

    asyncio.run(build())
    return Database(make_settings(database_url=f"sqlite:///{tmp_path / 'relay.db'}"))


def figures(database: Database) -> tuple[dict[object, object], dict[object, object]]:
    async def read() -> tuple[dict[object, object], dict[object, object]]:
        try:
            return dict(await stored(database)), dict(await brute_force(database))
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_a_backfill_then_one_day_again(database: Database, tmp_path: Path) -> None:
    done = relayline_cmd(tmp_path, "aggregate", "--from", "2024-03-30", "--to", "2024-04-01")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [d["day"] for d in report["days"]] == ["2024-03-30", "2024-03-31", "2024-04-01"]
    assert [d["tenant_rows"] for d in report["days"]] == [3, 3, 2]
    assert report["skipped"] == []
    got, expected = figures(database)
    assert got == expected

    # Metrics kept forever: a day can be computed again.
    again = relayline_cmd(
        tmp_path, "aggregate", "--day", "2024-03-31", RELAYLINE_METRICS_RETENTION_DAYS="0"
    )
    assert again.returncode == 0, again.stderr
    assert [d["day"] for d in json.loads(again.stdout)["days"]] == ["2024-03-31"]
    assert figures(database)[0] == got

    # Past retention (90 days by default), a day computed before is kept as it is.
    kept = relayline_cmd(tmp_path, "aggregate", "--day", "2024-03-31")
    assert kept.returncode == 0, kept.stderr
    (skipped,) = json.loads(kept.stdout)["skipped"]
    assert skipped["day"] == "2024-03-31" and "RETENTION" in skipped["reason"]


def test_without_a_day_yesterday(database: Database, tmp_path: Path) -> None:
    done = relayline_cmd(tmp_path, "aggregate")
    assert done.returncode == 0, done.stderr
    yesterday = analytics.utc_today() - timedelta(days=1)
    assert json.loads(done.stdout)["days"] == [
        {"day": yesterday.isoformat(), "tenant_rows": 0, "duration_ms": pytest.approx(0, abs=5000)}
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--day", "2024-02-30"], "not a day"),
        (["--day", (analytics.utc_today()).isoformat()], "not over"),
        (["--from", "2024-03-01"], "together"),
        (["--day", "2024-03-01", "--to", "2024-03-02"], "not both"),
        (["--from", "2024-03-02", "--to", "2024-03-01"], "after"),
        (["--from", "2024-01-01", "--to", "2025-01-01"], "366"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str], says: str) -> None:
    done = relayline_cmd(tmp_path, "aggregate", *args)
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fatal:") and says in line, line
