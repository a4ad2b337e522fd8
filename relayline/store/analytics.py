"""Daily analytics: each tenant's figures for one UTC day, computed by the database and kept in
``analytics_daily``; and the retention of the answers' metrics they are computed from.

A day is ``[00:00, 24:00)`` UTC in the stored milliseconds, whatever the host's time zone. Its
figures, per tenant:

- ``messages``: user messages posted that day. Each posted message queues exactly one turn in
  the same write (same tenant, same ``created_at``), so they are counted from the turns, which
  carry the tenant;
- ``turns``: turns that *ended* that day — ``answered`` (completed), ``cancelled``, ``failed``
  (and ``failed_by_category``, by the turn's ``error_category``). Counting endings rather than
  creations makes a past day's figures final: a turn asked at 23:59 and answered at 00:01
  counts on the day it ended;
- ``first_token_p50_ms``/``…p95_ms`` and ``latency_p50_ms``/``…p95_ms``: nearest-rank
  percentiles (the value at rank ``ceil(n * p / 100)`` of the ``n`` sorted values) over the
  day's completed answers (``message_metrics``, status ``complete``, value present);
- ``tokens_in``/``tokens_out``: sums over every answer whose metrics were stored that day, and
  ``usage_reported``/``usage_counted``/``usage_estimated``: how many of them had their counts
  reported by the model server, counted with its tokenizer, or estimated.

Only aggregates leave the database: the tenants are read 500 at a time (by id), and for each
batch three statements compute its figures (posted, ended, and the metrics, percentiles
included, with window functions that run on SQLite and PostgreSQL alike), so memory stays flat
however many tenants there are. A day is computed in one transaction that first takes the
day's row in ``analytics_runs`` (an upsert: a second run of the same day waits for the first),
deletes the day's rows and inserts them again: re-running a day gives the same rows.

Retention deletes the ``message_metrics`` of days older than ``RELAYLINE_METRICS_RETENTION_DAYS``
only when the day was aggregated (listed in ``analytics_runs``), in batches of 5,000 rows a
transaction. A day already aggregated and past the retention horizon is not computed again (its
metrics are or may be gone, and its figures would lose their percentiles and tokens).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Integer, and_, case, delete, func, insert, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from relayline.clock import now_ms
from relayline.errors import Conflict, ValidationFailed
from relayline.protocol.names import UsageSource
from relayline.store.database import Database
from relayline.store.models import AnalyticsDaily, AnalyticsRun, MessageMetric, Tenant, Turn

DAY_MS = 86_400_000
EPOCH = date(1970, 1, 1)
TENANT_BATCH = 500
DELETE_BATCH = 5_000
MAX_RANGE_DAYS = 366
ENDED = ("completed", "cancelled", "failed")
# A failed turn stored without a category (none should be) is counted under this one.
NO_CATEGORY = "unknown"

# The figures of a row, in the order the API and the CLI give them.
FIGURES = (
    "messages",
    "turns",
    "answered",
    "cancelled",
    "failed",
    "failed_by_category",
    "first_token_p50_ms",
    "first_token_p95_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "tokens_in",
    "tokens_out",
    "usage_reported",
    "usage_counted",
    "usage_estimated",
)

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class AnalyticsRefused(Conflict):
    """A day that cannot be computed (now): not over yet, or its metrics past retention."""


# Days


def day_start_ms(day: date) -> int:
    """00:00 UTC of ``day`` in epoch milliseconds (no time zone is consulted)."""
    return (day - EPOCH).days * DAY_MS


def day_of_ms(ms: int) -> date:
    """The UTC day of an epoch-milliseconds timestamp."""
    return EPOCH + timedelta(days=ms // DAY_MS)


def utc_today(now: float | None = None) -> date:
    """The current UTC day (``now``: Unix seconds; default the clock)."""
    return day_of_ms(int((time.time() if now is None else now) * 1000))


def parse_day(text: str) -> date:
    """A ``YYYY-MM-DD`` day; ValueError for anything else."""
    try:
        if _DAY.match(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise ValueError(f"{text!r} is not a day (YYYY-MM-DD)")


def check_range(first: date, last: date, *, max_days: int = MAX_RANGE_DAYS) -> None:
    """``first``..``last`` (both included) is a range of at most ``max_days`` days."""
    if first > last:
        raise ValidationFailed(f"from ({first}) is after to ({last})")
    if (last - first).days + 1 > max_days:
        raise ValidationFailed(f"a range covers at most {max_days} days")


def days(first: date, last: date) -> Iterator[date]:
    """Every day from ``first`` to ``last``, both included."""
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


# Computing a day


@dataclass(frozen=True, slots=True)
class DayDone:
    day: date
    tenant_rows: int  # rows written: tenants with activity that day
    duration_ms: int


def _empty() -> dict[str, Any]:
    return {
        "messages": 0,
        "turns": 0,
        "answered": 0,
        "cancelled": 0,
        "failed": 0,
        "failed_by_category": {},
        "first_token_p50_ms": None,
        "first_token_p95_ms": None,
        "latency_p50_ms": None,
        "latency_p95_ms": None,
        "tokens_in": 0,
        "tokens_out": 0,
        "usage_reported": 0,
        "usage_counted": 0,
        "usage_estimated": 0,
    }


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _sql(number: int) -> Any:
    """An integer written into the statement: the same text for every batch, and sort keys
    and window definitions that SQLite can compare."""
    return literal_column(str(int(number)), Integer)


def _nearest_rank(value: Any, rank: Any, count: Any, percent: int) -> Any:
    """The value at rank ``ceil(count * percent / 100)`` (integer arithmetic, so both SQL
    dialects agree); NULL when ``count`` is 0."""
    return func.min(case((rank == (count * _sql(percent) + _sql(99)) // _sql(100), value)))


async def _figures(
    session: AsyncSession, tenant_ids: list[str], start: int, end: int
) -> dict[str, dict[str, Any]]:
    """The figures of the tenants in ``tenant_ids`` with activity in ``[start, end)``."""
    found: dict[str, dict[str, Any]] = {}

    def row(tenant_id: str) -> dict[str, Any]:
        return found.setdefault(tenant_id, _empty())

    posted = (
        select(Turn.tenant_id, func.count())
        .where(Turn.tenant_id.in_(tenant_ids), Turn.created_at >= start, Turn.created_at < end)
        .group_by(Turn.tenant_id)
    )
    for tenant_id, count in (await session.execute(posted)).all():
        row(tenant_id)["messages"] = int(count)

    # Only an ended turn has a finished_at; its state is checked below rather than here, which
    # would lead the planner to the (state, finished_at) index and the whole day's turns.
    ended = (
        select(Turn.tenant_id, Turn.state, Turn.error_category, func.count())
        .where(Turn.tenant_id.in_(tenant_ids), Turn.finished_at >= start, Turn.finished_at < end)
        .group_by(Turn.tenant_id, Turn.state, Turn.error_category)
    )
    for tenant_id, state, category, count in (await session.execute(ended)).all():
        if state not in ENDED:
            continue
        figures, count = row(tenant_id), int(count)
        figures["turns"] += count
        if state == "completed":
            figures["answered"] += count
        elif state == "cancelled":
            figures["cancelled"] += count
        else:
            figures["failed"] += count
            by_category = figures["failed_by_category"]
            name = category or NO_CATEGORY
            by_category[name] = by_category.get(name, 0) + count

    metric = MessageMetric
    complete = metric.status == literal_column("'complete'")

    def ranked(column: Any) -> tuple[Any, Any]:
        # Completed answers with a value sort first, ascending, on both dialects (whatever
        # their NULL order); the count is of those only.
        usable = and_(complete, column.is_not(None))
        rank = func.row_number().over(
            partition_by=metric.tenant_id, order_by=(case((usable, _sql(0)), else_=_sql(1)), column)
        )
        count = func.count(case((complete, column))).over(partition_by=metric.tenant_id)
        return rank, count

    first_rank, first_count = ranked(metric.first_token_ms)
    latency_rank, latency_count = ranked(metric.latency_ms)
    day_rows = (
        select(
            metric.tenant_id.label("tenant_id"),
            metric.first_token_ms.label("first"),
            metric.latency_ms.label("latency"),
            metric.tokens_in.label("tokens_in"),
            metric.tokens_out.label("tokens_out"),
            metric.usage_source.label("source"),
            first_rank.label("first_rank"),
            first_count.label("first_count"),
            latency_rank.label("latency_rank"),
            latency_count.label("latency_count"),
        )
        .where(
            metric.tenant_id.in_(tenant_ids),
            metric.created_at >= start,
            metric.created_at < end,
        )
        .subquery()
    )
    c = day_rows.c

    def sources(name: str) -> Any:
        return func.sum(case((c.source == name, _sql(1)), else_=_sql(0)))

    summary = select(
        c.tenant_id,
        _nearest_rank(c.first, c.first_rank, c.first_count, 50),
        _nearest_rank(c.first, c.first_rank, c.first_count, 95),
        _nearest_rank(c.latency, c.latency_rank, c.latency_count, 50),
        _nearest_rank(c.latency, c.latency_rank, c.latency_count, 95),
        func.coalesce(func.sum(c.tokens_in), 0),
        func.coalesce(func.sum(c.tokens_out), 0),
        sources(UsageSource.REPORTED),
        sources(UsageSource.COUNTED),
        sources(UsageSource.ESTIMATED),
    ).group_by(c.tenant_id)
    for tenant_id, *values in (await session.execute(summary)).all():
        figures = row(tenant_id)
        for name, value in zip(
            (
                "first_token_p50_ms",
                "first_token_p95_ms",
                "latency_p50_ms",
                "latency_p95_ms",
            ),
            values[:4],
            strict=True,
        ):
            figures[name] = _int(value)
        for name, value in zip(
            ("tokens_in", "tokens_out", "usage_reported", "usage_counted", "usage_estimated"),
            values[4:],
            strict=True,
        ):
            figures[name] = int(value or 0)
    for figures in found.values():
        figures["failed_by_category"] = dict(sorted(figures["failed_by_category"].items()))
    return found


def _take_day(dialect: str, key: str) -> Any:
    """Insert the day's run row, or lock the existing one; returns its ``finished_at`` (0: new).

    A concurrent run of the same day waits here until the first commits."""
    make = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = make(AnalyticsRun).values(day=key, finished_at=0, tenant_rows=0)
    return statement.on_conflict_do_update(
        index_elements=[AnalyticsRun.day], set_={"finished_at": AnalyticsRun.finished_at}
    ).returning(AnalyticsRun.finished_at)


def past_retention(day: date, *, today: date, retention_days: int) -> bool:
    """Whether retention deletes (or has deleted) the metrics of ``day`` once aggregated."""
    return retention_days > 0 and day < today - timedelta(days=retention_days)


async def aggregate_day(
    db: Database,
    day: date,
    *,
    today: date,
    retention_days: int,
    batch: int = TENANT_BATCH,
) -> DayDone:
    """Compute ``day``'s rows for every tenant (replacing any), in one transaction.

    Refused (:class:`AnalyticsRefused`) for a day that is not over (``day >= today``), and for
    a day aggregated before whose metrics are past retention."""
    if day >= today:
        raise AnalyticsRefused(f"{day}: the UTC day is not over yet")
    started = time.monotonic()
    key = day.isoformat()
    start = day_start_ms(day)
    end = start + DAY_MS
    async with db.write() as session:
        taken = await session.execute(_take_day(db.engine.dialect.name, key))
        computed_before = bool(taken.scalar_one())
        if computed_before and past_retention(day, today=today, retention_days=retention_days):
            raise AnalyticsRefused(
                f"{key}: already aggregated, and its answers' metrics are past "
                "RELAYLINE_METRICS_RETENTION_DAYS (deleted or about to be): its figures are kept"
            )
        await session.execute(delete(AnalyticsDaily).where(AnalyticsDaily.day == key))
        written = 0
        after = ""
        while True:
            tenant_ids = list(
                (
                    await session.scalars(
                        select(Tenant.id).where(Tenant.id > after).order_by(Tenant.id).limit(batch)
                    )
                ).all()
            )
            if not tenant_ids:
                break
            found = await _figures(session, tenant_ids, start, end)
            if found:
                await session.execute(
                    insert(AnalyticsDaily),
                    [{"tenant_id": t, "day": key, **found[t]} for t in sorted(found)],
                )
                written += len(found)
            if len(tenant_ids) < batch:
                break
            after = tenant_ids[-1]
        await session.execute(
            update(AnalyticsRun)
            .where(AnalyticsRun.day == key)
            .values(finished_at=now_ms(), tenant_rows=written)
        )
    return DayDone(day, written, int((time.monotonic() - started) * 1000))


# Reading


async def last_aggregated_day(db: Database) -> date | None:
    """The latest day computed (None: none yet)."""
    async with db.read() as session:
        latest = await session.scalar(select(func.max(AnalyticsRun.day)))
    return parse_day(latest) if latest else None


async def aggregated_days(db: Database, first: date, last: date) -> list[date]:
    async with db.read() as session:
        found = await session.scalars(
            select(AnalyticsRun.day)
            .where(AnalyticsRun.day >= first.isoformat(), AnalyticsRun.day <= last.isoformat())
            .order_by(AnalyticsRun.day)
        )
        return [parse_day(d) for d in found.all()]


async def daily(db: Database, tenant_id: str, first: date, last: date) -> list[dict[str, Any]]:
    """The tenant's figures for every computed day of ``first``..``last``, oldest first: zeros
    for a day without activity; a day not computed (yet) is left out."""
    computed = await aggregated_days(db, first, last)
    async with db.read() as session:
        stored = (
            await session.scalars(
                select(AnalyticsDaily).where(
                    AnalyticsDaily.tenant_id == tenant_id,
                    AnalyticsDaily.day >= first.isoformat(),
                    AnalyticsDaily.day <= last.isoformat(),
                )
            )
        ).all()
    by_day = {row.day: row for row in stored}
    rows: list[dict[str, Any]] = []
    for day in computed:
        row = by_day.get(day.isoformat())
        figures = _empty() if row is None else {name: getattr(row, name) for name in FIGURES}
        rows.append({"day": day.isoformat(), **figures})
    return rows


# The figures that add up across tenants (percentiles do not: a median of medians is no median).
SUMMED = (
    "messages",
    "turns",
    "answered",
    "cancelled",
    "failed",
    "tokens_in",
    "tokens_out",
    "usage_reported",
    "usage_counted",
    "usage_estimated",
)
BUSIEST_TENANTS = 50


def _in_range(first: date, last: date) -> Any:
    return and_(AnalyticsDaily.day >= first.isoformat(), AnalyticsDaily.day <= last.isoformat())


async def daily_all_tenants(db: Database, first: date, last: date) -> list[dict[str, Any]]:
    """Every tenant's figures added up for each computed day of ``first``..``last``, oldest
    first, as :func:`daily` gives one tenant's; the percentiles are None (they cannot be
    added up)."""
    computed = await aggregated_days(db, first, last)
    columns = [func.coalesce(func.sum(getattr(AnalyticsDaily, n)), 0) for n in SUMMED]
    async with db.read() as session:
        sums = (
            await session.execute(
                select(AnalyticsDaily.day, *columns)
                .where(_in_range(first, last))
                .group_by(AnalyticsDaily.day)
            )
        ).all()
        failures = (
            await session.execute(
                select(AnalyticsDaily.day, AnalyticsDaily.failed_by_category).where(
                    _in_range(first, last), AnalyticsDaily.failed > 0
                )
            )
        ).all()
    by_day: dict[str, dict[str, Any]] = {}
    for day, *values in sums:
        figures = by_day.setdefault(day, _empty())
        figures.update({name: int(value) for name, value in zip(SUMMED, values, strict=True)})
    for day, categories in failures:
        by_category = by_day.setdefault(day, _empty())["failed_by_category"]
        for name, count in (categories or {}).items():
            by_category[name] = by_category.get(name, 0) + int(count)
    rows: list[dict[str, Any]] = []
    for day in computed:
        figures = by_day.get(day.isoformat(), _empty())
        figures["failed_by_category"] = dict(sorted(figures["failed_by_category"].items()))
        rows.append({"day": day.isoformat(), **figures})
    return rows


async def tenant_totals(
    db: Database, first: date, last: date, *, limit: int = BUSIEST_TENANTS
) -> tuple[int, list[dict[str, Any]]]:
    """How many tenants had activity in ``first``..``last``, and the ``limit`` busiest of
    them (most messages, then most turns) with their sums over the range."""
    columns = [func.sum(getattr(AnalyticsDaily, n)).label(n) for n in SUMMED]
    async with db.read() as session:
        active = await session.scalar(
            select(func.count(func.distinct(AnalyticsDaily.tenant_id))).where(
                _in_range(first, last)
            )
        )
        found = (
            await session.execute(
                select(AnalyticsDaily.tenant_id, Tenant.name, *columns)
                .join(Tenant, Tenant.id == AnalyticsDaily.tenant_id)
                .where(_in_range(first, last))
                .group_by(AnalyticsDaily.tenant_id, Tenant.name)
                .order_by(
                    func.sum(AnalyticsDaily.messages).desc(),
                    func.sum(AnalyticsDaily.turns).desc(),
                    AnalyticsDaily.tenant_id,
                )
                .limit(limit)
            )
        ).all()
    busiest = [
        {
            "tenant_id": tenant_id,
            "name": name,
            **{n: int(v or 0) for n, v in zip(SUMMED, values, strict=True)},
        }
        for tenant_id, name, *values in found
    ]
    return int(active or 0), busiest


# Retention


@dataclass(slots=True)
class MetricsDeleted:
    deleted: int = 0
    batches: int = 0
    days: list[str] = field(default_factory=list)
    # Rows past the horizon kept because their day was never aggregated.
    kept_unaggregated: int = 0


def _spans(found: list[date]) -> list[list[date]]:
    """Consecutive days grouped: one delete range each."""
    spans: list[list[date]] = []
    for day in found:
        if spans and spans[-1][-1] + timedelta(days=1) == day:
            spans[-1].append(day)
        else:
            spans.append([day])
    return spans


async def delete_old_metrics(
    db: Database, *, today: date, retention_days: int, batch: int = DELETE_BATCH
) -> MetricsDeleted:
    """Delete the answers' metrics of aggregated days older than ``retention_days`` (0: keep
    them all), ``batch`` rows a transaction; rows of a day never aggregated stay."""
    done = MetricsDeleted()
    if retention_days <= 0:
        return done
    horizon = today - timedelta(days=retention_days)
    async with db.read() as session:
        due = [
            parse_day(d)
            for d in (
                await session.scalars(
                    select(AnalyticsRun.day)
                    .where(
                        AnalyticsRun.day < horizon.isoformat(),
                        AnalyticsRun.metrics_deleted_at.is_(None),
                    )
                    .order_by(AnalyticsRun.day)
                )
            ).all()
        ]
    doomed = aliased(MessageMetric)
    for span in _spans(due):
        low, high = day_start_ms(span[0]), day_start_ms(span[-1]) + DAY_MS
        some = select(doomed.id).where(doomed.created_at >= low, doomed.created_at < high)
        while True:
            async with db.write() as session:
                result = await session.execute(
                    delete(MessageMetric).where(MessageMetric.id.in_(some.limit(batch)))
                )
                count = int(result.rowcount)  # type: ignore[attr-defined]
                done.deleted += count
                done.batches += 1
                if count < batch:  # the span is empty now: say so in the same transaction
                    await session.execute(
                        update(AnalyticsRun)
                        .where(AnalyticsRun.day.in_([d.isoformat() for d in span]))
                        .values(metrics_deleted_at=now_ms())
                    )
                    break
        done.days += [d.isoformat() for d in span]
    async with db.read() as session:
        kept = await session.scalar(
            select(func.count())
            .select_from(MessageMetric)
            .where(MessageMetric.created_at < day_start_ms(horizon))
        )
    done.kept_unaggregated = int(kept or 0)
    return done
