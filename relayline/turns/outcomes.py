"""How an attempt ends: completed, failed, cancelled, or lost (retried or failed at the limit).

Every ending follows the same order, which is what it guarantees:

1. pending deltas are flushed (except for a lost attempt: its worker is gone);
2. the attempt is released: its later frames are refused, its worker's credit is freed, its
   open approvals are dropped and its shared partial answer is cleared;
3. the outcome is written to the store, fenced by the attempt number (a stale attempt writes
   nothing), and announced on the chat;
4. only then is the chat freed, so its next turn is claimed after the outcome is stored (its
   history has the answer) and announced (subscribers see the turns one after the other).
   The chat is freed even when step 3 raises.

A worker's ``turn.done`` and ``turn.failed`` run steps 1 and 2 in the worker's frame loop and
steps 3 and 4 as a task (:meth:`Outcomes.finish_later`), so that the worker's frames for its
other turns do not wait for the store; a relay that stops waits for those tasks
(:meth:`Outcomes.settle`) before it closes the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from relayline.observability import turn_metrics as tm
from relayline.protocol.names import FailureCategory, FinishReason, UsageSource, WorkerFrame
from relayline.store import turns as store
from relayline.turns.approvals import Approvals
from relayline.turns.claims import ClaimLoop
from relayline.turns.context import TurnContext
from relayline.turns.running import Running, RunningTurns
from relayline.turns.streaming import DeltaStream

log = structlog.get_logger("relayline.turns")

FAILURE_CATEGORIES = frozenset(FailureCategory)
FINISH_REASONS = frozenset(FinishReason)
USAGE_SOURCES = frozenset(UsageSource)


class Outcomes:
    def __init__(
        self,
        ctx: TurnContext,
        turns: RunningTurns,
        stream: DeltaStream,
        approvals: Approvals,
        claims: ClaimLoop,
    ) -> None:
        self.ctx = ctx
        self.turns = turns
        self.stream = stream
        self.approvals = approvals
        self.claims = claims
        self._endings: set[asyncio.Task[None]] = set()

    async def done_released(
        self, running: Running, usage: dict[str, Any], finish_reason: object = None
    ) -> Coroutine[Any, Any, None]:
        """``turn.done``: steps 1 and 2 (flush, release); returns steps 3 and 4 (store the whole
        answer, announce ``message.completed``, free the chat), which the caller awaits or
        hands to :meth:`finish_later`. The attempt's later frames are refused once this
        returns: the worker's other frames need not wait for the store.

        ``finish_reason`` is stored as the worker gave it when it is a known one, else as
        ``stop`` (a worker that predates it, or a value the relay does not know).
        """
        await self.stream.flush(running)
        text = running.published_text  # all of it: the flush above published the rest
        measured = metrics(running, usage)
        reason = finish_reason if finish_reason in FINISH_REASONS else FinishReason.STOP
        self._release(running)
        return self._completed(running, text, measured, str(reason))

    async def _completed(
        self, running: Running, text: str, measured: dict[str, int | str | None], reason: str
    ) -> None:
        try:
            message = await store.finish(
                self.ctx.db,
                running.turn_id,
                running.attempt,
                state="completed",
                text=text,
                message_status="complete",
                metrics=measured,
                finish_reason=reason,
            )
            if message is None:
                # A cancel stored just before won the race: the chat was told turn.cancelled.
                await self._keep_as_cancelled(running, text, measured)
            else:
                _ended(running, "completed", finish_reason=reason)
                await self.ctx.events.message_completed(
                    running.chat_id,
                    message.id,
                    running.turn_id,
                    message.seq,
                    text,
                    reason,
                    measured,
                    running.correlation_id,
                    running.tool_calls or None,
                )
        finally:
            self._free_chat(running)

    async def failed(self, running: Running, category: str, detail: str) -> None:
        """End the attempt failed, the whole of it awaited (an unknown category counts as
        ``internal``)."""
        await (await self.failed_released(running, category, detail))

    async def failed_released(
        self, running: Running, category: str, detail: str
    ) -> Coroutine[Any, Any, None]:
        """``turn.failed``: steps 1 and 2; returns the rest, as :meth:`done_released` does."""
        await self.stream.flush(running)
        self._release(running)
        return self._failed(
            running, category if category in FAILURE_CATEGORIES else "internal", detail
        )

    async def _failed(self, running: Running, category: str, detail: str) -> None:
        try:
            await self._fail(running, category, detail)
        finally:
            self._free_chat(running)

    def finish_later(self, ending: Coroutine[Any, Any, None]) -> None:
        """Run the rest of an ending (from :meth:`done_released` or :meth:`failed_released`) as
        a task; :meth:`settle` waits for those still running. A failure is logged: the turn
        stays the instance's in the store until its lease lapses and the sweep retries it,
        as when the store fails under an awaited ending."""
        task = asyncio.get_running_loop().create_task(ending)
        self._endings.add(task)
        task.add_done_callback(self._ended_task)

    def _ended_task(self, task: asyncio.Task[None]) -> None:
        self._endings.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("turn_ending_failed", error=f"{type(error).__name__}: {error}")

    async def settle(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the endings :meth:`finish_later` runs."""
        if self._endings:
            await asyncio.wait(set(self._endings), timeout=timeout_s)

    async def cancelled(self, running: Running) -> None:
        """The store marked the turn cancelled: stop the worker and keep what was published."""
        await self.stream.flush(running)
        running.worker.send(
            {
                "type": WorkerFrame.TURN_CANCEL,
                "turn_id": running.turn_id,
                "attempt": running.attempt,
            }
        )
        self._release(running)
        try:
            stored = await store.finish(
                self.ctx.db,
                running.turn_id,
                running.attempt,
                state="cancelled",
                text=running.published_text,
                message_status="cancelled",
                metrics=metrics(running, {}),
            )
            if stored is not None:
                _ended(running, "cancelled")
        finally:
            self._free_chat(running)

    async def lost(self, running: Running, reason: str, category: str) -> None:
        """The attempt's worker is gone or silent: retry the turn, or fail it at the limit.

        Does nothing for an attempt that has already ended.
        """
        if not self.turns.holds(running):
            return
        log.warning("turn_attempt_lost", reason=reason, **running.log_fields())
        # Hold the chat until the retry is announced: the store already keeps the turn at the
        # head of its chat, but this instance must not start it again before saying so.
        self._release(running)
        try:
            if running.attempt < self.ctx.settings.turn_max_attempts:
                if await store.requeue(self.ctx.db, running.turn_id, running.attempt):
                    tm.TURN_RETRIES.labels(_retry_reason(reason)).inc()
                    log.info("turn_retrying", reason=reason, **running.log_fields())
                    await self.ctx.events.turn_retrying(
                        running.chat_id,
                        running.turn_id,
                        running.attempt + 1,
                        reason,
                        running.correlation_id,
                    )
                return
            await self._fail(running, category, f"{reason} after {running.attempt} attempts")
        finally:
            self._free_chat(running)

    async def _fail(self, running: Running, category: str, detail: str) -> None:
        measured = metrics(running, {})
        failed = await store.finish(
            self.ctx.db,
            running.turn_id,
            running.attempt,
            state="failed",
            text=running.published_text,
            message_status="failed",
            category=category,
            detail=detail,
            metrics=measured,
        )
        if failed is None:
            await self._keep_as_cancelled(running, running.published_text, measured)
            return
        _ended(running, "failed", category=category, detail=detail)
        await self.ctx.events.turn_failed(
            running.chat_id,
            running.turn_id,
            running.message_id,
            category,
            detail,
            running.correlation_id,
        )

    async def _keep_as_cancelled(
        self, running: Running, text: str, measured: dict[str, int | str | None]
    ) -> None:
        """Store the answer as cancelled when the turn was cancelled under a racing ending (a
        stale attempt, fenced out, writes nothing)."""
        stored = await store.finish(
            self.ctx.db,
            running.turn_id,
            running.attempt,
            state="cancelled",
            text=text,
            message_status="cancelled",
            metrics=measured,
        )
        if stored is not None:
            _ended(running, "cancelled")

    def _release(self, running: Running) -> None:
        """The attempt is over: refuse its frames from now on and free the worker's credit.

        The chat's next turn still waits, until :meth:`_free_chat`.
        """
        self.stream.cancel_timer(running)
        self.turns.release(running)
        running.worker.inflight.discard(running.turn_id)
        self.approvals.forget(running)
        coordinator = self.ctx.coordinator
        if coordinator.shared:
            self.ctx.spawn(coordinator.clear_partial(running.chat_id))

    def _free_chat(self, running: Running) -> None:
        self.turns.free_chat(running)
        self.claims.kick()
        if self.ctx.coordinator.shared:
            # The chat's next turn may be for a worker of another instance.
            self.ctx.spawn(self.ctx.coordinator.broadcast({"kind": "wake"}))


def metrics(running: Running, usage: dict[str, Any]) -> dict[str, int | str | None]:
    """The attempt's timings, and the token counts the worker reported (when valid) with where
    they came from (``usage_source``: a worker that does not say is taken as estimating)."""
    now = time.monotonic()

    def count(name: str) -> int | None:
        value = usage.get(name)
        return value if isinstance(value, int) and value >= 0 else None

    tokens_in, tokens_out = count("tokens_in"), count("tokens_out")
    source: str | None = None
    if tokens_in is not None or tokens_out is not None:
        given = usage.get("source")
        source = given if given in USAGE_SOURCES else str(UsageSource.ESTIMATED)
    return {
        "first_token_ms": int((running.first_token - running.started) * 1000)
        if running.first_token
        else None,
        "latency_ms": int((now - running.started) * 1000),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "usage_source": source,
    }


def _retry_reason(reason: str) -> str:
    """A bounded label for a retry's free-text reason."""
    if "lease" in reason:
        return "lease_expired"
    if "released" in reason:
        return "released"
    return "worker_lost"


def _ended(running: Running, outcome: str, **fields: object) -> None:
    """Count, time and log the end of a turn (once, by the attempt that stored it)."""
    now = time.monotonic()
    tm.TURNS_ENDED.labels(outcome).inc()
    category = fields.get("category")
    if isinstance(category, str):
        tm.TURNS_FAILED.labels(category).inc()
    if running.first_token is not None:
        tm.FIRST_TOKEN.labels(outcome).observe(running.first_token - running.started)
    tm.TURN_DURATION.labels(outcome).observe(now - running.started)
    (log.warning if outcome == "failed" else log.info)(
        f"turn_{outcome}",
        duration_ms=int((now - running.started) * 1000),
        chars=running.published_chars,
        **fields,
        **running.log_fields(),
    )
