"""The turn and worker gauges: set by the lease sweep every few seconds.

Worker figures are this instance's own (its connected workers), so a sum across instances is
the whole. Queue figures come from the shared store, so only the instance that holds the
``queue-figures`` role reports them and every other reports 0: summed across instances they
are counted once (see :mod:`relayline.observability.turn_metrics`).
"""

from __future__ import annotations

import time

from relayline.observability import turn_metrics as tm
from relayline.observability.store_metrics import STORE_POOL_IN_USE, pool_in_use
from relayline.store import turn_queue
from relayline.turns.context import TurnContext
from relayline.turns.workers import WorkerPool

FIGURES_INTERVAL_S = 5.0
QUEUE_ROLE = "queue-figures"


async def report(ctx: TurnContext, pool: WorkerPool) -> None:
    """Set the gauges from this instance's workers and, when it leads, from the store."""
    links = list(pool.workers.values())
    tm.WORKERS_CONNECTED.set(len(links))
    tm.WORKER_CAPACITY.set(sum(w.capacity for w in links))
    tm.WORKER_INFLIGHT.set(sum(len(w.inflight) for w in links))
    tm.WORKERS_BREAKER_OPEN.set(sum(1 for w in links if w.state.get("breaker") == "open"))
    STORE_POOL_IN_USE.set(pool_in_use(ctx.db.engine))
    if not await ctx.coordinator.lead(QUEUE_ROLE, FIGURES_INTERVAL_S * 3):
        tm.QUEUE_LEADER.set(0)
        tm.TURNS_QUEUED.set(0)
        tm.OLDEST_QUEUED.set(0)
        return
    queued, oldest_ms = await turn_queue.queue_figures(ctx.db)
    tm.QUEUE_LEADER.set(1)
    tm.TURNS_QUEUED.set(queued)
    tm.OLDEST_QUEUED.set(max(0.0, time.time() - oldest_ms / 1000) if oldest_ms else 0)
