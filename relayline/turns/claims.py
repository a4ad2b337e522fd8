"""Claiming queued turns from the store for this instance's workers, and assigning them.

The loop runs after every :meth:`ClaimLoop.kick` (a turn was queued, a chat or a worker's
credit was freed, a worker connected, another instance broadcast a wake-up, or the periodic
tick of the lease sweep). Guarantees: it claims only while some worker has free credit; it
never claims a turn of a chat that this instance still holds; a turn claimed for a worker that
left meanwhile goes straight back to the queue; an assigned attempt is held (in
:class:`RunningTurns`) before its ``turn.assigned`` frame is sent, so none of its frames is
refused; a turn cancelled between its claim and its assignment is ended as cancelled without
its worker hearing of it; a failing store is retried after a short pause.

On SQLite, which takes one writer at a time, claims run one after another. On a server store
(PostgreSQL) a claim's transaction is several round trips that mostly wait, and claims of
different turns do not block each other (``FOR UPDATE SKIP LOCKED``, as between instances), so
up to :data:`PARALLEL_CLAIMS` run side by side: each claim that finds a turn lets one more
start beside it, and the rounds stop when they find nothing. A claim holds a credit of its
worker while it runs (``WorkerLink.claiming``), so a worker is never given more turns than its
capacity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from relayline.observability import turn_metrics as tm
from relayline.protocol.generation import GENERATION_FIELDS
from relayline.protocol.names import WorkerFrame
from relayline.store import turn_queue
from relayline.store import turns as store
from relayline.turns.context import TurnContext
from relayline.turns.running import Running, RunningTurns
from relayline.turns.worker_link import WorkerLink
from relayline.turns.workers import WorkerPool

log = structlog.get_logger("relayline.turns")

RETRY_AFTER_FAILURE_S = 0.5
# At most this many claims at once on a server store (each holds a pooled connection).
PARALLEL_CLAIMS = 4


class ClaimLoop:
    def __init__(self, ctx: TurnContext, turns: RunningTurns, pool: WorkerPool) -> None:
        self.ctx = ctx
        self.turns = turns
        self.pool = pool
        self._kick = asyncio.Event()
        # How an attempt cancelled before it was sent ends (set by the dispatcher).
        self.cancelled: Callable[[Running], Awaitable[None]] | None = None
        self.parallel = 1 if ctx.db.is_sqlite else PARALLEL_CLAIMS

    def kick(self) -> None:
        """Look for claimable turns soon."""
        self._kick.set()

    async def run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self.parallel == 1:
                while await self._claim_round():
                    pass
            else:
                await self._claim_side_by_side()

    async def _claim_side_by_side(self) -> None:
        """Claim rounds until they find nothing: one at first; a round that claimed starts
        again, with one more beside it while fewer than :attr:`parallel` run."""
        loop = asyncio.get_running_loop()
        rounds = {loop.create_task(self._claim_round())}
        try:
            while rounds:
                done, rounds = await asyncio.wait(rounds, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    if not finished.result():
                        continue
                    rounds.add(loop.create_task(self._claim_round()))
                    if len(rounds) < self.parallel:
                        rounds.add(loop.create_task(self._claim_round()))
        finally:
            for unfinished in rounds:
                unfinished.cancel()

    async def _claim_round(self) -> bool:
        """Claim one turn for the least loaded worker that can take one; False when none
        could (or the store failed: the loop is kicked again after a pause)."""
        for worker in self.pool.candidates():
            try:
                if await self._claim(worker):
                    return True
            except Exception:
                log.exception("claim_failed", worker_id=worker.worker_id)
                await asyncio.sleep(RETRY_AFTER_FAILURE_S)
                self._kick.set()
                return False
        return False

    async def _claim(self, worker: WorkerLink) -> bool:
        """Claim the store's head turn for ``worker``; False when nothing is claimable."""
        settings = self.ctx.settings
        worker.claiming += 1
        try:
            assignment = await turn_queue.claim_next(
                self.ctx.db,
                worker.worker_id,
                self.ctx.lease_ms,
                settings.turn_history_messages,
                settings.turn_history_chars,
                exclude_chats=set(self.turns.by_chat),
                include_failed=settings.turn_history_failed,
                models=worker.models,
            )
        finally:
            # Nothing awaits from here until the turn joins the worker's ``inflight``.
            worker.claiming -= 1
        if assignment is None:
            return False
        if not self.pool.connected(worker):
            # The worker left during the round-trip: hand the turn straight back.
            await store.requeue(self.ctx.db, assignment.turn_id, assignment.attempt)
            return True
        await self._assign(assignment, worker)
        return True

    async def _assign(self, assignment: store.Assignment, worker: WorkerLink) -> None:
        settings = self.ctx.settings
        worker.inflight.add(assignment.turn_id)
        now = time.monotonic()
        running = Running(
            assignment.turn_id,
            assignment.chat_id,
            assignment.tenant_id,
            assignment.attempt,
            assignment.message_id,
            worker,
            now + settings.turn_lease_s,
            now,
            correlation_id=assignment.correlation_id,
            # A completion has one reader, waiting on each chunk: nothing to coalesce for.
            immediate=assignment.request is not None,
            worker_coalesces=worker.coalesces,
        )
        if self.ctx.coordinator.shared:
            # A new attempt starts with no open approval requests: an earlier attempt's, kept
            # by an instance that died, can no longer be decided. Before the attempt is held
            # (a cancel arriving meanwhile is noted, and taken below) and before the worker is
            # told (so none of this attempt's requests can be wiped).
            await self.ctx.coordinator.set_approvals(assignment.chat_id, [])
        # From here to the assignment frame nothing awaits: a cancel either was noted before,
        # or finds the attempt held and ends it after the worker was told.
        self.turns.add(running)
        if self.turns.take_cancel(assignment.turn_id) and self.cancelled is not None:
            # Cancelled between the claim and now: the worker never hears of it.
            await self.cancelled(running)
            return
        worker.send(
            _assigned(
                assignment,
                running,
                settings.turn_deadline_s,
                settings.delta_coalesce_ms,
                settings.delta_coalesce_chars,
            )
        )
        await self.ctx.events.turn_started(
            assignment.chat_id,
            assignment.turn_id,
            assignment.attempt,
            assignment.message_id,
            worker.worker_id,
            running.correlation_id,
        )
        tm.TURNS_STARTED.inc()
        log.info("turn_assigned", **running.log_fields())
        # Let the worker link's writer put the frame on the wire before the next claim's
        # transaction runs: the first token waits on it.
        await asyncio.sleep(0)


def _assigned(
    assignment: store.Assignment,
    running: Running,
    deadline_s: float,
    coalesce_ms: int,
    coalesce_chars: int,
) -> dict[str, Any]:
    """The ``turn.assigned`` frame: a chat turn runs the tenant's agent settings; a completion
    carries its own request (model, sampling, tools) and no agent settings. ``coalesce_ms`` and
    ``coalesce_chars``: the rule a worker that coalesces texts itself applies (a window of 0
    for a completion: none)."""
    frame: dict[str, Any] = {
        "type": WorkerFrame.TURN_ASSIGNED,
        "turn_id": assignment.turn_id,
        "attempt": assignment.attempt,
        "chat_id": assignment.chat_id,
        "messages": assignment.history,
        "correlation_id": running.correlation_id,
        "deadline": int((time.time() + deadline_s) * 1000),
        "coalesce_ms": 0 if running.immediate else coalesce_ms,
        "coalesce_chars": coalesce_chars,
    }
    request = assignment.request
    if request is not None:
        completion = {k: request[k] for k in ("tools", "tool_choice") if k in request}
        frame.update(
            tools=[],
            model=request.get("model"),
            system_prompt=None,
            generation=request.get("generation") or {},
            completion=completion,
        )
        return frame
    agent = assignment.agent
    frame.update(
        tools=_names(agent.get("tools")),
        model=agent.get("model"),
        system_prompt=agent.get("system_prompt"),
        generation={k: agent[k] for k in GENERATION_FIELDS if agent.get(k) is not None},
    )
    return frame


def _names(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
