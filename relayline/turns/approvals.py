"""Tool approvals: a worker asks before running a tool, a client decides, the worker is told.

Guarantees: a request is announced as ``tool.approval_requested`` with a deadline no later
than ``approval_timeout_s`` from now (earlier when the worker asked for less); each request is
decided at most once; a decision after the deadline is refused, since the worker has already
counted silence as a denial; a decision for an attempt that ended is refused. An attempt has
at most ``MAX_OPEN_PER_ATTEMPT`` open requests, and an id another attempt holds is not taken
over: such requests are denied to the worker at once. When the asking worker is connected to
another instance, a decision for a request that instance lists as open is broadcast for it to
forward.

The requests still open are kept as announced, for the chat snapshot (:meth:`open_for`); with a
shared coordinator, a copy is stored there on every change (before the change is announced) so
that a snapshot served by any instance shows them. What a snapshot carries is bounded: all the
``arguments`` together fit in one WebSocket frame (``ws_max_frame_bytes`` characters of JSON);
a value over its share is replaced by the start of its JSON text.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from relayline.protocol.names import WorkerFrame
from relayline.store import turn_queue
from relayline.turns.context import TurnContext
from relayline.turns.running import Running, RunningTurns

log = structlog.get_logger("relayline.turns")

MAX_OPEN_PER_ATTEMPT = 8
"""Open approval requests one attempt may have at once; more are denied without asking."""


@dataclass(slots=True)
class _Writes:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Approvals:
    def __init__(self, ctx: TurnContext, turns: RunningTurns) -> None:
        self.ctx = ctx
        self.turns = turns
        self.pending: dict[str, Running] = {}
        self.deadlines: dict[str, int] = {}  # unix ms; a decision after it is refused
        self.requests: dict[str, dict[str, Any]] = {}  # as announced, oldest first
        self._writes: dict[str, _Writes] = {}  # by chat: writes of its shared copy

    async def request(self, running: Running, frame: dict[str, Any]) -> None:
        """The worker running ``running`` asks to run a tool (``tool.approval_request``)."""
        approval_id = str(frame.get("approval_id") or "")[:64]
        if not approval_id:
            return
        owner = self.pending.get(approval_id)
        if (owner is not None and owner is not running) or (
            owner is None and len(running.approvals) >= MAX_OPEN_PER_ATTEMPT
        ):
            # Another attempt's id, or too many open at once: denied at once, not announced.
            log.warning("approval_request_refused", approval_id=approval_id, **running.log_fields())
            running.worker.send(
                {
                    "type": WorkerFrame.TOOL_APPROVAL,
                    "turn_id": running.turn_id,
                    "attempt": running.attempt,
                    "approval_id": approval_id,
                    "decision": "deny",
                }
            )
            return
        # The worker treats silence past its deadline as a denial; the relay's own timeout caps
        # it too, and a decision arriving later is refused rather than forwarded.
        latest = int((time.time() + self.ctx.settings.approval_timeout_s) * 1000)
        asked = frame.get("deadline")
        deadline = min(asked, latest) if isinstance(asked, int) and asked > 0 else latest
        payload = {
            "approval_id": approval_id,
            "turn_id": running.turn_id,
            "tool": str(frame.get("tool", ""))[:100],
            "arguments": frame.get("arguments"),
            "deadline": deadline,
        }
        running.approvals.add(approval_id)
        self.pending[approval_id] = running
        self.deadlines[approval_id] = deadline
        self.requests.pop(approval_id, None)
        self.requests[approval_id] = payload
        await self._share(running.chat_id)
        log.info(
            "approval_requested",
            approval_id=approval_id,
            tool=payload["tool"],
            **running.log_fields(),
        )
        await self.ctx.events.approval_requested(running.chat_id, payload)

    async def resolve(
        self, chat_id: str, approval_id: str, approve: bool, *, broadcast: bool = True
    ) -> bool:
        """Pass a client's decision to the worker; False when there is nothing to decide."""
        running = self.pending.get(approval_id)
        if running is None or running.chat_id != chat_id:
            if not broadcast or not await self._running_elsewhere(chat_id):
                return False
            # Only what the holding instance lists as open: the same answer on every instance.
            listed = still_open(await self.ctx.coordinator.approvals(chat_id))
            if approval_id not in {item["approval_id"] for item in listed}:
                return False
            # The worker asking is connected to another instance: that one forwards it.
            await self.ctx.coordinator.broadcast(
                {
                    "kind": "approval",
                    "chat_id": chat_id,
                    "approval_id": approval_id,
                    "approve": approve,
                }
            )
            return True
        del self.pending[approval_id]
        del self.requests[approval_id]
        running.approvals.discard(approval_id)
        if self.deadlines.pop(approval_id, 0) < time.time() * 1000:
            await self._share(chat_id)
            return False  # the worker has already counted it as denied
        decision = "approve" if approve else "deny"
        running.worker.send(
            {
                "type": WorkerFrame.TOOL_APPROVAL,
                "turn_id": running.turn_id,
                "attempt": running.attempt,
                "approval_id": approval_id,
                "decision": decision,
            }
        )
        await self._share(chat_id)
        log.info(
            "approval_resolved", approval_id=approval_id, decision=decision, **running.log_fields()
        )
        await self.ctx.events.approval_resolved(chat_id, approval_id, decision)
        return True

    def forget(self, running: Running, *, share: bool = True) -> None:
        """The attempt ended: its open requests can no longer be decided. ``share=False``
        leaves the shared copy alone (it belongs to an instance that took the turn over)."""
        if not running.approvals:
            return
        for approval_id in running.approvals:
            self.pending.pop(approval_id, None)
            self.deadlines.pop(approval_id, None)
            self.requests.pop(approval_id, None)
        if share and self.ctx.coordinator.shared:
            self.ctx.spawn(self._share(running.chat_id))

    def open_for(self, chat_id: str) -> list[dict[str, Any]]:
        """The chat's requests that can still be decided, oldest first, as announced (with
        ``arguments`` fitted into the snapshot's bound)."""
        now = time.time() * 1000
        items = [
            payload
            for approval_id, payload in self.requests.items()
            if self.pending[approval_id].chat_id == chat_id and self.deadlines[approval_id] >= now
        ]
        return fit_arguments(items, self.ctx.settings.ws_max_frame_bytes)

    async def _share(self, chat_id: str) -> None:
        """Store the chat's open requests with the coordinator, when instances share turns.

        One write at a time per chat, each taking the list as it is when its turn comes: the
        last one stored is the newest.
        """
        if not self.ctx.coordinator.shared:
            return
        writes = self._writes.setdefault(chat_id, _Writes())
        writes.users += 1
        try:
            async with writes.lock:
                await self.ctx.coordinator.set_approvals(chat_id, self.open_for(chat_id))
        finally:
            writes.users -= 1
            if not writes.users:
                del self._writes[chat_id]

    async def _running_elsewhere(self, chat_id: str) -> bool:
        """Whether another instance may hold the chat's running turn."""
        if not self.ctx.coordinator.shared or chat_id in self.turns.by_chat:
            return False
        return await turn_queue.has_running_turn(self.ctx.db, chat_id)


def still_open(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The well-formed requests among ``items`` (a coordinator's copy) whose deadline has not
    passed, in their order."""
    now = time.time() * 1000
    return [
        item
        for item in items
        if isinstance(item.get("approval_id"), str)
        and isinstance(item.get("turn_id"), str)
        and isinstance(item.get("tool"), str)
        and isinstance(item.get("deadline"), int)
        and item["deadline"] >= now
    ]


def fit_arguments(items: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """``items`` with their ``arguments`` fitted into ``budget`` characters of JSON in all.

    Each item gets an equal share, and what a small one leaves unused goes to the others; a
    value over its share is replaced by that many characters of its JSON text and "…".
    """
    texts = [json.dumps(item.get("arguments"), ensure_ascii=False) for item in items]
    share = budget
    left = budget
    for n, size in enumerate(sorted(len(text) for text in texts)):
        if size > left // (len(texts) - n):
            share = left // (len(texts) - n)
            break
        left -= size
    return [
        item if len(text) <= share else {**item, "arguments": text[:share] + "…"}
        for item, text in zip(items, texts, strict=True)
    ]
