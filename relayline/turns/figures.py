"""The turn and worker gauges: set by the lease sweep every few seconds.

Worker figures are this instance's own (its connected workers), so a sum across instances is
the whole. Queue figures come from the shared store, so only the instance that holds the
``queue-figures`` role reports them and every other reports 0: summed across instances they
are counted once (see :mod:`relayline.observability.turn_metrics`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from relayline.observability import turn_metrics as tm
from relayline.observability.metrics import BACKUP_LAST_SUCCESS
from relayline.observability.store_metrics import STORE_POOL_IN_USE, pool_in_use
from relayline.store import turn_queue
from relayline.turns.context import TurnContext
from relayline.turns.workers import WorkerPool

FIGURES_INTERVAL_S = 5.0
QUEUE_ROLE = "queue-figures"
MANIFEST_GLOB = "relayline-*.manifest.json"


def newest_backup(folder: Path) -> float:
    """When the newest complete backup in ``folder`` finished (its manifest, written last, is
    its proof), as Unix time; 0 when there is none. A backup taken by ``relayline backup`` from
    cron or a timer counts as much as one the relay took itself."""
    try:
        return max((p.stat().st_mtime for p in folder.glob(MANIFEST_GLOB)), default=0.0)
    except OSError:
        return 0.0


async def report(ctx: TurnContext, pool: WorkerPool) -> None:
    """Set the gauges from this instance's workers and, when it leads, from the store."""
    links = list(pool.workers.values())
    tm.WORKERS_CONNECTED.set(len(links))
    tm.WORKER_CAPACITY.set(sum(w.capacity for w in links))
    tm.WORKER_INFLIGHT.set(sum(len(w.inflight) for w in links))
    tm.WORKERS_BREAKER_OPEN.set(sum(1 for w in links if w.state.get("breaker") == "open"))
    STORE_POOL_IN_USE.set(pool_in_use(ctx.db.engine))
    BACKUP_LAST_SUCCESS.set(await asyncio.to_thread(newest_backup, ctx.settings.backup_dir))
    if not await ctx.coordinator.lead(QUEUE_ROLE, FIGURES_INTERVAL_S * 3):
        tm.QUEUE_LEADER.set(0)
        tm.TURNS_QUEUED.set(0)
        tm.OLDEST_QUEUED.set(0)
        return
    queued, oldest_ms = await turn_queue.queue_figures(ctx.db)
    tm.QUEUE_LEADER.set(1)
    tm.TURNS_QUEUED.set(queued)
    tm.OLDEST_QUEUED.set(max(0.0, time.time() - oldest_ms / 1000) if oldest_ms else 0)
