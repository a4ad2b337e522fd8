"""Turn dispatch: one turn at a time per chat, credit-based assignment to workers, leases,
attempts as fencing tokens, delta coalescing, completion, cancel and tool approvals.

The queue is the store (:mod:`relayline.store.turn_queue`), shared by every instance: an
instance claims the head turn of a chat when one of its own workers has free credit, and
holds the running attempt (its worker, streamed text, approvals) in memory while renewing the
turn's lease in the store. When an instance dies its leases run out and another instance
queues the turn again; a restart loses no turn. A :class:`Coordinator` carries what the store
cannot: wake-ups, cancels and approval decisions for the instance that holds a turn, the
partial answer and open approval requests for snapshots, and whether any instance has a
worker.

:class:`TurnDispatcher` is the entry point for the rest of the relay: it owns one of each
part and routes to them.

- :mod:`~relayline.turns.workers`: connected workers and their credit;
- :mod:`~relayline.turns.claims`: claiming turns from the store and assigning them;
- :mod:`~relayline.turns.running`: the attempts held here, by turn and by chat;
- :mod:`~relayline.turns.streaming`: deltas coalesced into ``message.delta`` events;
- :mod:`~relayline.turns.approvals`: tool approval requests and decisions;
- :mod:`~relayline.turns.outcomes`: how an attempt ends;
- :mod:`~relayline.turns.leases`: lease renewal, expiry and reclaiming.
"""

from __future__ import annotations

import asyncio
from typing import Any

from relayline.bus.base import Bus
from relayline.config import Settings
from relayline.protocol.names import WorkerFrame
from relayline.store import turn_queue
from relayline.store.database import Database
from relayline.tasks import cancel_all
from relayline.turns.approvals import Approvals, still_open
from relayline.turns.claims import ClaimLoop
from relayline.turns.context import TurnContext
from relayline.turns.coordination import Coordinator, Handler, LocalCoordinator
from relayline.turns.leases import LeaseKeeper
from relayline.turns.outcomes import Outcomes
from relayline.turns.running import Running, RunningTurns
from relayline.turns.streaming import DeltaStream, checked_tool_calls, tool_call_chars
from relayline.turns.worker_link import WorkerLink
from relayline.turns.workers import WorkerPool

ENDINGS_SETTLE_S = 10.0  # at shutdown, how long stored outcomes may still take


class TurnDispatcher:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.coordinator: Coordinator = coordinator or LocalCoordinator()
        self.ctx = TurnContext(settings, db, bus, self.coordinator)
        self.turns = RunningTurns()
        self.pool = WorkerPool(self.ctx)
        self.claims = ClaimLoop(self.ctx, self.turns, self.pool)
        self.stream = DeltaStream(self.ctx)
        self.approvals = Approvals(self.ctx, self.turns)
        self.outcomes = Outcomes(self.ctx, self.turns, self.stream, self.approvals, self.claims)
        self.leases = LeaseKeeper(
            self.ctx,
            self.turns,
            self.pool,
            self.claims,
            cancel=self._cancel_here,
            lost=self.outcomes.lost,
            forget_approvals=lambda running: self.approvals.forget(running, share=False),
        )
        self.claims.cancelled = self.outcomes.cancelled
        self._tasks: list[asyncio.Task[None]] = []
        # Other parts of the relay that talk to the other instances over the same channel,
        # by message kind (e.g. credential revocations).
        self.control_handlers: dict[str, Handler] = {}

    @property
    def workers(self) -> dict[str, WorkerLink]:
        """The workers connected to this instance, by id."""
        return self.pool.workers

    @property
    def running(self) -> dict[str, Running]:
        """The attempts this instance holds, by turn id."""
        return self.turns.by_turn

    # Lifecycle

    async def start(self) -> None:
        if not self.coordinator.shared:
            # The only instance: running turns in the store were this relay's before it
            # stopped, so they are queued again now rather than when their leases run out.
            await self.leases.reclaim(everything=True)
        await self.coordinator.start(self._on_control)
        await self.coordinator.report_workers([])
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.claims.run()), loop.create_task(self.leases.run())]
        self.claims.kick()

    async def stop(self) -> None:
        # Answers whose worker said done are stored before the store closes.
        await self.outcomes.settle(ENDINGS_SETTLE_S)
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        await self.coordinator.close()

    # Queue

    async def enqueue(self, turn_id: str, chat_id: str, tenant_id: str) -> None:
        """A new turn was stored as queued; it runs after the chat's earlier turns."""
        self.claims.kick()
        await self.coordinator.broadcast({"kind": "wake"})
        if not await self.pool.any_worker():
            await self.ctx.events.no_worker(chat_id, turn_id)

    async def _on_control(self, message: dict[str, Any]) -> None:
        """A broadcast from another instance."""
        kind = message.get("kind")
        if kind == "wake":
            self.claims.kick()
        elif kind == "cancel":
            await self._cancel_here(str(message.get("chat_id")), str(message.get("turn_id")))
        elif kind == "approval":
            await self.resolve_approval(
                str(message.get("chat_id")),
                str(message.get("approval_id")),
                bool(message.get("approve")),
                broadcast=False,
            )
        elif isinstance(kind, str) and kind in self.control_handlers:
            await self.control_handlers[kind](message)

    # Workers and their frames

    def attach(self, worker: WorkerLink) -> None:
        self.pool.add(worker)
        self.claims.kick()

    async def detach(self, worker: WorkerLink) -> None:
        self.pool.remove(worker)
        for running in self.turns.on_worker(worker):
            await self.outcomes.lost(running, "worker disconnected", "internal")
        if not await self.pool.any_worker():
            for turn_id, chat_id in await turn_queue.queued_heads(self.db):
                await self.ctx.events.no_worker(chat_id, turn_id)

    def owned(self, worker: WorkerLink, frame: dict[str, Any]) -> Running | None:
        """The running attempt this frame speaks for, or None for a stale or foreign one."""
        running = self.turns.by_turn.get(str(frame.get("turn_id")))
        if (
            running is None
            or running.worker is not worker
            or running.attempt != frame.get("attempt")
        ):
            return None
        self.leases.extend(running)
        return running

    def renew(self, worker: WorkerLink) -> None:
        self.leases.extend_worker(worker)

    async def on_delta(self, running: Running, text: str) -> None:
        limit = self.settings.max_answer_chars
        if running.published_chars + running.pending_chars + len(text) > limit:
            # An answer past the limit ends here: the worker stops, the text so far is kept.
            detail = f"the answer is longer than RELAYLINE_MAX_ANSWER_CHARS ({limit})"
            await self._stop_and_fail(running, detail)
            return
        await self.stream.on_delta(running, text)

    async def on_tool_calls(self, running: Running, value: object) -> None:
        """A completion's tool calls, from ``turn.delta``; malformed ones fail the turn."""
        calls = checked_tool_calls(value)
        if calls is None:
            await self._stop_and_fail(running, "malformed tool_calls from the worker")
            return
        limit = self.settings.max_answer_chars
        if tool_call_chars(running.tool_calls) + tool_call_chars(calls) > limit:
            detail = f"the tool calls are longer than RELAYLINE_MAX_ANSWER_CHARS ({limit})"
            await self._stop_and_fail(running, detail)
            return
        await self.stream.on_tool_calls(running, calls)

    async def _stop_and_fail(self, running: Running, detail: str) -> None:
        """The worker stops the attempt; it ends failed (``internal``), the text so far kept."""
        running.worker.send(
            {
                "type": WorkerFrame.TURN_CANCEL,
                "turn_id": running.turn_id,
                "attempt": running.attempt,
            }
        )
        await self.outcomes.failed(running, "internal", detail)

    async def on_done(
        self, running: Running, usage: dict[str, Any], finish_reason: object = None
    ) -> None:
        """``turn.done`` from a worker's frame loop: returns once the attempt is released and
        its last text published; a task stores and announces the answer
        (:meth:`Outcomes.finish_later`), so the worker's frames for its other turns do not wait
        on the store."""
        self.outcomes.finish_later(await self.outcomes.done_released(running, usage, finish_reason))

    async def on_failed(self, running: Running, category: str, detail: str) -> None:
        """``turn.failed`` from a worker's frame loop, as :meth:`on_done`."""
        self.outcomes.finish_later(await self.outcomes.failed_released(running, category, detail))

    async def on_released(self, running: Running) -> None:
        """A draining worker hands the turn back before finishing it."""
        await self.outcomes.lost(running, "worker released the turn", "internal")

    async def on_approval_request(self, running: Running, frame: dict[str, Any]) -> None:
        await self.approvals.request(running, frame)

    async def resolve_approval(
        self, chat_id: str, approval_id: str, approve: bool, *, broadcast: bool = True
    ) -> bool:
        return await self.approvals.resolve(chat_id, approval_id, approve, broadcast=broadcast)

    # Cancel and snapshots

    async def cancel_running(self, chat_id: str, turn_id: str, *, broadcast: bool = True) -> None:
        """After the store marked ``turn_id`` cancelled: stop its worker and keep the partial.

        A queued turn needs nothing more (the store no longer offers it). A turn running on
        another instance is stopped by that instance, told through the coordinator.
        """
        running = self.turns.by_chat.get(chat_id)
        if running is not None and running.turn_id == turn_id and not self.turns.holds(running):
            return  # its attempt is ending here right now, and will store it as cancelled
        if running is None or running.turn_id != turn_id:
            # It may be between its claim here and its assignment: that checks this note.
            self.turns.note_cancel(turn_id)
            if broadcast and self.coordinator.shared:
                await self.coordinator.broadcast(
                    {"kind": "cancel", "chat_id": chat_id, "turn_id": turn_id}
                )
            return
        await self.outcomes.cancelled(running)

    async def _cancel_here(self, chat_id: str, turn_id: str) -> None:
        await self.cancel_running(chat_id, turn_id, broadcast=False)

    async def partial(self, chat_id: str) -> tuple[str, str] | None:
        """``(message_id, text published so far)`` of the chat's running turn, wherever it
        runs."""
        running = self.turns.by_chat.get(chat_id)
        if running is not None:
            return running.message_id, running.published_text
        if not self.coordinator.shared:
            return None
        return await self.coordinator.partial(chat_id)

    async def pending_approvals(self, chat_id: str) -> list[dict[str, Any]]:
        """The open tool-approval requests of the chat's running turn, wherever it runs,
        oldest first (each as announced in ``tool.approval_requested``)."""
        if self.turns.by_chat.get(chat_id) is not None:
            return self.approvals.open_for(chat_id)
        if not self.coordinator.shared:
            return []
        items = still_open(await self.coordinator.approvals(chat_id))
        # An instance that died holding a turn leaves its copy behind (until the turn's next
        # attempt is assigned, which clears it): it counts only while a turn is running.
        if not items or not await turn_queue.has_running_turn(self.db, chat_id):
            return []
        return items

    def snapshot(self) -> list[dict[str, Any]]:
        """The workers connected to this instance and their state."""
        return self.pool.snapshot()

    async def all_workers(self) -> list[dict[str, Any]]:
        """The workers of every instance (the admin API and console): this instance's live
        state, the others' as they last reported it."""
        return await self.pool.everywhere()
