"""Turn dispatch: one turn at a time per chat, credit-based assignment to workers, leases,
attempts as fencing tokens, delta coalescing, completion, cancel and tool approvals.

The queue is the store (:mod:`relayline.store.turn_queue`), shared by every instance: an
instance claims the head turn of a chat when one of its own workers has free credit, and
holds the running attempt (its worker, streamed text, approvals) in memory while renewing the
turn's lease in the store. When an instance dies its leases run out and another instance
queues the turn again; a restart loses no turn. A :class:`Coordinator` carries what the store
cannot: wake-ups, cancels and approval decisions for the instance that holds a turn, the
partial answer for snapshots, and whether any instance has a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select

from relayline.bus.base import Bus
from relayline.config import Settings
from relayline.ids import new_id
from relayline.store import turn_queue
from relayline.store import turns as store
from relayline.store.database import Database
from relayline.store.models import Turn
from relayline.turns.coordination import Coordinator, LocalCoordinator
from relayline.turns.worker_link import WorkerLink

log = structlog.get_logger("relayline.turns")

FAILURE_CATEGORIES = frozenset(
    {"timeout", "upstream_4xx", "upstream_5xx", "circuit_open", "tool_error", "internal"}
)


# A claim also runs this often with no wake-up, covering a broadcast that was lost.
CLAIM_INTERVAL_S = 1.0
# How often this instance tells the others how many workers it holds.
REPORT_INTERVAL_S = 5.0


@dataclass(slots=True)
class Running:
    turn_id: str
    chat_id: str
    tenant_id: str
    attempt: int
    message_id: str
    worker: WorkerLink
    lease_expires: float
    started: float
    correlation_id: str
    first_token: float | None = None
    text: list[str] = field(default_factory=list)
    published_chars: int = 0
    pending: list[str] = field(default_factory=list)
    pending_chars: int = 0
    flush_handle: asyncio.TimerHandle | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    approvals: set[str] = field(default_factory=set)

    @property
    def published_text(self) -> str:
        return "".join(self.text)[: self.published_chars]


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
        self.workers: dict[str, WorkerLink] = {}
        self.running: dict[str, Running] = {}
        self.running_by_chat: dict[str, Running] = {}
        self.approvals: dict[str, Running] = {}
        self.approval_deadlines: dict[str, int] = {}  # unix ms; a decision after it is refused
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    # Lifecycle

    @property
    def lease_ms(self) -> int:
        return int(self.settings.turn_lease_s * 1000)

    async def start(self) -> None:
        if not self.coordinator.shared:
            # The only instance: running turns in the store were this relay's before it
            # stopped, so they are queued again now rather than when their leases run out.
            await self._reclaim(everything=True)
        await self.coordinator.start(self._on_control)
        await self.coordinator.report_workers(0)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pump()), loop.create_task(self._sweep())]
        self._kick.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.coordinator.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a coordinator call without waiting on it (kept referenced until it ends)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Queue

    async def enqueue(self, turn_id: str, chat_id: str, tenant_id: str) -> None:
        """A new turn was stored as queued; it runs after the chat's earlier turns."""
        self._kick.set()
        await self.coordinator.broadcast({"kind": "wake"})
        if not await self._any_worker():
            await self._publish(
                chat_id, "worker.state", {"status": "no_worker", "turn_id": turn_id}
            )

    async def _any_worker(self) -> bool:
        return bool(self.workers) or await self.coordinator.workers_elsewhere() > 0

    def _pick_worker(self) -> WorkerLink | None:
        best: WorkerLink | None = None
        for worker in self.workers.values():
            if worker.free > 0 and (best is None or worker.load < best.load):
                best = worker
        return best

    async def _pump(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            while True:
                worker = self._pick_worker()
                if worker is None:
                    break
                try:
                    claimed = await self._claim(worker)
                except Exception:
                    log.exception("claim_failed", worker_id=worker.worker_id)
                    await asyncio.sleep(0.5)
                    self._kick.set()
                    break
                if not claimed:
                    break

    async def _claim(self, worker: WorkerLink) -> bool:
        """Claim the store's head turn for ``worker``; False when nothing is claimable."""
        assignment = await turn_queue.claim_next(
            self.db,
            worker.worker_id,
            self.lease_ms,
            self.settings.turn_history_messages,
            self.settings.turn_history_chars,
            exclude_chats=set(self.running_by_chat),
        )
        if assignment is None:
            return False
        if worker.closed or worker.worker_id not in self.workers:
            # The worker left during the round-trip: hand the turn straight back.
            await store.requeue(self.db, assignment.turn_id, assignment.attempt)
            return True
        await self._assign(assignment, worker)
        return True

    async def _assign(self, assignment: store.Assignment, worker: WorkerLink) -> None:
        worker.inflight.add(assignment.turn_id)
        now = time.monotonic()
        item = assignment
        running = Running(
            item.turn_id,
            item.chat_id,
            item.tenant_id,
            assignment.attempt,
            assignment.message_id,
            worker,
            now + self.settings.turn_lease_s,
            now,
            correlation_id=new_id(),
        )
        self.running[item.turn_id] = running
        self.running_by_chat[item.chat_id] = running
        agent = assignment.agent
        worker.send(
            {
                "type": "turn.assigned",
                "turn_id": item.turn_id,
                "attempt": assignment.attempt,
                "chat_id": item.chat_id,
                "messages": assignment.history,
                "tools": _names(agent.get("tools")),
                "model": agent.get("model"),
                "system_prompt": agent.get("system_prompt"),
                "correlation_id": running.correlation_id,
                "deadline": int((time.time() + self.settings.turn_deadline_s) * 1000),
            }
        )
        await self._publish(
            item.chat_id,
            "turn.started",
            {
                "turn_id": item.turn_id,
                "attempt": assignment.attempt,
                "message_id": assignment.message_id,
                "worker_id": worker.worker_id,
            },
        )
        log.info(
            "turn_assigned",
            turn_id=item.turn_id,
            attempt=assignment.attempt,
            worker_id=worker.worker_id,
            correlation_id=running.correlation_id,
        )

    def _release(self, running: Running, *, hold_chat: bool = False) -> None:
        """The attempt is over: refuse its frames from now on and free the worker's credit.

        With ``hold_chat`` the chat's next turn still waits, until :meth:`_free_chat`: the
        outcome has to be stored (or the turn queued again) before that turn is picked.
        """
        if running.flush_handle is not None:
            running.flush_handle.cancel()
            running.flush_handle = None
        self.running.pop(running.turn_id, None)
        running.worker.inflight.discard(running.turn_id)
        for approval_id in running.approvals:
            self.approvals.pop(approval_id, None)
            self.approval_deadlines.pop(approval_id, None)
        if self.coordinator.shared:
            asyncio.get_running_loop().create_task(self.coordinator.clear_partial(running.chat_id))
        if not hold_chat:
            self._free_chat(running)

    def _free_chat(self, running: Running) -> None:
        if self.running_by_chat.get(running.chat_id) is running:
            del self.running_by_chat[running.chat_id]
        self._kick.set()
        if self.coordinator.shared:
            # The chat's next turn may be for a worker of another instance.
            self._spawn(self.coordinator.broadcast({"kind": "wake"}))

    # Leases

    async def _sweep(self) -> None:
        interval = max(0.05, min(1.0, self.settings.turn_lease_s / 4))
        renew_every = self.settings.turn_lease_s / 3
        last_renew = last_claim = last_report = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            try:
                if now - last_renew >= renew_every:
                    last_renew = now
                    await self._renew_leases()
                    await self._reclaim()
                if now - last_claim >= CLAIM_INTERVAL_S:
                    last_claim = now
                    self._kick.set()
                if now - last_report >= REPORT_INTERVAL_S:
                    last_report = now
                    await self.coordinator.report_workers(len(self.workers))
            except Exception:  # the store is away for now: try again next round
                log.exception("sweep_failed")
            now = time.monotonic()
            for running in list(self.running.values()):
                if running.lease_expires >= now:
                    continue
                running.worker.send(
                    {"type": "turn.cancel", "turn_id": running.turn_id, "attempt": running.attempt}
                )
                try:
                    await self._lost(running, "lease expired", "timeout")
                except Exception:  # keep sweeping; the store lease lets any instance retry it
                    log.exception("lease_expiry_failed", turn_id=running.turn_id)

    async def _renew_leases(self) -> None:
        """Vouch in the store for the turns this instance runs; stop those cancelled there."""
        cancelled = await turn_queue.renew(self.db, list(self.running), self.lease_ms)
        for turn_id in cancelled:
            running = self.running.get(turn_id)
            if running is not None:
                await self.cancel_running(running.chat_id, turn_id, broadcast=False)

    async def _reclaim(self, *, everything: bool = False) -> None:
        """Queue again the turns whose instance stopped renewing their lease (it died)."""
        reclaimed = await turn_queue.reclaim_expired(
            self.db,
            exclude=set(self.running),
            max_attempts=self.settings.turn_max_attempts,
            everything=everything,
        )
        for turn in reclaimed:
            log.warning("turn_reclaimed", turn_id=turn.turn_id, attempt=turn.attempt)
            if turn.failed:
                await self._publish(
                    turn.chat_id,
                    "turn.failed",
                    {
                        "turn_id": turn.turn_id,
                        "message_id": turn.message_id,
                        "category": "internal",
                        "detail": f"relay instance lost after {turn.attempt} attempts",
                    },
                )
            else:
                await self._publish(
                    turn.chat_id,
                    "turn.retrying",
                    {
                        "turn_id": turn.turn_id,
                        "attempt": turn.attempt + 1,
                        "reason": "relay instance lost",
                    },
                )
        if reclaimed:
            self._kick.set()
            await self.coordinator.broadcast({"kind": "wake"})

    async def _on_control(self, message: dict[str, Any]) -> None:
        """A broadcast from another instance."""
        kind = message.get("kind")
        if kind == "wake":
            self._kick.set()
        elif kind == "cancel":
            await self.cancel_running(
                str(message.get("chat_id")), str(message.get("turn_id")), broadcast=False
            )
        elif kind == "approval":
            await self.resolve_approval(
                str(message.get("chat_id")),
                str(message.get("approval_id")),
                bool(message.get("approve")),
                broadcast=False,
            )

    async def _lost(self, running: Running, reason: str, category: str) -> None:
        """The attempt's worker is gone or silent: retry the turn, or fail it at the limit."""
        if self.running.get(running.turn_id) is not running:
            return
        # Hold the chat until the retry is announced: the store already keeps the turn at the
        # head of its chat, but this instance must not start it again before saying so.
        self._release(running, hold_chat=True)
        try:
            if running.attempt < self.settings.turn_max_attempts:
                if await store.requeue(self.db, running.turn_id, running.attempt):
                    await self._publish(
                        running.chat_id,
                        "turn.retrying",
                        {
                            "turn_id": running.turn_id,
                            "attempt": running.attempt + 1,
                            "reason": reason,
                        },
                    )
                return
            await self._fail(running, category, f"{reason} after {running.attempt} attempts")
        finally:
            self._free_chat(running)

    # Worker frames

    def attach(self, worker: WorkerLink) -> None:
        self.workers[worker.worker_id] = worker
        self._kick.set()
        self._report_workers()

    def _report_workers(self) -> None:
        if self.coordinator.shared:
            self._spawn(self.coordinator.report_workers(len(self.workers)))

    async def detach(self, worker: WorkerLink) -> None:
        if self.workers.get(worker.worker_id) is worker:
            del self.workers[worker.worker_id]
            self._report_workers()
        for running in [r for r in self.running.values() if r.worker is worker]:
            await self._lost(running, "worker disconnected", "internal")
        if not await self._any_worker():
            for turn_id, chat_id in await turn_queue.queued_heads(self.db):
                await self._publish(
                    chat_id, "worker.state", {"status": "no_worker", "turn_id": turn_id}
                )

    def owned(self, worker: WorkerLink, frame: dict[str, Any]) -> Running | None:
        """The running attempt this frame speaks for, or None for a stale or foreign one."""
        running = self.running.get(str(frame.get("turn_id")))
        if (
            running is None
            or running.worker is not worker
            or running.attempt != frame.get("attempt")
        ):
            return None
        running.lease_expires = time.monotonic() + self.settings.turn_lease_s
        return running

    def renew(self, worker: WorkerLink) -> None:
        deadline = time.monotonic() + self.settings.turn_lease_s
        for running in self.running.values():
            if running.worker is worker:
                running.lease_expires = deadline

    async def on_delta(self, running: Running, text: str) -> None:
        if not text:
            return
        if running.first_token is None:
            running.first_token = time.monotonic()
        running.text.append(text)
        running.pending.append(text)
        running.pending_chars += len(text)
        if running.pending_chars >= self.settings.delta_coalesce_chars:
            await self._flush(running)
        elif running.flush_handle is None:
            delay = self.settings.delta_coalesce_ms / 1000
            running.flush_handle = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(self._flush(running))
            )

    async def _flush(self, running: Running) -> None:
        async with running.lock:
            if running.flush_handle is not None:
                running.flush_handle.cancel()
                running.flush_handle = None
            if not running.pending:
                return
            text = "".join(running.pending)
            running.pending.clear()
            running.pending_chars = 0
            offset = running.published_chars
            running.published_chars += len(text)
            if self.coordinator.shared:
                await self.coordinator.set_partial(
                    running.chat_id, running.message_id, running.published_text
                )
            await self._publish(
                running.chat_id,
                "message.delta",
                {
                    "message_id": running.message_id,
                    "turn_id": running.turn_id,
                    "offset": offset,
                    "text": text,
                },
            )

    def _metrics(self, running: Running, usage: dict[str, Any]) -> dict[str, int | None]:
        now = time.monotonic()

        def count(name: str) -> int | None:
            value = usage.get(name)
            return value if isinstance(value, int) and value >= 0 else None

        return {
            "first_token_ms": int((running.first_token - running.started) * 1000)
            if running.first_token
            else None,
            "latency_ms": int((now - running.started) * 1000),
            "tokens_in": count("tokens_in"),
            "tokens_out": count("tokens_out"),
        }

    async def on_done(self, running: Running, usage: dict[str, Any]) -> None:
        await self._flush(running)
        text = "".join(running.text)
        metrics = self._metrics(running, usage)
        # The chat's next turn starts once this answer is stored (so its history has it) and
        # announced (so subscribers see the turns one after the other).
        self._release(running, hold_chat=True)
        try:
            message = await store.finish(
                self.db,
                running.turn_id,
                running.attempt,
                state="completed",
                text=text,
                message_status="complete",
                metrics=metrics,
            )
            if message is not None:
                await self._publish(
                    running.chat_id,
                    "message.completed",
                    {
                        "message_id": message.id,
                        "turn_id": running.turn_id,
                        "seq": message.seq,
                        "content": text,
                        "metrics": metrics,
                    },
                )
        finally:
            self._free_chat(running)

    async def on_failed(self, running: Running, category: str, detail: str) -> None:
        await self._flush(running)
        self._release(running, hold_chat=True)
        try:
            await self._fail(
                running, category if category in FAILURE_CATEGORIES else "internal", detail
            )
        finally:
            self._free_chat(running)

    async def _fail(self, running: Running, category: str, detail: str) -> None:
        await store.finish(
            self.db,
            running.turn_id,
            running.attempt,
            state="failed",
            text=running.published_text,
            message_status="failed",
            category=category,
            detail=detail,
            metrics=self._metrics(running, {}),
        )
        await self._publish(
            running.chat_id,
            "turn.failed",
            {
                "turn_id": running.turn_id,
                "message_id": running.message_id,
                "category": category,
                "detail": detail[:500],
            },
        )

    async def on_released(self, running: Running) -> None:
        """A draining worker hands the turn back before finishing it."""
        await self._lost(running, "worker released the turn", "internal")

    async def on_approval_request(self, running: Running, frame: dict[str, Any]) -> None:
        approval_id = str(frame.get("approval_id") or "")[:64]
        if not approval_id:
            return
        # The worker treats silence past its deadline as a denial; the relay's own timeout caps
        # it too, and a decision arriving later is refused rather than forwarded.
        latest = int((time.time() + self.settings.approval_timeout_s) * 1000)
        asked = frame.get("deadline")
        deadline = min(asked, latest) if isinstance(asked, int) and asked > 0 else latest
        running.approvals.add(approval_id)
        self.approvals[approval_id] = running
        self.approval_deadlines[approval_id] = deadline
        await self._publish(
            running.chat_id,
            "tool.approval_requested",
            {
                "approval_id": approval_id,
                "turn_id": running.turn_id,
                "tool": str(frame.get("tool", ""))[:100],
                "arguments": frame.get("arguments"),
                "deadline": deadline,
            },
        )

    async def resolve_approval(
        self, chat_id: str, approval_id: str, approve: bool, *, broadcast: bool = True
    ) -> bool:
        running = self.approvals.get(approval_id)
        if running is None or running.chat_id != chat_id:
            if not broadcast or not await self._running_elsewhere(chat_id):
                return False
            # The worker asking is connected to another instance: that one forwards it.
            await self.coordinator.broadcast(
                {
                    "kind": "approval",
                    "chat_id": chat_id,
                    "approval_id": approval_id,
                    "approve": approve,
                }
            )
            return True
        del self.approvals[approval_id]
        running.approvals.discard(approval_id)
        if self.approval_deadlines.pop(approval_id, 0) < time.time() * 1000:
            return False  # the worker has already counted it as denied
        decision = "approve" if approve else "deny"
        running.worker.send(
            {
                "type": "tool.approval",
                "turn_id": running.turn_id,
                "attempt": running.attempt,
                "approval_id": approval_id,
                "decision": decision,
            }
        )
        await self._publish(
            chat_id, "tool.approval_resolved", {"approval_id": approval_id, "decision": decision}
        )
        return True

    # Cancel and snapshots

    async def _running_elsewhere(self, chat_id: str) -> bool:
        """Whether another instance may hold the chat's running turn."""
        if not self.coordinator.shared or chat_id in self.running_by_chat:
            return False
        async with self.db.read() as session:
            found = await session.scalar(
                select(Turn.id).where(Turn.chat_id == chat_id, Turn.state == "running").limit(1)
            )
        return found is not None

    async def cancel_running(self, chat_id: str, turn_id: str, *, broadcast: bool = True) -> None:
        """After the store marked ``turn_id`` cancelled: stop its worker and keep the partial.

        A queued turn needs nothing more (the store no longer offers it). A turn running on
        another instance is stopped by that instance, told through the coordinator.
        """
        running = self.running_by_chat.get(chat_id)
        if running is None or running.turn_id != turn_id:
            if broadcast and self.coordinator.shared:
                await self.coordinator.broadcast(
                    {"kind": "cancel", "chat_id": chat_id, "turn_id": turn_id}
                )
            return
        await self._flush(running)
        running.worker.send({"type": "turn.cancel", "turn_id": turn_id, "attempt": running.attempt})
        self._release(running, hold_chat=True)
        try:
            await store.finish(
                self.db,
                turn_id,
                running.attempt,
                state="cancelled",
                text=running.published_text,
                message_status="cancelled",
                metrics=self._metrics(running, {}),
            )
        finally:
            self._free_chat(running)

    async def partial(self, chat_id: str) -> tuple[str, str] | None:
        """``(message_id, text published so far)`` of the chat's running turn, wherever it
        runs."""
        running = self.running_by_chat.get(chat_id)
        if running is not None:
            return running.message_id, running.published_text
        if not self.coordinator.shared:
            return None
        return await self.coordinator.partial(chat_id)

    async def _publish(self, chat_id: str, type: str, data: dict[str, Any]) -> None:
        try:
            await self.bus.publish(f"chat:{chat_id}", type, data)
        except Exception:  # the store is the truth; clients recover from the snapshot
            log.warning("publish_failed", chat_id=chat_id, type=type)

    def snapshot(self) -> list[dict[str, Any]]:
        """Connected workers and their state (the admin API and console)."""
        return [w.describe() for w in self.workers.values()]


def _names(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
