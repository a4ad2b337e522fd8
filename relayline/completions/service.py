"""Completions of the OpenAI-compatible gateway: a request becomes a turn, its events an answer.

:meth:`CompletionService.start` checks the request, takes one of the tenant's
concurrent-completion slots (``RELAYLINE_MAX_CONCURRENT_COMPLETIONS``, shared by every instance
through the connection-cap store), subscribes to the completion's own chat topic and queues its
turn (:mod:`relayline.store.completions`). From there it is a turn like a chat's: the same
queue, credit, leases, attempt fencing, retries, deadlines and answer limit, on any instance's
worker that announces the model. :meth:`Completion.pieces` turns the chat's events into what
the answer is made of, in order.

Guarantees:

- text arrives gap-free and never twice (offsets are checked; text a retried attempt sends again
  is skipped, text that went missing ends the completion with an error rather than a hole);
- a worker lost before the first token is retried unseen; lost after it, the client already has
  text that a new attempt would repeat, so the completion ends as failed (and its turn is
  cancelled, so no worker goes on answering nobody);
- :meth:`Completion.cancel` (the HTTP client went away) cancels the turn wherever it runs;
- :meth:`Completion.close` gives the slot back and stops the subscription, always.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import structlog

from relayline.bus.base import Bus, Subscription
from relayline.completions import wire
from relayline.config import Settings
from relayline.envelope import Event
from relayline.errors import NotFound, RateLimited, Unavailable, ValidationFailed
from relayline.ids import new_id
from relayline.limits.connection_caps import ConnectionCapStore
from relayline.observability import turn_metrics as tm
from relayline.protocol.names import ErrorCode, EventType
from relayline.store import chats, tenants
from relayline.store import completions as store
from relayline.store.database import Database
from relayline.turns.dispatcher import TurnDispatcher
from relayline.turns.events import chat_topic

log = structlog.get_logger("relayline.completions")

CAP_KIND = "completions"
RETRY_AFTER_S = 5
DEADLINE_MARGIN_S = 30.0  # past the turn's own deadline: the worker's timeout reports first
_DEADLINE = Event("", "", "", 0, "", 0, {}, b"")  # wakes a completion at its deadline


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCalls:
    calls: list[dict[str, Any]]  # OpenAI's streamed form, each with its index


@dataclass(frozen=True, slots=True)
class Done:
    finish_reason: str
    usage: dict[str, int]
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Failed:
    status: int
    code: str
    detail: str


Piece = Text | ToolCalls | Done | Failed

# A failed turn's category → the HTTP status a completion answers with.
_STATUS = {"timeout": 504, "circuit_open": 503}


class Completion:
    """One completion in progress (see the module docstring)."""

    def __init__(
        self,
        service: CompletionService,
        tenant_id: str,
        chat_id: str,
        model: str,
        keep: bool,
        queue: asyncio.Queue[Event],
        subscription: Subscription,
    ) -> None:
        self.service = service
        self.tenant_id = tenant_id
        self.chat_id = chat_id
        self.model = model
        self.keep = keep
        self.turn_id = ""
        self.created = wire.now_s()
        self._queue = queue
        self._subscription = subscription
        self._sent = 0  # characters of text handed on
        self._started = False
        self._ended = False
        self._closed = False
        self.stream = False
        self.outcome = "failed"  # until it is known to have completed or been dropped

    @property
    def id(self) -> str:
        return wire.completion_id(self.turn_id)

    async def pieces(self) -> AsyncGenerator[Piece, None]:
        """The answer as it comes, ending with one :class:`Done` or :class:`Failed`."""
        # One timer for the whole completion (not one per event: the wait for each chunk is on
        # the streaming path): at the deadline it wakes the wait below.
        timer = asyncio.get_running_loop().call_later(
            self.service.settings.turn_deadline_s + DEADLINE_MARGIN_S,
            self._queue.put_nowait,
            _DEADLINE,
        )
        try:
            while not self._ended:
                event = await self._queue.get()
                if event is _DEADLINE:
                    yield await self._fail(504, "timeout", "the completion did not finish in time")
                    return
                for piece in await self._take(event):
                    yield piece
        finally:
            timer.cancel()

    async def _take(self, event: Event) -> list[Piece]:
        data = event.data
        kind = event.type
        if kind == "events.missed":
            return [await self._fail(502, "internal", "the answer's events were lost")]
        if data.get("turn_id") != self.turn_id:
            return []
        if kind == EventType.TURN_STARTED:
            self._started = True
        elif kind == EventType.MESSAGE_DELTA:
            out: list[Piece] = []
            text = self._fresh(int(data.get("offset", 0)), str(data.get("text", "")))
            if text is None:
                return [await self._fail(502, "internal", "part of the answer went missing")]
            if text:
                out.append(Text(text))
            calls = data.get("tool_calls")
            if isinstance(calls, list) and calls:
                out.append(ToolCalls(calls))
            return out
        elif kind == EventType.MESSAGE_COMPLETED:
            self._ended = True
            self.outcome = "completed"
            content = str(data.get("content", ""))
            metrics = data.get("metrics") or {}
            calls = data.get("tool_calls")
            out = [Text(content[self._sent :])] if len(content) > self._sent else []
            self._sent = max(self._sent, len(content))
            out.append(
                Done(
                    str(data.get("finish_reason") or "stop"),
                    wire.usage_of(metrics if isinstance(metrics, dict) else {}),
                    calls if isinstance(calls, list) else [],
                )
            )
            return out
        elif kind == EventType.TURN_RETRYING and self._sent:
            # The new attempt would say it all again, to a client that has the start of it.
            return [await self._fail(502, "internal", "the worker was lost mid-answer")]
        elif kind == EventType.TURN_FAILED:
            self._ended = True
            category = str(data.get("category") or "internal")
            return [Failed(_STATUS.get(category, 502), category, str(data.get("detail") or ""))]
        elif kind == EventType.TURN_CANCELLED:
            self._ended = True
            return [Failed(503, ErrorCode.UNAVAILABLE, "the completion was cancelled")]
        elif (
            kind == EventType.WORKER_STATE
            and data.get("status") == "no_worker"
            and not self._started
        ):
            return [
                await self._fail(
                    503, ErrorCode.NO_WORKER, f"no connected worker serves {self.model!r}"
                )
            ]
        return []

    def _fresh(self, offset: int, text: str) -> str | None:
        """The part of a delta not handed on yet; None when text before it is missing."""
        if offset > self._sent:
            return None
        fresh = text[self._sent - offset :]
        self._sent += len(fresh)
        return fresh

    async def _fail(self, status: int, code: str, detail: str) -> Failed:
        self._ended = True
        await self.cancel()
        return Failed(status, code, detail)

    async def cancel(self) -> None:
        """Stop the completion wherever its turn runs (queued: it never starts)."""
        await self.service.cancel(self)

    async def disconnected(self) -> None:
        """The client went away: the completion is cancelled, unless it had already ended."""
        if not self._ended:
            self.outcome = "disconnected"
            await self.cancel()

    async def close(self) -> None:
        """Give back the tenant's slot and stop listening; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._subscription.close()
        tm.COMPLETIONS.labels(self.outcome, "true" if self.stream else "false").inc()
        tm.COMPLETIONS_IN_PROGRESS.dec()
        await self.service.release(self)


class CompletionService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        dispatcher: TurnDispatcher,
        caps: ConnectionCapStore,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.dispatcher = dispatcher
        self.caps = caps

    async def models(self) -> list[str]:
        """The models connected workers announce (every instance's), sorted."""
        return sorted(await self.dispatcher.pool.models())

    async def start(
        self, tenant_id: str, body: wire.ChatCompletionIn, request_id: str
    ) -> Completion:
        """Check the request, take a slot and queue the completion's turn.

        Raises ``ValidationFailed`` (422), ``NotFound`` ``unknown_model`` (404: no connected
        worker announces it), ``Unavailable`` ``no_worker`` (503: none is connected, or every
        one that serves the model is draining), ``RateLimited`` ``too_many_completions`` (429).
        """
        if body.n not in (None, 1):
            raise ValidationFailed("n: only 1 is supported")
        if len(body.messages) > self.settings.completion_max_messages:
            raise ValidationFailed(
                f"messages: at most {self.settings.completion_max_messages} messages"
            )
        generation = body.generation()
        messages, texts = wire.wire_messages(body)
        tools = wire.wire_tools(body)
        served = await self.dispatcher.pool.models()
        if not served:
            raise Unavailable(
                "no worker is connected", code=ErrorCode.NO_WORKER, retry_after=RETRY_AFTER_S
            )
        if body.model not in served:
            raise NotFound(
                f"model {body.model!r} is not served by any connected worker; "
                f"GET /v1/models lists those that are",
                code=ErrorCode.UNKNOWN_MODEL,
            )
        if served[body.model] == 0:
            raise Unavailable(
                f"every worker that serves {body.model!r} is draining",
                code=ErrorCode.NO_WORKER,
                retry_after=RETRY_AFTER_S,
            )
        limit = self.settings.max_concurrent_completions
        if not await self.caps.acquire(CAP_KIND, tenant_id, limit):
            raise RateLimited(
                f"at most {limit} completions in progress per tenant "
                "(RELAYLINE_MAX_CONCURRENT_COMPLETIONS)",
                retry_after=1,
                code=ErrorCode.TOO_MANY_COMPLETIONS,
            )
        subscription: Subscription | None = None
        try:
            async with self.db.read() as session:
                tenant = await tenants.get_tenant(session, tenant_id)
            keep = bool((tenant.agent_settings or {}).get("store_completions"))
            chat_id = new_id()
            queue: asyncio.Queue[Event] = asyncio.Queue()
            # Listening before the turn exists: no event of it can be missed.
            subscription = await self.bus.subscribe(chat_topic(chat_id), queue.put_nowait)
            completion = Completion(self, tenant_id, chat_id, body.model, keep, queue, subscription)
            stored = await store.create(
                self.db,
                tenant_id,
                chat_id=chat_id,
                model=body.model,
                request={
                    "model": body.model,
                    "messages": messages,
                    "generation": generation,
                    **tools,
                },
                texts=texts,
                keep=keep,
                correlation_id=request_id or new_id(),
            )
            completion.turn_id = stored.turn_id
            completion.stream = body.stream
            await self.dispatcher.enqueue(stored.turn_id, chat_id, tenant_id)
        except BaseException:
            if subscription is not None:
                subscription.close()
            await self.caps.release(CAP_KIND, tenant_id)
            raise
        tm.COMPLETIONS_IN_PROGRESS.inc()
        log.info(
            "completion_started",
            turn_id=stored.turn_id,
            chat_id=chat_id,
            model=body.model,
            stream=body.stream,
            correlation_id=request_id,
        )
        return completion

    async def cancel(self, completion: Completion) -> None:
        async with self.db.write() as session:
            turn = await chats.cancel_active_turn(session, completion.chat_id)
        if turn is not None:
            await self.dispatcher.cancel_running(completion.chat_id, turn.id)
            await self.dispatcher.ctx.events.turn_cancelled(
                completion.chat_id, turn.id, turn.correlation_id
            )
            log.info("completion_cancelled", turn_id=turn.id, chat_id=completion.chat_id)

    async def release(self, completion: Completion) -> None:
        try:
            if not completion.keep and completion.turn_id:
                with contextlib.suppress(Exception):
                    await store.forget_request(self.db, completion.turn_id)
        finally:
            await self.caps.release(CAP_KIND, completion.tenant_id)
