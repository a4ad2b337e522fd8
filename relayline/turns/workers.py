"""The workers connected to this instance, their credit, and those the other instances hold.

Guarantees: at most one link per worker id is registered; :meth:`WorkerPool.pick` returns a
worker with free credit (the least loaded one) or None, never a draining or closed one; with a
shared coordinator, every change of the set is reported to the other instances (and the whole
list is reported again periodically by the lease sweep, with fresh load figures), so
``no_worker`` is said only when no instance has a worker and the operator sees every
instance's workers.
"""

from __future__ import annotations

from typing import Any

from relayline.turns.context import TurnContext
from relayline.turns.worker_link import WorkerLink


class WorkerPool:
    def __init__(self, ctx: TurnContext) -> None:
        self.ctx = ctx
        self.workers: dict[str, WorkerLink] = {}

    def add(self, worker: WorkerLink) -> None:
        self.workers[worker.worker_id] = worker
        self._report()

    def remove(self, worker: WorkerLink) -> None:
        """Unregister ``worker`` (not a newer link registered under its id)."""
        if self.workers.get(worker.worker_id) is worker:
            del self.workers[worker.worker_id]
            self._report()

    def connected(self, worker: WorkerLink) -> bool:
        """Whether ``worker`` is still registered and open."""
        return not worker.closed and worker.worker_id in self.workers

    def pick(self) -> WorkerLink | None:
        """The least loaded worker with free credit."""
        best: WorkerLink | None = None
        for worker in self.workers.values():
            if worker.free > 0 and (best is None or worker.load < best.load):
                best = worker
        return best

    def candidates(self) -> list[WorkerLink]:
        """Workers with free credit to claim for, least loaded first, one per set of
        announced models (a turn none of them can take, no other worker of the same models
        can either)."""
        free = sorted((w for w in self.workers.values() if w.free > 0), key=lambda w: w.load)
        seen: set[tuple[str, ...]] = set()
        picked: list[WorkerLink] = []
        for worker in free:
            if worker.models not in seen:
                seen.add(worker.models)
                picked.append(worker)
        return picked

    async def models(self) -> dict[str, int]:
        """The models that connected workers announce (every instance's), each with how many
        ready (not draining) workers announce it."""
        found: dict[str, int] = {}
        for worker in await self.everywhere():
            if worker.get("status") == "offline":
                continue
            ready = 0 if worker.get("draining") else 1
            for model in worker.get("models") or ():
                if isinstance(model, str):
                    found[model] = found.get(model, 0) + ready
        return found

    async def any_worker(self) -> bool:
        """Whether this or any other instance has a worker."""
        return bool(self.workers) or bool(await self.ctx.coordinator.workers_elsewhere())

    async def report(self) -> None:
        await self.ctx.coordinator.report_workers(self.snapshot())

    def snapshot(self) -> list[dict[str, Any]]:
        """This instance's workers, as the admin API describes them."""
        return [w.describe() for w in self.workers.values()]

    async def everywhere(self) -> list[dict[str, Any]]:
        """This instance's workers, then those the other instances reported (each with its
        ``instance``)."""
        here = self.ctx.coordinator.instance_id
        local = [{**w, "instance": here} for w in self.snapshot()]
        if not self.ctx.coordinator.shared:
            return local
        return local + await self.ctx.coordinator.workers_elsewhere()

    def _report(self) -> None:
        if self.ctx.coordinator.shared:
            self.ctx.spawn(self.ctx.coordinator.report_workers(self.snapshot()))
