"""Leases: how long an attempt stays this instance's, in memory and in the store.

Two clocks run. In memory, each attempt's ``lease_expires`` moves forward with every frame
or ``state`` from its worker; an attempt whose worker stays silent past ``turn_lease_s`` is
cancelled on the worker and handled as lost (retried, or failed at the attempt limit). In the
store, this instance renews the leases of every attempt it holds each third of
``turn_lease_s``, and re-queues the running turns whose lease ran out (their instance died).

The sweep also ticks the periodic claim (covering a lost wake-up) and the periodic worker
count report. Guarantees: a failing store never stops the sweep (it is retried next round);
a turn cancelled in the store is stopped here even when the cancel broadcast was lost.
Renewal is fenced by attempt: when this instance could not renew for longer than
``turn_lease_s`` (a slow store, a paused process) and another instance took the turn over,
the next renewal that reaches the store finds the attempt replaced, and the attempt is
stopped here without any store write: its worker is told ``turn.cancel``, its later frames
and unpublished deltas are dropped, and its chat is freed, so it stops streaming into the
chat and the shared partial answer that now belong to the other instance's attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from relayline.observability import turn_metrics as tm
from relayline.protocol.close_codes import Close
from relayline.protocol.names import WorkerFrame
from relayline.store import turn_queue
from relayline.turns import figures
from relayline.turns.claims import ClaimLoop
from relayline.turns.context import TurnContext
from relayline.turns.running import Running, RunningTurns
from relayline.turns.streaming import DeltaStream
from relayline.turns.worker_link import WorkerLink
from relayline.turns.workers import WorkerPool

log = structlog.get_logger("relayline.turns")

# A claim also runs this often with no wake-up, covering a broadcast that was lost.
CLAIM_INTERVAL_S = 1.0
# How often this instance tells the others how many workers it holds.
REPORT_INTERVAL_S = 5.0

CancelRunning = Callable[[str, str], Awaitable[None]]  # (chat_id, turn_id), not broadcast
Lost = Callable[[Running, str, str], Awaitable[None]]  # (running, reason, category)


class LeaseKeeper:
    def __init__(
        self,
        ctx: TurnContext,
        turns: RunningTurns,
        pool: WorkerPool,
        claims: ClaimLoop,
        *,
        cancel: CancelRunning,
        lost: Lost,
        forget_approvals: Callable[[Running], None],
    ) -> None:
        self.ctx = ctx
        self.turns = turns
        self.pool = pool
        self.claims = claims
        self._cancel = cancel
        self._lost = lost
        self._forget_approvals = forget_approvals

    def extend(self, running: Running) -> None:
        """The attempt's worker spoke for it: it has ``turn_lease_s`` more."""
        running.lease_expires = time.monotonic() + self.ctx.settings.turn_lease_s

    def extend_worker(self, worker: WorkerLink) -> None:
        """The worker is alive: every attempt it runs has ``turn_lease_s`` more."""
        deadline = time.monotonic() + self.ctx.settings.turn_lease_s
        for running in self.turns.by_turn.values():
            if running.worker is worker:
                running.lease_expires = deadline

    async def run(self) -> None:
        lease_s = self.ctx.settings.turn_lease_s
        interval = max(0.05, min(1.0, lease_s / 4))
        renew_every = lease_s / 3
        last_renew = last_claim = last_report = time.monotonic()
        last_figures = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            try:
                if now - last_renew >= renew_every:
                    last_renew = now
                    await self._renew()
                    await self.reclaim()
                if now - last_claim >= CLAIM_INTERVAL_S:
                    last_claim = now
                    self.claims.kick()
                if now - last_report >= REPORT_INTERVAL_S:
                    last_report = now
                    await self.pool.report()
                if now - last_figures >= figures.FIGURES_INTERVAL_S:
                    last_figures = now
                    await figures.report(self.ctx, self.pool)
            except Exception:  # the store is away for now: try again next round
                log.exception("sweep_failed")
            await self._expire()

    async def _expire(self) -> None:
        now = time.monotonic()
        for running in list(self.turns.by_turn.values()):
            if running.lease_expires >= now:
                continue
            running.worker.send(
                {
                    "type": WorkerFrame.TURN_CANCEL,
                    "turn_id": running.turn_id,
                    "attempt": running.attempt,
                }
            )
            log.warning("lease_expired", **running.log_fields())
            # Every frame and state report from a worker extends all its attempts: one that ran
            # out means the whole link has been silent for a lease (a live worker reports its
            # state far more often). Such a link is dead, however open its socket looks (a NAT
            # that forgot it sends no FIN): it must not be given the retry.
            self._drop_silent(running.worker)
            try:
                await self._lost(running, "lease expired", "timeout")
            except Exception:  # keep sweeping; the store lease lets any instance retry it
                log.exception("lease_expiry_failed", turn_id=running.turn_id)

    def _drop_silent(self, worker: WorkerLink) -> None:
        if worker.closed:
            return
        log.warning("worker_silent", worker_id=worker.worker_id)
        worker.closed = True  # no credit from now on: nothing more is assigned to it
        self.ctx.spawn(worker.close(Close.HEARTBEAT_TIMEOUT, "worker silent past the lease"))

    async def _renew(self) -> None:
        """Vouch in the store for the attempts this instance runs; stop those cancelled there
        and those another instance took over."""
        held = dict(self.turns.by_turn)
        renewal = await turn_queue.renew(
            self.ctx.db, {turn_id: r.attempt for turn_id, r in held.items()}, self.ctx.lease_ms
        )
        for turn_id in renewal.cancelled:
            running = self.turns.by_turn.get(turn_id)
            if running is not None:
                await self._cancel(running.chat_id, turn_id)
        for turn_id in renewal.lost:
            running = held[turn_id]
            if self.turns.holds(running):  # not ended here meanwhile
                self._stop_lost(running)

    def _stop_lost(self, running: Running) -> None:
        """The turn is no longer this attempt's in the store: stop it here, writing nothing.

        The store, the chat's shared partial answer and its announcements now belong to
        whoever holds the turn (or to the instance that re-queued it), so none is touched.
        """
        log.warning(
            "turn_lost_to_another_attempt",
            turn_id=running.turn_id,
            attempt=running.attempt,
            chat_id=running.chat_id,
            worker_id=running.worker.worker_id,
            correlation_id=running.correlation_id,
        )
        # Refuse its later frames, and drop what it streamed but was not published yet.
        self.turns.release(running)
        self._forget_approvals(running)  # here only: the shared copy is the new holder's
        DeltaStream.cancel_timer(running)
        running.pending.clear()
        running.pending_chars = 0
        running.worker.send(
            {
                "type": WorkerFrame.TURN_CANCEL,
                "turn_id": running.turn_id,
                "attempt": running.attempt,
            }
        )
        running.worker.inflight.discard(running.turn_id)
        self.turns.free_chat(running)
        self.claims.kick()

    async def reclaim(self, *, everything: bool = False) -> None:
        """Queue again the turns whose instance stopped renewing their lease (it died).

        ``everything``: every running turn in the store, for the only instance at start-up.
        The turns held here are read when the store answers, not when the call starts: one
        claimed here while this waited for the store (its lease may have run out by then on a
        slow host) is this instance's, not a dead one's.
        """
        reclaimed = await turn_queue.reclaim_expired(
            self.ctx.db,
            exclude=self.turns.by_turn.keys(),
            max_attempts=self.ctx.settings.turn_max_attempts,
            everything=everything,
        )
        for turn in reclaimed:
            tm.TURN_RECLAIMS.inc()
            if turn.failed:
                tm.TURNS_ENDED.labels("failed").inc()
                tm.TURNS_FAILED.labels("internal").inc()
            else:
                tm.TURN_RETRIES.labels("instance_lost").inc()
            log.warning(
                "turn_reclaimed",
                turn_id=turn.turn_id,
                attempt=turn.attempt,
                correlation_id=turn.correlation_id,
                failed=turn.failed,
            )
            if turn.failed:
                await self.ctx.events.turn_failed(
                    turn.chat_id,
                    turn.turn_id,
                    turn.message_id,
                    "internal",
                    f"relay instance lost after {turn.attempt} attempts",
                    turn.correlation_id,
                )
            else:
                await self.ctx.events.turn_retrying(
                    turn.chat_id,
                    turn.turn_id,
                    turn.attempt + 1,
                    "relay instance lost",
                    turn.correlation_id,
                )
        if reclaimed:
            self.claims.kick()
            await self.ctx.coordinator.broadcast({"kind": "wake"})
