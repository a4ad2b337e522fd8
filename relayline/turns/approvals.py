"""Tool approvals: a worker asks before running a tool, a client decides, the worker is told.

Guarantees: a request is announced as ``tool.approval_requested`` with a deadline no later
than ``approval_timeout_s`` from now (earlier when the worker asked for less); each request is
decided at most once; a decision after the deadline is refused, since the worker has already
counted silence as a denial; a decision for an attempt that ended is refused. When the asking
worker is connected to another instance, the decision is broadcast for that instance to
forward.
"""

from __future__ import annotations

import time
from typing import Any

from relayline.store import turn_queue
from relayline.turns.context import TurnContext
from relayline.turns.running import Running, RunningTurns


class Approvals:
    def __init__(self, ctx: TurnContext, turns: RunningTurns) -> None:
        self.ctx = ctx
        self.turns = turns
        self.pending: dict[str, Running] = {}
        self.deadlines: dict[str, int] = {}  # unix ms; a decision after it is refused

    async def request(self, running: Running, frame: dict[str, Any]) -> None:
        """The worker running ``running`` asks to run a tool (``tool.approval_request``)."""
        approval_id = str(frame.get("approval_id") or "")[:64]
        if not approval_id:
            return
        # The worker treats silence past its deadline as a denial; the relay's own timeout caps
        # it too, and a decision arriving later is refused rather than forwarded.
        latest = int((time.time() + self.ctx.settings.approval_timeout_s) * 1000)
        asked = frame.get("deadline")
        deadline = min(asked, latest) if isinstance(asked, int) and asked > 0 else latest
        running.approvals.add(approval_id)
        self.pending[approval_id] = running
        self.deadlines[approval_id] = deadline
        await self.ctx.publish(
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

    async def resolve(
        self, chat_id: str, approval_id: str, approve: bool, *, broadcast: bool = True
    ) -> bool:
        """Pass a client's decision to the worker; False when there is nothing to decide."""
        running = self.pending.get(approval_id)
        if running is None or running.chat_id != chat_id:
            if not broadcast or not await self._running_elsewhere(chat_id):
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
        running.approvals.discard(approval_id)
        if self.deadlines.pop(approval_id, 0) < time.time() * 1000:
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
        await self.ctx.publish(
            chat_id, "tool.approval_resolved", {"approval_id": approval_id, "decision": decision}
        )
        return True

    def forget(self, running: Running) -> None:
        """The attempt ended: its open requests can no longer be decided."""
        for approval_id in running.approvals:
            self.pending.pop(approval_id, None)
            self.deadlines.pop(approval_id, None)

    async def _running_elsewhere(self, chat_id: str) -> bool:
        """Whether another instance may hold the chat's running turn."""
        if not self.ctx.coordinator.shared or chat_id in self.turns.by_chat:
            return False
        return await turn_queue.has_running_turn(self.ctx.db, chat_id)
