"""The relay's daily analytics run, at ``RELAYLINE_ANALYTICS_AT`` (a UTC time of day).

At that time each day the previous UTC day is computed (:mod:`relayline.store.analytics`), then
the answers' metrics past ``RELAYLINE_METRICS_RETENTION_DAYS`` are deleted. What is due is read
from the store (the latest day in ``analytics_runs``), so a relay that was down catches up: every
day after the latest one computed, up to the previous day, at most
``RELAYLINE_ANALYTICS_CATCH_UP_DAYS`` back. A restart neither repeats nor skips a day, and a day
computed with ``relayline aggregate`` counts. With several instances only the one holding the
``analytics`` role (:meth:`Coordinator.lead`) runs it; it asks again before each day and stops
when it no longer holds the role. Every run logs one ``analytics_aggregated`` line (or
``analytics_failed``).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog

from relayline.config import Schedule, Settings, parse_schedule
from relayline.store import analytics
from relayline.store.database import Database
from relayline.tasks import cancel_and_wait
from relayline.turns.coordination import Coordinator

log = structlog.get_logger("relayline.analytics")

ROLE = "analytics"
ROLE_TTL_S = 600.0  # asked again before each day: a run outlives it only if one day takes longer
CHECK_INTERVAL_S = 60.0
# The first check waits a little: a daily job need not compete with a relay's start-up.
START_DELAY_S = 20.0


def due_through(schedule: Schedule, now: float) -> date:
    """The latest day due at ``now`` (Unix seconds): the day before the latest scheduled
    moment at or before ``now``."""
    moment = schedule.last_due(now)
    assert moment is not None  # a daily schedule
    return datetime.fromtimestamp(moment, UTC).date() - timedelta(days=1)


class ScheduledAnalytics:
    def __init__(self, settings: Settings, db: Database, coordinator: Coordinator) -> None:
        self.settings = settings
        self.db = db
        self.coordinator = coordinator
        self.schedule = parse_schedule(settings.analytics_at)
        self._task: asyncio.Task[None] | None = None
        self._swept_on: date | None = None  # the UTC day this instance last applied retention

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        await asyncio.sleep(START_DELAY_S)
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next check tries again
                log.error("analytics_failed", detail=f"{type(exc).__name__}: {exc}"[:500])
            await asyncio.sleep(CHECK_INTERVAL_S)

    async def days_due(self, now: float) -> list[date]:
        """The days to compute at ``now``: after the latest one computed, through the previous
        day, at most ``analytics_catch_up_days`` of them (the most recent)."""
        last = due_through(self.schedule, now)
        earliest = last - timedelta(days=self.settings.analytics_catch_up_days - 1)
        latest = await analytics.last_aggregated_day(self.db)
        first = earliest if latest is None else max(earliest, latest + timedelta(days=1))
        return list(analytics.days(first, last))

    async def tick(self, now: float | None = None) -> dict[str, Any] | None:
        """Compute the days due and apply retention, when this instance holds the role; what it
        did (None: nothing was due here, or another instance holds the role)."""
        moment = time.time() if now is None else now
        today = analytics.utc_today(moment)
        due = await self.days_due(moment)
        if not due and self._swept_on == today:
            return None
        if not await self.coordinator.lead(ROLE, ROLE_TTL_S):
            return None
        started = time.monotonic()
        retention = self.settings.metrics_retention_days
        done: list[dict[str, Any]] = []
        for day in due:
            if not await self.coordinator.lead(ROLE, ROLE_TTL_S):
                break  # another instance has the role now and carries on from the store
            result = await analytics.aggregate_day(
                self.db, day, today=today, retention_days=retention
            )
            done.append({"day": day.isoformat(), "tenant_rows": result.tenant_rows})
        deleted = await analytics.delete_old_metrics(self.db, today=today, retention_days=retention)
        self._swept_on = today
        report = {
            "days": done,
            "metrics_deleted": deleted.deleted,
            "delete_batches": deleted.batches,
            "kept_unaggregated": deleted.kept_unaggregated,
        }
        if done or deleted.deleted:
            log.info(
                "analytics_aggregated",
                days=[d["day"] for d in done],
                tenant_rows=sum(d["tenant_rows"] for d in done),
                metrics_deleted=deleted.deleted,
                duration_s=round(time.monotonic() - started, 3),
            )
        if deleted.kept_unaggregated:
            log.warning(
                "analytics_metrics_kept",
                rows=deleted.kept_unaggregated,
                detail="metrics past retention on days never aggregated: "
                "relayline aggregate --from D --to D computes them, the next run deletes them",
            )
        return report
