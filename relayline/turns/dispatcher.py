"""Turn dispatch: one turn at a time per chat, credit-based assignment to workers, leases,
attempts as fencing tokens, delta coalescing, completion, cancel and tool approvals.

State is held in this process and rebuilt from the store at start-up (queued and running
turns are queued again), so a relay restart loses no turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog

from relayline.bus.base import Bus
from relayline.config import Settings
from relayline.ids import new_id
from relayline.store import turns as store
from relayline.store.database import Database
from relayline.turns.worker_link import WorkerLink

log = structlog.get_logger("relayline.turns")

FAILURE_CATEGORIES = frozenset(
    {"timeout", "upstream_4xx", "upstream_5xx", "circuit_open", "tool_error", "internal"}
)


@dataclass(slots=True)
class Queued:
    turn_id: str
    chat_id: str
    tenant_id: str


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
    flush_handle: asyncio.TimerHandle | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    approvals: set[str] = field(default_factory=set)

    @property
    def published_text(self) -> str:
        return "".join(self.text)[: self.published_chars]


class TurnDispatcher:
    def __init__(self, settings: Settings, db: Database, bus: Bus) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.workers: dict[str, WorkerLink] = {}
        self.queues: dict[str, deque[Queued]] = {}
        self.ready: deque[str] = deque()
        self.running: dict[str, Running] = {}
        self.running_by_chat: dict[str, Running] = {}
        self.approvals: dict[str, Running] = {}
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # Lifecycle

    async def start(self) -> None:
        for turn in await store.pending(self.db):
            self._enqueue(Queued(turn.id, turn.chat_id, turn.tenant_id))
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

    # Queue

    def _enqueue(self, item: Queued, *, front: bool = False) -> None:
        queue = self.queues.setdefault(item.chat_id, deque())
        if front:
            queue.appendleft(item)
        else:
            queue.append(item)
        if item.chat_id not in self.running_by_chat and item.chat_id not in self.ready:
            self.ready.append(item.chat_id)
        self._kick.set()

    async def enqueue(self, turn_id: str, chat_id: str, tenant_id: str) -> None:
        """A new turn was stored as queued; it runs after the chat's earlier turns."""
        self._enqueue(Queued(turn_id, chat_id, tenant_id))
        if not self.workers:
            await self._publish(
                chat_id, "worker.state", {"status": "no_worker", "turn_id": turn_id}
            )

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
            while self.ready:
                worker = self._pick_worker()
                if worker is None:
                    break
                chat_id = self.ready.popleft()
                queue = self.queues.get(chat_id)
                if not queue or chat_id in self.running_by_chat:
                    continue
                item = queue.popleft()
                if not queue:
                    del self.queues[chat_id]
                try:
                    await self._assign(item, worker)
                except Exception:
                    log.exception("assign_failed", turn_id=item.turn_id)
                    self._enqueue(item, front=True)
                    await asyncio.sleep(0.5)

    async def _assign(self, item: Queued, worker: WorkerLink) -> None:
        worker.inflight.add(item.turn_id)  # hold the credit across the store round-trip
        try:
            assignment = await store.begin_attempt(
                self.db,
                item.turn_id,
                worker.worker_id,
                max_messages=self.settings.turn_history_messages,
                max_chars=self.settings.turn_history_chars,
            )
        except BaseException:
            worker.inflight.discard(item.turn_id)
            raise
        if assignment is None or worker.closed:
            worker.inflight.discard(item.turn_id)
            if assignment is not None:
                await store.requeue(self.db, item.turn_id, assignment.attempt)
                self._enqueue(item, front=True)
            elif item.chat_id in self.queues:
                self._mark_ready(item.chat_id)
            return
        now = time.monotonic()
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

    def _mark_ready(self, chat_id: str) -> None:
        if (
            self.queues.get(chat_id)
            and chat_id not in self.running_by_chat
            and chat_id not in self.ready
        ):
            self.ready.append(chat_id)
        self._kick.set()

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
        if not hold_chat:
            self._free_chat(running)

    def _free_chat(self, running: Running) -> None:
        if self.running_by_chat.get(running.chat_id) is running:
            del self.running_by_chat[running.chat_id]
        self._mark_ready(running.chat_id)

    # Leases

    async def _sweep(self) -> None:
        interval = max(0.05, min(1.0, self.settings.turn_lease_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for running in list(self.running.values()):
                if running.lease_expires < now:
                    running.worker.send(
                        {
                            "type": "turn.cancel",
                            "turn_id": running.turn_id,
                            "attempt": running.attempt,
                        }
                    )
                    await self._lost(running, "lease expired", "timeout")

    async def _lost(self, running: Running, reason: str, category: str) -> None:
        """The attempt's worker is gone or silent: retry the turn, or fail it at the limit."""
        if self.running.get(running.turn_id) is not running:
            return
        # Hold the chat until the turn is back at the head of its queue, or a later message
        # would be answered first.
        self._release(running, hold_chat=True)
        try:
            if running.attempt < self.settings.turn_max_attempts:
                if await store.requeue(self.db, running.turn_id, running.attempt):
                    self._enqueue(
                        Queued(running.turn_id, running.chat_id, running.tenant_id), front=True
                    )
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

    async def detach(self, worker: WorkerLink) -> None:
        if self.workers.get(worker.worker_id) is worker:
            del self.workers[worker.worker_id]
        for running in [r for r in self.running.values() if r.worker is worker]:
            await self._lost(running, "worker disconnected", "internal")
        if not self.workers:
            for chat_id, queue in self.queues.items():
                if queue:
                    await self._publish(
                        chat_id,
                        "worker.state",
                        {"status": "no_worker", "turn_id": queue[0].turn_id},
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
        if sum(len(t) for t in running.pending) >= self.settings.delta_coalesce_chars:
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
            offset = running.published_chars
            running.published_chars += len(text)
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
        running.approvals.add(approval_id)
        self.approvals[approval_id] = running
        await self._publish(
            running.chat_id,
            "tool.approval_requested",
            {
                "approval_id": approval_id,
                "turn_id": running.turn_id,
                "tool": str(frame.get("tool", ""))[:100],
                "arguments": frame.get("arguments"),
                "deadline": frame.get("deadline"),
            },
        )

    async def resolve_approval(self, chat_id: str, approval_id: str, approve: bool) -> bool:
        running = self.approvals.get(approval_id)
        if running is None or running.chat_id != chat_id:
            return False
        del self.approvals[approval_id]
        running.approvals.discard(approval_id)
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

    async def cancel_running(self, chat_id: str, turn_id: str) -> None:
        """After the store marked ``turn_id`` cancelled: stop its worker and keep the partial."""
        running = self.running_by_chat.get(chat_id)
        queue = self.queues.get(chat_id)
        if queue:
            self.queues[chat_id] = deque(q for q in queue if q.turn_id != turn_id)
        if running is None or running.turn_id != turn_id:
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

    def partial(self, chat_id: str) -> tuple[str, str] | None:
        """``(message_id, text published so far)`` of the chat's running turn."""
        running = self.running_by_chat.get(chat_id)
        return (running.message_id, running.published_text) if running else None

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
