"""OpenAI-compatible ``/chat/completions`` streaming over HTTP (Ollama, vLLM, llama.cpp, ...).

Failure policy, in one place:

=========================================  ==============  ==========================
what happened                              category        retried?
=========================================  ==============  ==========================
connect error, connection lost early       upstream_5xx    yes, before the first token
HTTP 5xx                                   upstream_5xx    yes, before the first token
HTTP 429                                   upstream_4xx    yes, waiting >= Retry-After
                                                           (no if it asks for more
                                                           than ``max_backoff_s``)
other HTTP 4xx                             upstream_4xx    no
read stall (``read_s`` without a byte)     timeout         yes, before the first token
connection lost after the first token      upstream_5xx    no (text was already shown)
stall after the first token                timeout         no
``total_s`` exceeded (slot wait included)  timeout         no
breaker open                               circuit_open    no
=========================================  ==============  ==========================

Retries use exponential backoff with full jitter and stop at ``max_attempts`` or when the
next attempt would start after ``max_total_s``, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from relayline.protocol.generation import Generation
from relayline.worker.llm.base import (
    REQUEST_ID,
    ChatMessage,
    LLMError,
    StreamChunk,
    ToolChoice,
    ToolSpec,
    Usage,
)
from relayline.worker.llm.breaker import BreakerPermit, CircuitBreaker
from relayline.worker.llm.netstream import use_asyncio_backend
from relayline.worker.llm.sse import error_snippet, parse_chat_stream
from relayline.worker.llm.upstream_probe import (
    Tokenizer,
    UpstreamInfo,
    probe,
    request_id_header,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """``connect_s``: TCP/TLS set-up. ``read_s``: longest silence between received bytes.
    ``total_s``: the whole call, from waiting for a slot to the last byte, retries included."""

    connect_s: float = 5.0
    read_s: float = 60.0
    total_s: float = 300.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds for retries before the first token (see the module docstring)."""

    max_attempts: int = 3
    max_total_s: float = 20.0
    base_backoff_s: float = 0.5
    max_backoff_s: float = 8.0


class _AttemptFailed(Exception):
    """One attempt's failure, with what the retry loop and the breaker need to know."""

    def __init__(
        self,
        error: LLMError,
        *,
        retriable: bool,
        unhealthy: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error.detail)
        self.error = error
        self.retriable = retriable
        self.unhealthy = unhealthy
        self.retry_after = retry_after


@dataclass(slots=True)
class _Opened:
    permit: BreakerPermit
    chunks: AsyncGenerator[StreamChunk, None]
    first: StreamChunk | None


class _Deadline:
    """A stream's deadline as one timer: at ``when`` it cancels the task that made it if that
    task is ``waiting`` then, else it marks the deadline ``expired``. As with
    :func:`asyncio.timeout`, a cancellation of its own is told apart from anyone else's by the
    task's count of pending cancellations."""

    __slots__ = ("_base", "_fired", "_handle", "_task", "expired", "waiting")

    def __init__(self, when: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._base = task.cancelling()
        self._fired = False
        self.expired = False
        self.waiting = False
        self._handle = asyncio.get_running_loop().call_at(when, self._on_deadline)

    def _on_deadline(self) -> None:
        self.expired = True
        if self.waiting:
            self._fired = True
            self._task.cancel()

    def cancelled_us(self) -> bool:
        """On a ``CancelledError`` while waiting: whether it was this deadline's (then it is
        withdrawn from the task) and no one else cancelled the task too."""
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() <= self._base

    def cancel(self) -> None:
        self._handle.cancel()


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, _AttemptFailed) and exc.retriable


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _message_to_wire(message: ChatMessage) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["content"] = message.content or None
        wire["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


class OpenAICompatClient:
    """An :class:`~relayline.worker.llm.base.LLMClient` for one OpenAI-compatible upstream.

    At most ``max_inflight`` calls run at once (others wait, inside their ``total_s``); the
    ``breaker`` (one per upstream; pass your own to read its state) guards every attempt.
    :meth:`probe` (before the first call) lowers that bound to the server's own slots and
    finds its tokenizer, which then counts the tokens of an answer whose usage the server did
    not report (``Usage.source`` ``counted``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        max_inflight: int = 4,
        include_usage: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self.include_usage = include_usage
        self.base_url = base_url
        self.max_inflight = max_inflight
        self.upstream = UpstreamInfo("unknown")
        self._slots = asyncio.Semaphore(max_inflight)
        self._closed = False
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        t = self.timeouts
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(
                connect=t.connect_s, read=t.read_s, write=t.read_s, pool=t.connect_s
            ),
            limits=httpx.Limits(
                max_connections=max_inflight, max_keepalive_connections=max_inflight
            ),
            transport=transport,
        )
        if transport is None:
            use_asyncio_backend(self._http)
        self._jitter = wait_random_exponential(
            multiplier=self.retry.base_backoff_s, max=self.retry.max_backoff_s
        )

    async def __aenter__(self) -> OpenAICompatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._http.aclose()

    async def probe(self) -> UpstreamInfo:
        """Learn the server's slots and tokenizer (see :mod:`.upstream_probe`); call it before
        the first :meth:`stream`. Best effort: an unknown server changes nothing."""
        info = await probe(self._http, self.base_url)
        self.upstream = info
        if info.slots is not None and info.slots < self.max_inflight:
            self.max_inflight = info.slots
            self._slots = asyncio.Semaphore(info.slots)
        return info

    def _payload(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        model: str,
        options: Generation | None,
        tool_choice: ToolChoice | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model,
            "messages": [_message_to_wire(m) for m in messages],
            "stream": True,
        }
        if options is not None:
            payload.update(options.wire())
        if self.include_usage:
            payload["stream_options"] = {"include_usage": True}
        if tools:
            payload["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
            if tool_choice is not None:
                payload["tool_choice"] = tool_choice
        return payload

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        model: str,
        options: Generation | None = None,
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """See :meth:`LLMClient.stream`; the failure policy is in the module docstring."""
        if self._closed:
            raise LLMError("internal", "LLM client is closed")
        if self.breaker.state == "open":
            # Fail fast without queueing for a slot; acquire() raises circuit_open here.
            self.breaker.acquire()
        payload = self._payload(messages, tools, model, options, tool_choice)
        deadline = asyncio.get_running_loop().time() + self.timeouts.total_s
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise LLMError("timeout", "no free upstream slot before the deadline") from None
        try:
            async with contextlib.AsyncExitStack() as stack:
                opened = await self._open(payload, deadline, stack)
                answer: list[str] = []
                reported = False
                # aclosing: an abandoned stream must settle its breaker permit right away.
                async with contextlib.aclosing(self._follow(opened, deadline)) as follow:
                    async for chunk in follow:
                        if chunk.text is not None:
                            answer.append(chunk.text)
                        elif chunk.tool_call is not None:
                            answer.append(chunk.tool_call.arguments)
                        elif chunk.usage is not None:
                            reported = True
                        yield chunk
                tokenizer = self.upstream.tokenizer
                if not reported and tokenizer is not None:
                    # Still inside our slot: a single-slot server is not asked while it streams.
                    counted = await self._count(tokenizer, messages, "".join(answer))
                    if counted is not None:
                        yield StreamChunk(usage=counted)
        finally:
            self._slots.release()

    async def _count(
        self, tokenizer: Tokenizer, messages: Sequence[ChatMessage], answer: str
    ) -> Usage | None:
        prompt = await tokenizer.count(self._http, "\n".join(m.content for m in messages))
        completion = await tokenizer.count(self._http, answer) if answer else 0
        if prompt is None or completion is None:
            return None
        return Usage(prompt_tokens=prompt, completion_tokens=completion, source="counted")

    async def _follow(self, opened: _Opened, deadline: float) -> AsyncGenerator[StreamChunk, None]:
        """Yield the rest of a committed stream; never retries, settles the breaker permit."""
        permit = opened.permit
        chunks = opened.chunks
        # One timer for the whole stream, not a timeout scope per chunk. It covers only our own
        # wait, never the consumer's time at ``yield``: it cancels this task only while it
        # waits for the next chunk, and a deadline passed meanwhile fails the next wait.
        guard = _Deadline(deadline)
        try:
            if opened.first is not None:
                yield opened.first
            while True:
                if guard.expired:
                    raise self._late()
                guard.waiting = True
                try:
                    chunk = await anext(chunks, None)
                except asyncio.CancelledError:
                    if guard.cancelled_us():
                        raise self._late() from None
                    raise
                finally:
                    guard.waiting = False
                if chunk is None:
                    break
                yield chunk
        except LLMError as exc:
            if exc.category in ("timeout", "upstream_5xx"):
                permit.failure()
            else:
                permit.success()
            raise
        except Exception as exc:
            permit.release()
            log.exception("unexpected error while streaming from the upstream")
            raise LLMError("internal", f"unexpected {type(exc).__name__} while streaming") from exc
        except BaseException:
            permit.release()
            raise
        finally:
            guard.cancel()
        permit.success()

    def _late(self) -> LLMError:
        return LLMError("timeout", f"answer not complete within {self.timeouts.total_s:g}s")

    async def _open(
        self, payload: dict[str, Any], deadline: float, stack: contextlib.AsyncExitStack
    ) -> _Opened:
        """Attempt until one stream yields its first chunk (or ends cleanly); retry policy here."""
        policy = self.retry
        errors: list[LLMError] = []
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts) | stop_before_delay(policy.max_total_s),
            wait=self._backoff,
            retry=retry_if_exception(_is_retriable),
            reraise=True,
            sleep=asyncio.sleep,
        )
        try:
            async with asyncio.timeout_at(deadline):
                async for attempt in retrying:
                    with attempt:
                        opened = await self._attempt(payload, errors, stack)
                        return opened
        except _AttemptFailed as exc:
            raise exc.error from exc.error.__cause__
        except TimeoutError:
            last = f"; last error: {errors[-1].detail}" if errors else ""
            raise LLMError(
                "timeout", f"no answer within {self.timeouts.total_s:g}s{last}"
            ) from None
        raise LLMError("internal", "retry loop ended without an outcome")  # pragma: no cover

    def _backoff(self, state: RetryCallState) -> float:
        delay = self._jitter(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _AttemptFailed) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    async def _attempt(
        self, payload: dict[str, Any], errors: list[LLMError], stack: contextlib.AsyncExitStack
    ) -> _Opened:
        try:
            permit = self.breaker.acquire()
        except LLMError as exc:
            # The breaker tripped during our own retries: report what actually went wrong.
            raise _AttemptFailed(
                errors[-1] if errors else exc, retriable=False, unhealthy=False
            ) from None
        try:
            async with contextlib.AsyncExitStack() as attempt_stack:
                response = await attempt_stack.enter_async_context(
                    self._http.stream(
                        "POST",
                        "chat/completions",
                        json=payload,
                        headers=request_id_header(self.upstream, REQUEST_ID.get()),
                    )
                )
                if response.status_code != 200:
                    raise self._status_failure(response, await error_snippet(response))
                chunks = parse_chat_stream(response)
                attempt_stack.push_async_callback(chunks.aclose)
                first = await anext(chunks, None)
                stack.push_async_exit(attempt_stack.pop_all())
                return _Opened(permit=permit, chunks=chunks, first=first)
        except _AttemptFailed as exc:
            failure = exc
        except LLMError as exc:
            failure = _AttemptFailed(
                exc, retriable=exc.category in ("timeout", "upstream_5xx"), unhealthy=True
            )
        except httpx.TimeoutException as exc:
            error = LLMError("timeout", f"upstream did not answer ({type(exc).__name__})")
            error.__cause__ = exc
            failure = _AttemptFailed(error, retriable=True, unhealthy=True)
        except httpx.TransportError as exc:
            error = LLMError("upstream_5xx", f"cannot reach upstream ({type(exc).__name__})")
            error.__cause__ = exc
            failure = _AttemptFailed(error, retriable=True, unhealthy=True)
        except Exception as exc:
            # Not the upstream's doing (a bad base_url, a bug): retrying would not help.
            log.exception("unexpected error calling the upstream")
            error = LLMError("internal", f"unexpected {type(exc).__name__} calling the upstream")
            error.__cause__ = exc
            failure = _AttemptFailed(error, retriable=False, unhealthy=False)
        except BaseException:
            permit.release()
            raise
        if failure.unhealthy:
            permit.failure()
        else:
            permit.success()
        errors.append(failure.error)
        log.info("llm attempt failed: %s (%s)", failure.error.category, failure.error.detail)
        raise failure

    def _status_failure(self, response: httpx.Response, snippet: str) -> _AttemptFailed:
        code = response.status_code
        detail = f"upstream answered HTTP {code}" + (f": {snippet}" if snippet else "")
        if code == 429:
            retry_after = _parse_retry_after(response.headers.get("retry-after"))
            patient = retry_after is None or retry_after <= self.retry.max_backoff_s
            return _AttemptFailed(
                LLMError("upstream_4xx", detail),
                retriable=patient,
                unhealthy=True,
                retry_after=retry_after,
            )
        if 400 <= code < 500:
            return _AttemptFailed(
                LLMError("upstream_4xx", detail), retriable=False, unhealthy=False
            )
        return _AttemptFailed(
            LLMError("upstream_5xx", detail), retriable=code >= 500, unhealthy=True
        )
