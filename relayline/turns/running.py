"""The attempts this instance runs: one :class:`Running` per attempt, indexed by turn and chat.

An attempt is *held* (in :attr:`RunningTurns.by_turn`) from its claim until it is released;
only a held attempt's worker frames are accepted. Its chat stays *busy* (in
:attr:`RunningTurns.by_chat`) a little longer, until :meth:`RunningTurns.free_chat`, so the
chat's next turn is not claimed before this one's outcome is stored and announced.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from relayline.turns.worker_link import WorkerLink


@dataclass(slots=True)
class Running:
    """One attempt of a turn, assigned to one of this instance's workers."""

    turn_id: str
    chat_id: str
    tenant_id: str
    attempt: int
    message_id: str
    worker: WorkerLink
    lease_expires: float  # monotonic; the attempt is lost when its worker is silent past it
    started: float
    correlation_id: str
    immediate: bool = False  # publish every delta as it comes (no coalescing)
    # Its worker coalesces the texts itself (by the turn.assigned's coalesce_ms): they are
    # published as they come unless closer together than half a window.
    worker_coalesces: bool = False
    first_token: float | None = None
    # The answer streamed so far: ``published`` holds what went out as ``message.delta``
    # events (``published_chars`` characters), ``pending`` what waits for the next flush.
    published: list[str] = field(default_factory=list)
    published_chars: int = 0
    pending: list[str] = field(default_factory=list)
    pending_chars: int = 0
    flush_handle: asyncio.TimerHandle | None = None
    last_flush: float = float("-inf")  # loop time of the last message.delta published
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    approvals: set[str] = field(default_factory=set)
    # A completion's tool calls so far, whole (merged from their streamed pieces by index).
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def published_text(self) -> str:
        return "".join(self.published)

    def log_fields(self) -> dict[str, object]:
        """What every log line about this attempt carries (its correlation id above all)."""
        return {
            "turn_id": self.turn_id,
            "attempt": self.attempt,
            "chat_id": self.chat_id,
            "worker_id": self.worker.worker_id,
            "correlation_id": self.correlation_id,
        }


EARLY_CANCEL_TTL_S = 120.0
EARLY_CANCEL_MAX = 10_000


class RunningTurns:
    def __init__(self) -> None:
        self.by_turn: dict[str, Running] = {}
        self.by_chat: dict[str, Running] = {}
        # Turns cancelled while this instance held no attempt of them: one it is claiming at
        # that very moment must not be sent to its worker (by turn id: when, monotonic).
        self._early_cancels: dict[str, float] = {}

    def note_cancel(self, turn_id: str) -> None:
        """A cancel for ``turn_id`` arrived while no attempt of it is held here (kept for
        ``EARLY_CANCEL_TTL_S``, at most ``EARLY_CANCEL_MAX`` of them)."""
        now = time.monotonic()
        early = self._early_cancels
        early.pop(turn_id, None)
        early[turn_id] = now  # oldest first
        cutoff = now - EARLY_CANCEL_TTL_S
        while len(early) > EARLY_CANCEL_MAX or next(iter(early.values())) < cutoff:
            del early[next(iter(early))]

    def take_cancel(self, turn_id: str) -> bool:
        """Whether a cancel for ``turn_id`` arrived before its attempt was held (forgets it)."""
        return self._early_cancels.pop(turn_id, None) is not None

    def add(self, running: Running) -> None:
        """Hold the attempt and mark its chat busy."""
        self.by_turn[running.turn_id] = running
        self.by_chat[running.chat_id] = running

    def holds(self, running: Running) -> bool:
        """Whether ``running`` is still held (not released, nor replaced by a later attempt)."""
        return self.by_turn.get(running.turn_id) is running

    def release(self, running: Running) -> None:
        """Stop holding the attempt; its chat stays busy until :meth:`free_chat`."""
        self.by_turn.pop(running.turn_id, None)

    def free_chat(self, running: Running) -> None:
        """Let the chat's next turn be claimed (unless a later attempt already took the chat)."""
        if self.by_chat.get(running.chat_id) is running:
            del self.by_chat[running.chat_id]

    def on_worker(self, worker: WorkerLink) -> list[Running]:
        return [r for r in self.by_turn.values() if r.worker is worker]
