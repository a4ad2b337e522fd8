"""Backups watched, and taken by the relay itself on ``RELAYLINE_BACKUP_SCHEDULE``.

Every check sets ``relayline_backup_last_success_timestamp_seconds`` from the backup folder's
newest manifest, whoever took that backup (the staleness alert watches it), schedule or not.

The schedule is a UTC time of day (``"02:30"``: daily) or an interval (``"6h"``, ``"90m"``).
Whether a backup is due is read from the backup folder (the newest manifest's time), so a
restart neither repeats nor skips one, and a backup taken by hand counts. With several
instances, only the one holding the ``backups`` role (:meth:`Coordinator.lead`) takes it.
Every run logs one ``backup_taken`` or ``backup_failed`` line; a failure also counts on
``relayline_backup_failures_total`` (the staleness alert watches the last success).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import structlog

from relayline.config import Settings, parse_schedule
from relayline.observability.metrics import BACKUP_FAILURES, BACKUP_LAST_SUCCESS
from relayline.ops import backups
from relayline.tasks import cancel_and_wait
from relayline.turns.coordination import Coordinator

log = structlog.get_logger("relayline.backups")

CHECK_INTERVAL_S = 30.0
ROLE = "backups"
ROLE_TTL_S = 3600.0  # held while the holder keeps asking; a backup never runs twice within it


def newest_finished(folder: Path) -> float:
    """When the newest complete backup in ``folder`` finished (its manifest, written last, is
    its proof), as Unix time; 0 when there is none. A backup taken by ``relayline backup`` from
    cron or a timer counts as much as one the relay took itself."""
    with contextlib.suppress(OSError):
        return max((b.manifest.stat().st_mtime for b in backups.list_backups(folder)), default=0)
    return 0.0


class ScheduledBackups:
    """The relay's backup job: reports the newest backup in the folder
    (``relayline_backup_last_success_timestamp_seconds``) and, on a schedule, takes them."""

    def __init__(self, settings: Settings, coordinator: Coordinator) -> None:
        self.settings = settings
        self.coordinator = coordinator
        raw = settings.backup_schedule
        self.schedule = parse_schedule(raw) if raw else None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next check tries again; the failure is logged and counted
                log.exception("backup_check_failed")
            await asyncio.sleep(CHECK_INTERVAL_S)

    async def tick(self, now: float | None = None) -> bool:
        """Report the newest backup; take one when it is due and this instance holds the
        role. Whether it took one."""
        folder = self.settings.backup_dir
        last = await asyncio.to_thread(newest_finished, folder)
        BACKUP_LAST_SUCCESS.set(last)
        moment = time.time() if now is None else now
        if self.schedule is None or not self.schedule.due(last, moment):
            return False
        if not await self.coordinator.lead(ROLE, ROLE_TTL_S):
            return False
        started = time.monotonic()
        try:
            made = await backups.create(self.settings, folder)
            pruned = await asyncio.to_thread(
                backups.prune,
                folder,
                keep=self.settings.backup_keep,
                max_age_days=self.settings.backup_max_age_days,
            )
        except Exception as exc:
            BACKUP_FAILURES.inc()
            log.error(
                "backup_failed",
                detail=f"{type(exc).__name__}: {exc}"[:500],
                duration_s=round(time.monotonic() - started, 3),
            )
            return False
        log.info(
            "backup_taken",
            file=str(made.data),
            bytes=made.info["bytes"],
            duration_s=round(time.monotonic() - started, 3),
            pruned=len(pruned),
        )
        BACKUP_LAST_SUCCESS.set(await asyncio.to_thread(newest_finished, folder))
        return True
