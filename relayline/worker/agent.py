"""One agent turn: model → tools → model … until the model answers in text.

The worker connection builds an :class:`AgentRunner` once (model client, tool registry) and
calls :meth:`AgentRunner.run` for each ``turn.assigned``, wiring ``on_delta`` to ``turn.delta``
frames and ``request_approval`` to the ``tool.approval_request`` / ``tool.approval`` exchange.
``run`` returning maps to ``turn.done``; :class:`LLMError` maps to ``turn.failed`` with its
``category``; ``turn.cancel`` maps to cancelling the task that awaits ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from relayline.protocol.generation import Generation
from relayline.worker import metrics
from relayline.worker.llm.base import (
    ChatMessage,
    LLMClient,
    LLMError,
    StreamChunk,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from relayline.worker.llm.upstream_probe import UpstreamInfo, request_id_header
from relayline.worker.tools.registry import (
    ApprovalCallback,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
)

log = logging.getLogger(__name__)

DeltaCallback = Callable[[str], Awaitable[None]]
"""``on_delta(text)``: forward a piece of the answer; awaited, so it can apply backpressure."""
ToolCallCallback = Callable[[int, ToolCall], Awaitable[None]]
"""``on_tool_call(index, call)``: forward a tool call the model asked for (a completion's)."""

TurnStatus = Literal["completed", "tool_limit"]
UsageSource = Literal["reported", "counted", "estimated"]
_TRUST: dict[UsageSource, int] = {"reported": 2, "counted": 1, "estimated": 0}

_PARAGRAPH_BREAK = "\n\n"
_UNKNOWN = UpstreamInfo("unknown")


@dataclass(frozen=True, slots=True)
class TurnResult:
    """A finished turn.

    ``text`` is exactly the concatenation of every ``on_delta`` call. Token counts add up all
    model calls of the turn; ``usage_source`` is ``reported`` when the model server counted
    every call's tokens, ``counted`` when the worker counted some with the server's tokenizer,
    else ``estimated`` (a call no one counted is estimated at ~4 characters a token).
    ``finish_reason`` is how the model ended the last call (``length``: cut at the length
    limit). ``status`` is ``tool_limit`` when ``max_tool_rounds`` was used up and the last
    answer was asked for without tools. ``new_messages`` are the assistant and tool messages
    the turn added to the conversation, the final answer excluded (it is ``text``).
    """

    text: str
    tokens_in: int
    tokens_out: int
    first_token_latency_s: float | None
    status: TurnStatus
    tool_rounds: int = 0
    new_messages: tuple[ChatMessage, ...] = ()
    finish_reason: str = "stop"
    usage_source: UsageSource = "reported"


@dataclass(slots=True)
class _Round:
    text: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish_reason: str = "stop"
    usage_source: UsageSource = "estimated"


class AgentRunner:
    """Runs turns against one model with one tool registry; safe for concurrent turns."""

    def __init__(
        self,
        llm: LLMClient,
        registry: ToolRegistry,
        *,
        model: str,
        max_tool_rounds: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_tool_rounds < 0:
            raise ValueError("max_tool_rounds must be >= 0")
        self.llm = llm
        self.registry = registry
        self.model = model
        self.max_tool_rounds = max_tool_rounds
        self._clock = clock

    def upstream_request_id(self, correlation_id: str | None) -> str | None:
        """The ``X-Request-ID`` the model server gets for ``correlation_id`` (its logs' key)."""
        header = request_id_header(getattr(self.llm, "upstream", _UNKNOWN), correlation_id)
        return header["X-Request-ID"] if header else None

    async def run(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Collection[str] = (),
        timeout_s: float | None = None,
        on_delta: DeltaCallback,
        request_approval: ApprovalCallback,
        turn_id: str = "",
        model: str | None = None,
        options: Generation | None = None,
    ) -> TurnResult:
        """Answer ``messages``, offering the enabled ``tools``, within ``timeout_s``, from
        ``model`` (default: the runner's) sampled as ``options`` says.

        Raises :class:`LLMError`: the model's failures with their category, ``timeout`` when
        the turn outlives ``timeout_s``, ``tool_error`` for an unknown enabled tool name or a
        model that keeps calling tools past the limit and gives no answer. A tool call that
        fails is not fatal: the model gets the error as the tool's result and carries on.
        Exceptions raised by ``on_delta`` propagate unchanged. Cancelling the awaiting task
        stops the model stream and kills any running command before ``CancelledError``
        propagates.
        """
        active = self.registry.subset(tools)
        turn = _Turn(
            self,
            active,
            on_delta,
            ToolContext(request_approval, turn_id),
            turn_id,
            model or self.model,
            options,
        )
        scope = asyncio.timeout(timeout_s)
        try:
            async with scope:
                return await turn.run(messages)
        except TimeoutError:
            if not scope.expired():
                raise  # someone else's timeout, e.g. from a callback
            raise LLMError("timeout", f"turn did not finish within {timeout_s}s") from None

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice | None = None,
        timeout_s: float | None = None,
        on_delta: DeltaCallback,
        on_tool_call: ToolCallCallback,
        turn_id: str = "",
        model: str | None = None,
        options: Generation | None = None,
    ) -> TurnResult:
        """One model call for a completion of the OpenAI-compatible gateway: the caller's
        ``tools`` are offered (with ``tool_choice``) but never run here: each call the model
        asks for goes to ``on_tool_call`` as soon as it is whole, and the caller runs it.

        Failures, timeout and cancellation behave as in :meth:`run`; ``finish_reason`` is the
        model's (``tool_calls`` when it asked for tools).
        """

        async def no_approvals(tool: str, arguments: dict[str, object]) -> bool:
            return False  # nothing runs here, so nothing asks

        turn = _Turn(
            self,
            self.registry.subset(()),
            on_delta,
            ToolContext(no_approvals, turn_id),
            turn_id,
            model or self.model,
            options,
        )
        turn.on_tool_call = on_tool_call
        scope = asyncio.timeout(timeout_s)
        try:
            async with scope:
                return await turn.once(messages, list(tools), tool_choice)
        except TimeoutError:
            if not scope.expired():
                raise
            raise LLMError("timeout", f"turn did not finish within {timeout_s}s") from None


class _Turn:
    """The mutable state of one :meth:`AgentRunner.run` or :meth:`AgentRunner.complete`
    call."""

    def __init__(
        self,
        runner: AgentRunner,
        active: ToolRegistry,
        on_delta: DeltaCallback,
        ctx: ToolContext,
        turn_id: str,
        model: str,
        options: Generation | None,
    ) -> None:
        self.runner = runner
        self.model = model
        self.options = options
        self.active = active
        self.on_delta = on_delta
        self.ctx = ctx
        self.turn_id = turn_id
        self.started = runner._clock()
        self.first_token_latency_s: float | None = None
        self.text: list[str] = []
        self.tokens_in = 0
        self.tokens_out = 0
        self.usage_source: UsageSource = "reported"
        self.finish_reason = "stop"
        self.on_tool_call: ToolCallCallback | None = None

    async def run(self, messages: Sequence[ChatMessage]) -> TurnResult:
        runner = self.runner
        specs = self.active.specs()
        history = list(messages)
        added: list[ChatMessage] = []
        rounds = 0
        while True:
            # Past the limit the model is asked once more without tools, so it has to answer.
            offered = specs if rounds < runner.max_tool_rounds else []
            result = await self._call_model(history, offered, first_round=rounds == 0)
            if not result.calls or not offered:
                break
            rounds += 1
            assistant = ChatMessage("assistant", "".join(result.text), tuple(result.calls))
            history.append(assistant)
            added.append(assistant)
            for call in result.calls:
                outcome = await self._execute(call)
                message = ChatMessage("tool", outcome.content, tool_call_id=call.id)
                history.append(message)
                added.append(message)
        hit_limit = bool(specs) and runner.max_tool_rounds > 0 and rounds >= runner.max_tool_rounds
        text = "".join(self.text)
        if hit_limit and not text.strip():
            raise LLMError("tool_error", f"no answer after {rounds} rounds of tool calls")
        return TurnResult(
            text=text,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            first_token_latency_s=self.first_token_latency_s,
            status="tool_limit" if hit_limit else "completed",
            tool_rounds=rounds,
            new_messages=tuple(added),
            finish_reason=self.finish_reason,
            usage_source=self.usage_source,
        )

    async def once(
        self,
        messages: Sequence[ChatMessage],
        offered: list[ToolSpec],
        tool_choice: ToolChoice | None,
    ) -> TurnResult:
        """One model call whose tool calls are handed on, not run (see ``complete``)."""
        result = await self._call_model(
            list(messages), offered, first_round=True, choice=tool_choice
        )
        return TurnResult(
            text="".join(self.text),
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            first_token_latency_s=self.first_token_latency_s,
            status="completed",
            finish_reason="tool_calls" if result.calls else self.finish_reason,
            usage_source=self.usage_source,
        )

    async def _call_model(
        self,
        history: list[ChatMessage],
        offered: list[ToolSpec],
        *,
        first_round: bool,
        choice: ToolChoice | None = None,
    ) -> _Round:
        result = _Round()
        llm = self.runner.llm
        chunks = (
            llm.stream(history, offered, model=self.model, options=self.options)
            if choice is None
            else llm.stream(
                history, offered, model=self.model, options=self.options, tool_choice=choice
            )
        )
        try:
            async for chunk in chunks:
                await self._take(chunk, result, separate=not first_round)
        finally:
            # Stop the upstream request now, not whenever the generator is collected.
            if isinstance(chunks, AsyncGenerator):
                with contextlib.suppress(Exception):
                    await chunks.aclose()
        text = "".join(result.text)
        self.finish_reason = result.finish_reason
        source = result.usage_source
        if result.tokens_in is None or result.tokens_out is None:
            source = "estimated"
        if _TRUST[source] < _TRUST[self.usage_source]:
            self.usage_source = source  # the turn's counts are as good as its worst call's
        self.tokens_in += (
            result.tokens_in
            if result.tokens_in is not None
            else _estimate(sum(len(m.content) for m in history))
        )
        self.tokens_out += (
            result.tokens_out
            if result.tokens_out is not None
            else _estimate(len(text) + sum(len(c.arguments) for c in result.calls))
        )
        return result

    async def _take(self, chunk: StreamChunk, result: _Round, *, separate: bool) -> None:
        if chunk.text:
            if not result.text and separate and self.text:
                # Text of a later round starts a new paragraph of the same message.
                tail = "".join(self.text[-2:])[-2:]  # pieces are never empty
                gap = _PARAGRAPH_BREAK[len(tail) - len(tail.rstrip("\n")) :]
                if gap:
                    await self._emit(gap)
            result.text.append(chunk.text)
            await self._emit(chunk.text)
        elif chunk.tool_call is not None:
            result.calls.append(chunk.tool_call)
            if self.on_tool_call is not None:
                if self.first_token_latency_s is None:
                    self.first_token_latency_s = self.runner._clock() - self.started
                await self.on_tool_call(len(result.calls) - 1, chunk.tool_call)
        elif chunk.finish_reason is not None:
            result.finish_reason = chunk.finish_reason
        elif chunk.usage is not None:
            result.tokens_in = chunk.usage.prompt_tokens
            result.tokens_out = chunk.usage.completion_tokens
            result.usage_source = chunk.usage.source

    async def _emit(self, text: str) -> None:
        if self.first_token_latency_s is None:
            self.first_token_latency_s = self.runner._clock() - self.started
        self.text.append(text)
        await self.on_delta(text)

    async def _execute(self, call: ToolCall) -> ToolResult:
        started = self.runner._clock()
        # The metric's label: a registered tool's name, never whatever name the model made up.
        tool = call.name if call.name in self.runner.registry.names() else metrics.UNKNOWN_TOOL
        timer = time.perf_counter()
        status = "error"
        try:
            try:
                outcome = await self.active.execute(call.name, call.arguments, self.ctx)
            except ToolError as exc:
                outcome = ToolResult.error(exc.detail)
            status = outcome.status
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            metrics.tool_run(tool, status, time.perf_counter() - timer)
        log.info(
            "tool %s: %s in %.2fs (turn %s)",
            call.name,
            outcome.status,
            self.runner._clock() - started,
            self.turn_id,
        )
        return outcome


def _estimate(chars: int) -> int:
    return (chars + 3) // 4
