"""Daily analytics on SQLite and PostgreSQL: figures per tenant and UTC day against a brute-force
computation, UTC day boundaries whatever the host's time zone, idempotent re-runs, one runner
among several instances, the catch-up after downtime, and retention that deletes in batches and
never a row whose day was not aggregated."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from sqlalchemy import event, func, select

from relayline.ops import scheduled_analytics
from relayline.ops.scheduled_analytics import ScheduledAnalytics, due_through
from relayline.store import analytics, migrate
from relayline.store.database import Database
from relayline.store.models import AnalyticsDaily, AnalyticsRun, MessageMetric
from relayline.testing import RelayServer
from relayline.turns.coordination import LocalCoordinator, RedisCoordinator
from tests.conftest import PG_SERVER, SettingsFactory, _pg_admin, _pg_reachable
from tests.scaleout.test_shared_instances import REDIS, _redis_up
from tests.store.analytics_data import SEEDED_DAYS, Writer, brute_force, ms, seed, utc_day

D30, D31, A01 = SEEDED_DAYS
TODAY = date(2024, 4, 2)  # "now" for these runs: every seeded day is over


@pytest.fixture(params=["sqlite", "postgres"])
async def db(
    request: pytest.FixtureRequest, make_settings: SettingsFactory, tmp_path: Path
) -> AsyncIterator[Database]:
    """An empty, migrated database of this test's own (the days computed are global)."""
    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'analytics.db'}"
    else:
        if not await asyncio.to_thread(_pg_reachable):
            pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}")
        name = f"relayline_analytics_{secrets.token_hex(6)}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url = f"{PG_SERVER.rsplit('/', 1)[0]}/{name}"
    database = Database(make_settings(database_url=url))
    try:
        await migrate.upgrade(database.engine)
        yield database
    finally:
        await database.dispose()
        if name is not None:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone is Europe/Berlin (which moved to summer time on 2024-03-31)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    assert time.localtime(ms("2024-03-31T12:00:00") / 1000).tm_isdst == 1
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


async def stored(db: Database, day: date | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """analytics_daily as (tenant id, day) -> figures."""
    query = select(AnalyticsDaily)
    if day is not None:
        query = query.where(AnalyticsDaily.day == day.isoformat())
    async with db.read() as session:
        rows = (await session.scalars(query)).all()
    return {
        (r.tenant_id, r.day): {name: getattr(r, name) for name in analytics.FIGURES} for r in rows
    }


async def aggregate(db: Database, day: date, **extra: Any) -> analytics.DayDone:
    extra.setdefault("today", TODAY)
    extra.setdefault("retention_days", 90)
    return await analytics.aggregate_day(db, day, **extra)


async def run_days(db: Database) -> list[date]:
    async with db.read() as session:
        found = await session.scalars(select(AnalyticsRun.day).order_by(AnalyticsRun.day))
        return [date.fromisoformat(d) for d in found.all()]


async def metric_count(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(MessageMetric)) or 0)


# --- the figures ----------------------------------------------------------------------------


async def test_figures_match_a_brute_force_computation_in_several_tenant_batches(
    db: Database,
) -> None:
    seeded = await seed(db)
    for day in SEEDED_DAYS:
        # Two tenants a batch: four tenants take three batches (the last one partial).
        done = await aggregate(db, day, batch=2)
        assert done.day == day
    expected = await brute_force(db)
    got = await stored(db)
    assert got == expected
    # Every day has both busy tenants; the idle one has no row, and the edge tenant one row on
    # each side of midnight.
    ids = seeded.tenant_ids
    assert {(t, d) for t, d in got} >= {
        (ids[n], d.isoformat()) for n in ("acme", "globex") for d in SEEDED_DAYS
    }
    assert not [key for key in got if key[0] == ids["idle"]]
    assert {d for t, d in got if t == ids["edge"]} == {"2024-03-30", "2024-03-31"}
    # The data set exercises what the figures are about.
    acme = got[(ids["acme"], "2024-03-31")]
    assert acme["failed"] and acme["failed_by_category"] and acme["cancelled"] and acme["answered"]
    assert acme["turns"] == acme["answered"] + acme["cancelled"] + acme["failed"]
    assert sum(acme["failed_by_category"].values()) == acme["failed"]
    assert acme["first_token_p50_ms"] is not None
    assert acme["first_token_p50_ms"] <= acme["first_token_p95_ms"]
    assert acme["usage_reported"] + acme["usage_counted"] + acme["usage_estimated"] > 0


async def test_all_tenants_add_up_per_day_and_the_busiest_come_first(db: Database) -> None:
    seeded = await seed(db)
    for day in (D30, D31):  # A01 is left uncomputed: it is no day of the answer
        await aggregate(db, day)
    expected = await brute_force(db)
    rows = await analytics.daily_all_tenants(db, D30, A01)
    assert [r["day"] for r in rows] == [D30.isoformat(), D31.isoformat()]
    for row in rows:
        per_tenant = [f for (_, d), f in expected.items() if d == row["day"]]
        for name in analytics.SUMMED:
            assert row[name] == sum(f[name] for f in per_tenant), name
        assert sum(row["failed_by_category"].values()) == row["failed"]
        assert row["latency_p50_ms"] is None
    active, busiest = await analytics.tenant_totals(db, D30, D31, limit=2)
    assert active == 3  # acme, globex, edge; not idle
    assert len(busiest) == 2
    names = {v: k for k, v in seeded.tenant_ids.items()}
    assert {names[t["tenant_id"]] for t in busiest} == {"acme", "globex"}
    assert busiest[0]["messages"] >= busiest[1]["messages"]
    for entry in busiest:
        assert entry["name"] == names[entry["tenant_id"]]
        assert entry["turns"] == sum(
            f["turns"]
            for (t, d), f in expected.items()
            if t == entry["tenant_id"] and d in (D30.isoformat(), D31.isoformat())
        )


async def test_day_boundaries_are_utc_whatever_the_local_zone(db: Database, berlin: None) -> None:
    seeded = await seed(db)
    for day in SEEDED_DAYS:
        await aggregate(db, day)
    edge = seeded.tenant_ids["edge"]
    got = await stored(db)
    # 23:59:59.999 UTC (00:59:59.999 in Berlin, already the 31st there) counts on the 30th;
    # 00:00:00.000 UTC on the 31st.
    for day in ("2024-03-30", "2024-03-31"):
        row = got[(edge, day)]
        assert (row["messages"], row["answered"], row["tokens_in"]) == (1, 1, 7), day
        assert (row["first_token_p50_ms"], row["latency_p95_ms"]) == (100, 200)
    assert got == await brute_force(db)
    # The schedule reads UTC too: at 00:20 UTC on the 31st (01:20 in Berlin) the 30th is due.
    schedule = scheduled_analytics.parse_schedule("00:15")
    assert due_through(schedule, ms("2024-03-31T00:20:00") / 1000) == D30
    assert due_through(schedule, ms("2024-03-31T00:10:00") / 1000) == date(2024, 3, 29)
    assert analytics.day_of_ms(ms("2024-03-30T23:59:59.999")) == D30
    assert analytics.day_start_ms(D31) == ms("2024-03-31T00:00:00")


async def test_re_running_a_day_gives_identical_rows(db: Database) -> None:
    await seed(db)
    await aggregate(db, D31)
    first = await stored(db, D31)
    async with db.read() as session:
        run = await session.get_one(AnalyticsRun, "2024-03-31")
    assert run.tenant_rows == len(first) and run.finished_at > 0
    again = await aggregate(db, D31, batch=1)
    assert again.tenant_rows == len(first)
    assert await stored(db, D31) == first
    # Other days were never touched.
    assert await stored(db, D30) == {}


async def test_nearest_rank_percentiles_on_known_values(db: Database) -> None:
    ids = (await seed(db, turns_per_tenant=0)).tenant_ids
    stamp = ms("2023-06-01T12:00:00")
    async with db.write() as session:
        writer = Writer(session, ids["idle"])
        # Twenty completed answers 10..200 ms to the first token (and one failed answer of
        # 5 ms and one without a first token, which the percentiles leave out).
        for value in range(10, 201, 10):
            writer.turn(
                stamp, finished=stamp, metric={"first_token_ms": value, "latency_ms": 1000 + value}
            )
        writer.turn(
            stamp,
            state="failed",
            finished=stamp,
            category="timeout",
            metric={"first_token_ms": 5, "latency_ms": 5},
        )
        writer.turn(stamp, finished=stamp, metric={"first_token_ms": None, "latency_ms": 999_999})
    await aggregate(db, date(2023, 6, 1), retention_days=0)
    row = (await stored(db))[(ids["idle"], "2023-06-01")]
    # n = 20: p50 is the 10th value, p95 the 19th; latency has 21 values: the 11th and 20th.
    assert (row["first_token_p50_ms"], row["first_token_p95_ms"]) == (100, 190)
    assert (row["latency_p50_ms"], row["latency_p95_ms"]) == (1110, 1200)
    assert (row["answered"], row["failed"], row["failed_by_category"]) == (21, 1, {"timeout": 1})


async def test_a_day_not_over_is_refused(db: Database) -> None:
    with pytest.raises(analytics.AnalyticsRefused, match="not over"):
        await aggregate(db, TODAY)
    assert await run_days(db) == []


# --- retention ------------------------------------------------------------------------------


async def test_retention_deletes_aggregated_days_in_batches_and_keeps_the_rest(
    db: Database,
) -> None:
    ids = (await seed(db, turns_per_tenant=0)).tenant_ids
    # Seven metrics on each of four old days, and on a recent one.
    old = [date(2024, 1, d) for d in (10, 11, 12, 14)]
    recent = date(2024, 3, 30)
    async with db.write() as session:
        writer = Writer(session, ids["acme"])
        for day in [*old, recent]:
            for i in range(7):
                stamp = analytics.day_start_ms(day) + i * 3 * 3_600_000 + i
                writer.turn(
                    stamp, finished=stamp, metric={"first_token_ms": 10 * i, "latency_ms": 100}
                )
    # The 10th, 11th and 14th are aggregated; the 12th never was.
    for day in (old[0], old[1], old[3], recent):
        await aggregate(db, day)
    before = await stored(db)
    statements: list[int] = []

    def count_deletes(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM MESSAGE_METRICS"):
            statements.append(cursor.rowcount)

    event.listen(db.engine.sync_engine, "after_cursor_execute", count_deletes)
    try:
        deleted = await analytics.delete_old_metrics(db, today=TODAY, retention_days=30, batch=3)
    finally:
        event.remove(db.engine.sync_engine, "after_cursor_execute", count_deletes)
    # Two spans (10th-11th, 14th): 14 rows in batches of 3, then 7.
    assert deleted.deleted == 21
    assert statements == [3, 3, 3, 3, 2, 3, 3, 1]
    assert deleted.batches == len(statements)
    assert deleted.days == ["2024-01-10", "2024-01-11", "2024-01-14"]
    assert deleted.kept_unaggregated == 7
    async with db.read() as session:
        left = (await session.scalars(select(MessageMetric.created_at))).all()
    # (The seeded edge tenant's two answers are recent too.)
    assert sorted({utc_day(stamp) for stamp in left}) == ["2024-01-12", "2024-03-30", "2024-03-31"]
    assert len(left) == 7 + 7 + 2
    # The figures stay, and a deleted day is not computed again from what is left.
    assert await stored(db) == before
    with pytest.raises(analytics.AnalyticsRefused, match="RETENTION"):
        await aggregate(db, old[0], retention_days=30)
    # Once the 12th is aggregated, the next pass deletes it; then nothing is left to do.
    await aggregate(db, old[2], retention_days=30)
    again = await analytics.delete_old_metrics(db, today=TODAY, retention_days=30, batch=3)
    assert (again.deleted, again.days, again.kept_unaggregated) == (7, ["2024-01-12"], 0)
    idle = await analytics.delete_old_metrics(db, today=TODAY, retention_days=30, batch=3)
    assert (idle.deleted, idle.batches, idle.days) == (0, 0, [])
    assert await metric_count(db) == 7 + 2
    # 0 keeps everything.
    assert (
        await analytics.delete_old_metrics(db, today=date(2030, 1, 1), retention_days=0)
    ).deleted == 0


# --- the schedule ---------------------------------------------------------------------------


def job(
    make_settings: SettingsFactory, db: Database, coordinator: Any = None, **extra: Any
) -> ScheduledAnalytics:
    settings = make_settings(**{"analytics_at": "00:15", **extra})
    return ScheduledAnalytics(settings, db, coordinator or LocalCoordinator())


async def test_the_schedule_catches_up_after_downtime(
    db: Database, make_settings: SettingsFactory
) -> None:
    await seed(db)
    runner = job(make_settings, db, metrics_retention_days=0)
    # Before 00:15 on April 2nd, March 31st is the latest day due; never run: 31 days back.
    report = await runner.tick(ms("2024-04-02T00:10:00") / 1000)
    assert report is not None
    assert [d["day"] for d in report["days"]][-1] == "2024-03-31"
    assert await run_days(db) == list(analytics.days(date(2024, 3, 1), D31))
    assert await runner.tick(ms("2024-04-02T00:14:59") / 1000) is None
    # At 00:15 April 1st is due.
    report = await runner.tick(ms("2024-04-02T00:15:00") / 1000)
    assert report is not None and [d["day"] for d in report["days"]] == ["2024-04-01"]
    assert await runner.tick(ms("2024-04-02T09:00:00") / 1000) is None
    # Down from April 2nd to the 6th: the next run computes the 2nd to the 5th.
    report = await runner.tick(ms("2024-04-06T10:00:00") / 1000)
    assert report is not None
    assert [d["day"] for d in report["days"]] == [
        "2024-04-02",
        "2024-04-03",
        "2024-04-04",
        "2024-04-05",
    ]
    # Down for two months: only the last 31 days are computed.
    report = await runner.tick(ms("2024-06-10T03:00:00") / 1000)
    assert report is not None
    assert report["days"][0]["day"] == "2024-05-10" and report["days"][-1]["day"] == "2024-06-09"
    assert date(2024, 4, 20) not in await run_days(db)
    # What was computed matches the brute force for the seeded days.
    expected = await brute_force(db)
    assert await stored(db) == expected


async def test_the_schedule_deletes_old_metrics_after_aggregating(
    db: Database, make_settings: SettingsFactory
) -> None:
    await seed(db)
    expected = await brute_force(db)
    metrics = await metric_count(db)
    runner = job(make_settings, db, metrics_retention_days=30, analytics_catch_up_days=40)
    # On May 5th, the 40 days up to the 4th are computed; then the days before April 5th lose
    # their metrics, which the figures were computed from first.
    report = await runner.tick(ms("2024-05-05T01:00:00") / 1000)
    assert report is not None
    assert (report["days"][0]["day"], report["days"][-1]["day"]) == ("2024-03-26", "2024-05-04")
    assert report["metrics_deleted"] == metrics > 0
    assert report["kept_unaggregated"] == 0
    assert await metric_count(db) == 0
    assert await stored(db) == expected


@pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}")
async def test_of_two_instances_racing_the_schedule_one_runs_it(
    db: Database, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(db)
    calls: list[date] = []
    real = analytics.aggregate_day

    async def counted(*args: Any, **kwargs: Any) -> analytics.DayDone:
        calls.append(args[1])
        return await real(*args, **kwargs)

    monkeypatch.setattr(analytics, "aggregate_day", counted)
    client = aredis.Redis.from_url(REDIS)
    prefix = f"rltest:{secrets.token_hex(4)}:"
    try:
        runners = [
            job(make_settings, db, RedisCoordinator(client, prefix, instance_id=name))
            for name in ("a", "b")
        ]
        now = ms("2024-04-02T00:15:00") / 1000
        reports = await asyncio.gather(*(r.tick(now) for r in runners))
        assert sum(r is not None for r in reports) == 1
        assert len(calls) == 31 and len(set(calls)) == 31
        assert (await run_days(db))[-1] == A01
        # A minute later neither has anything to do.
        assert await asyncio.gather(*(r.tick(now + 60) for r in runners)) == [None, None]
        assert len(calls) == 31
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_runner_that_loses_the_role_stops_between_days(
    db: Database, make_settings: SettingsFactory
) -> None:
    class Fickle(LocalCoordinator):
        def __init__(self, answers: int) -> None:
            super().__init__()
            self.answers = answers

        async def lead(self, role: str, ttl_s: float) -> bool:
            self.answers -= 1
            return self.answers >= 0

    # The role is held for the first check and two days.
    runner = job(make_settings, db, Fickle(3))
    report = await runner.tick(ms("2024-04-02T01:00:00") / 1000)
    assert report is not None and len(report["days"]) == 2
    assert await run_days(db) == [date(2024, 3, 2), date(2024, 3, 3)]


async def test_the_relay_runs_the_schedule(
    make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduled_analytics, "START_DELAY_S", 0.0)
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    relay = RelayServer(settings)
    await relay.start()
    try:
        db = Database(settings)
        try:
            latest = due_through(
                scheduled_analytics.parse_schedule(settings.analytics_at), time.time()
            )
            async with asyncio.timeout(30):
                while await analytics.last_aggregated_day(db) != latest:
                    await asyncio.sleep(0.1)
            assert len(await run_days(db)) == settings.analytics_catch_up_days
        finally:
            await db.dispose()
    finally:
        await relay.stop()


def test_bad_schedule_settings_are_refused(make_settings: SettingsFactory) -> None:
    from relayline.config import Settings

    for bad in ("24:00", "6h", "0:15", ""):
        with pytest.raises(ValueError, match="analytics_at"):
            Settings(_env_file=None, analytics_at=bad)
    with pytest.raises(ValueError, match="metrics_retention_days"):
        Settings(_env_file=None, metrics_retention_days=-1)
    assert make_settings().analytics_at == "00:15"
    assert make_settings().metrics_retention_days == 90


def test_ranges_are_checked() -> None:
    analytics.check_range(date(2024, 1, 1), date(2024, 12, 31))  # 366 days
    with pytest.raises(analytics.ValidationFailed, match="366"):
        analytics.check_range(date(2024, 1, 1), date(2025, 1, 1))
    with pytest.raises(analytics.ValidationFailed, match="after"):
        analytics.check_range(date(2024, 1, 2), date(2024, 1, 1))
    for bad in ("2024-3-1", "20240301", "2024-02-30", "yesterday"):
        with pytest.raises(ValueError):
            analytics.parse_day(bad)
    assert list(analytics.days(D30, A01)) == SEEDED_DAYS
    assert analytics.day_of_ms(analytics.day_start_ms(A01) + analytics.DAY_MS - 1) == A01
    assert analytics.day_of_ms(analytics.day_start_ms(A01) - 1) == A01 - timedelta(days=1)
