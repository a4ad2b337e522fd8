from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from llm_fake_upstream import (
    FakeUpstream,
    answer,
    drop_after_first,
    drop_before_response,
    raw_events,
    stall_after_first,
    stall_before_first,
    status,
    text_event,
    tool_calls,
)

from relayline.worker.llm.base import ChatMessage, LLMError, StreamChunk, ToolCall, ToolSpec, Usage
from relayline.worker.llm.breaker import CircuitBreaker
from relayline.worker.llm.openai_compat import OpenAICompatClient, RetryPolicy, Timeouts

HELLO = [ChatMessage("user", "hi")]
FAST_RETRY = RetryPolicy(max_attempts=3, max_total_s=5.0, base_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream()
    await server.start()
    yield server
    await server.close()


def make_client(
    upstream: FakeUpstream,
    *,
    read_s: float = 2.0,
    total_s: float = 10.0,
    retry: RetryPolicy = FAST_RETRY,
    breaker: CircuitBreaker | None = None,
    max_inflight: int = 4,
) -> OpenAICompatClient:
    return OpenAICompatClient(
        upstream.base_url,
        api_key="sk-test",
        timeouts=Timeouts(connect_s=1.0, read_s=read_s, total_s=total_s),
        retry=retry,
        breaker=breaker or CircuitBreaker(failure_threshold=100),
        max_inflight=max_inflight,
    )


async def collect(
    client: OpenAICompatClient, tools: list[ToolSpec] | None = None
) -> list[StreamChunk]:
    return [chunk async for chunk in client.stream(HELLO, tools or [], model="m")]


def text_of(chunks: list[StreamChunk]) -> str:
    return "".join(c.text for c in chunks if c.text)


async def fail(client: OpenAICompatClient) -> LLMError:
    with pytest.raises(LLMError) as info:
        await collect(client)
    return info.value


async def test_streams_text_and_usage(upstream: FakeUpstream) -> None:
    async with make_client(upstream) as client:
        chunks = await collect(client)
    assert text_of(chunks) == "Hello"
    assert chunks[-1] == StreamChunk(usage=Usage(prompt_tokens=7, completion_tokens=2))
    request = upstream.requests[0]
    assert request["stream"] is True and request["model"] == "m"
    assert request["messages"] == [{"role": "user", "content": "hi"}]
    assert request["stream_options"] == {"include_usage": True}
    assert "tools" not in request
    assert upstream.headers[0]["authorization"] == "Bearer sk-test"
    assert upstream.headers[0]["content-type"] == "application/json"


async def test_sends_tools_and_tool_messages(upstream: FakeUpstream) -> None:
    spec = ToolSpec("read_file", "Read", {"type": "object", "properties": {}})
    history = [
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "", (ToolCall("c1", "read_file", '{"path":"a"}'),)),
        ChatMessage("tool", "content", tool_call_id="c1"),
    ]
    async with make_client(upstream) as client:
        [c async for c in client.stream(history, [spec], model="m")]
    request = upstream.requests[0]
    assert request["tools"] == [
        {
            "type": "function",
            "function": {"name": "read_file", "description": "Read", "parameters": spec.parameters},
        }
    ]
    assert request["messages"][1]["tool_calls"][0]["function"] == {
        "name": "read_file",
        "arguments": '{"path":"a"}',
    }
    assert request["messages"][2] == {"role": "tool", "content": "content", "tool_call_id": "c1"}


async def test_assembles_streamed_tool_calls(upstream: FakeUpstream) -> None:
    args_a = json.dumps({"path": "README.md"})
    args_b = json.dumps({"command": "ls -la", "cwd": "."})
    upstream.play(tool_calls([("call_a", "read_file", args_a), ("call_b", "run_command", args_b)]))
    async with make_client(upstream) as client:
        chunks = await collect(client)
    calls = [c.tool_call for c in chunks if c.tool_call]
    assert calls == [
        ToolCall("call_a", "read_file", args_a),
        ToolCall("call_b", "run_command", args_b),
    ]


async def test_429_then_success_honours_retry_after(upstream: FakeUpstream) -> None:
    retry = RetryPolicy(max_attempts=3, max_total_s=5.0, base_backoff_s=0.01, max_backoff_s=2.0)
    upstream.play(status(429, "slow down", {"Retry-After": "1"}), answer())
    started = time.monotonic()
    async with make_client(upstream, retry=retry) as client:
        chunks = await collect(client)
    assert text_of(chunks) == "Hello"
    assert upstream.hits == 2
    assert time.monotonic() - started >= 1.0


async def test_429_asking_too_long_is_not_retried(upstream: FakeUpstream) -> None:
    upstream.play(status(429, "slow down", {"Retry-After": "120"}))
    async with make_client(upstream) as client:
        error = await fail(client)
    assert error.category == "upstream_4xx"
    assert "429" in error.detail
    assert upstream.hits == 1


async def test_500_is_retried_up_to_max_attempts(upstream: FakeUpstream) -> None:
    upstream.play(status(500, "boom"))
    async with make_client(upstream) as client:
        error = await fail(client)
    assert error.category == "upstream_5xx"
    assert "boom" in error.detail
    assert upstream.hits == FAST_RETRY.max_attempts


async def test_500_then_success(upstream: FakeUpstream) -> None:
    upstream.play(status(500), status(503), answer())
    async with make_client(upstream) as client:
        assert text_of(await collect(client)) == "Hello"
    assert upstream.hits == 3


async def test_retries_stop_at_max_total_s(upstream: FakeUpstream) -> None:
    retry = RetryPolicy(max_attempts=50, max_total_s=0.4, base_backoff_s=0.1, max_backoff_s=0.1)
    upstream.play(status(500))
    async with make_client(upstream, retry=retry) as client:
        error = await fail(client)
    assert error.category == "upstream_5xx"
    assert 1 < upstream.hits < 50


async def test_400_is_not_retried(upstream: FakeUpstream) -> None:
    upstream.play(status(400, "bad model name"))
    async with make_client(upstream) as client:
        error = await fail(client)
    assert error.category == "upstream_4xx"
    assert "bad model name" in error.detail
    assert upstream.hits == 1


async def test_stall_before_first_token_is_retried_then_times_out(upstream: FakeUpstream) -> None:
    upstream.play(stall_before_first())
    retry = RetryPolicy(max_attempts=2, max_total_s=5.0, base_backoff_s=0.01, max_backoff_s=0.02)
    async with make_client(upstream, read_s=0.2, retry=retry) as client:
        error = await fail(client)
    assert error.category == "timeout"
    assert upstream.hits == 2


async def test_stall_before_first_token_then_success(upstream: FakeUpstream) -> None:
    upstream.play(stall_before_first(), answer())
    async with make_client(upstream, read_s=0.2) as client:
        assert text_of(await collect(client)) == "Hello"
    assert upstream.hits == 2


async def test_stall_after_first_token_is_not_retried(upstream: FakeUpstream) -> None:
    upstream.play(stall_after_first())
    received: list[str] = []
    async with make_client(upstream, read_s=0.2) as client:
        with pytest.raises(LLMError) as info:
            async for chunk in client.stream(HELLO, [], model="m"):
                received.append(chunk.text or "")
    assert received == ["partial"]
    assert info.value.category == "timeout"
    assert upstream.hits == 1


async def test_drop_mid_stream_is_upstream_5xx_not_retried(upstream: FakeUpstream) -> None:
    upstream.play(drop_after_first())
    received: list[str] = []
    async with make_client(upstream) as client:
        with pytest.raises(LLMError) as info:
            async for chunk in client.stream(HELLO, [], model="m"):
                received.append(chunk.text or "")
    assert received == ["partial"]
    assert info.value.category == "upstream_5xx"
    assert upstream.hits == 1


async def test_drop_before_response_is_retried(upstream: FakeUpstream) -> None:
    upstream.play(drop_before_response(), answer())
    async with make_client(upstream) as client:
        assert text_of(await collect(client)) == "Hello"
    assert upstream.hits == 2


async def test_truncated_stream_without_done_is_incomplete(upstream: FakeUpstream) -> None:
    upstream.play(raw_events(json.dumps(text_event("a"))))
    async with make_client(upstream) as client:
        error = await fail(client)
    assert error.category == "incomplete" and "finish_reason" in error.detail
    assert upstream.hits == 1  # "a" was already yielded: no retry


async def test_done_without_a_finish_reason_is_an_incomplete_answer(upstream: FakeUpstream) -> None:
    # What llama.cpp's server sends when it interrupts a stream for another request.
    upstream.play(raw_events(json.dumps(text_event("cut mid-sen")), "[DONE]"))
    received: list[str] = []
    async with make_client(upstream) as client:
        with pytest.raises(LLMError) as info:
            async for chunk in client.stream(HELLO, [], model="m"):
                received.append(chunk.text or "")
    assert received == ["cut mid-sen"]  # the text so far reached the relay before the failure
    assert info.value.category == "incomplete" and "finish_reason" in info.value.detail


async def test_a_finish_reason_without_done_is_an_incomplete_answer(upstream: FakeUpstream) -> None:
    upstream.play(raw_events(json.dumps(text_event("all of it", finish="stop"))))
    async with make_client(upstream) as client:
        error = await fail(client)
    assert error.category == "incomplete" and "[DONE]" in error.detail


async def test_both_endings_make_a_complete_answer(upstream: FakeUpstream) -> None:
    upstream.play(raw_events(json.dumps(text_event("whole", finish="stop")), "[DONE]"))
    async with make_client(upstream) as client:
        assert text_of(await collect(client)) == "whole"


async def test_malformed_event_is_upstream_5xx(upstream: FakeUpstream) -> None:
    upstream.play(raw_events("{not json"))
    async with make_client(upstream, retry=RetryPolicy(max_attempts=1)) as client:
        error = await fail(client)
    assert error.category == "upstream_5xx"


async def test_total_deadline(upstream: FakeUpstream) -> None:
    upstream.play(stall_before_first())
    started = time.monotonic()
    async with make_client(upstream, read_s=10.0, total_s=0.4) as client:
        error = await fail(client)
    assert error.category == "timeout"
    # Only the time tells the total deadline from the 10s read timeout: half of that.
    assert time.monotonic() - started < 5
    assert upstream.hits == 1


async def test_total_deadline_after_first_token(upstream: FakeUpstream) -> None:
    upstream.play(answer(["a", "b", "c", "d"], delay=0.3))
    async with make_client(upstream, read_s=5.0, total_s=0.5) as client:
        with pytest.raises(LLMError) as info:
            await collect(client)
    assert info.value.category == "timeout"
    assert upstream.hits == 1


async def test_connection_refused_is_upstream_5xx() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAICompatClient(
        f"http://127.0.0.1:{port}/v1",
        retry=FAST_RETRY,
        timeouts=Timeouts(connect_s=1.0, read_s=1.0, total_s=5.0),
    )
    async with client:
        with pytest.raises(LLMError) as info:
            await collect(client)
    assert info.value.category == "upstream_5xx"
    assert client.breaker.consecutive_failures == FAST_RETRY.max_attempts


async def test_breaker_opens_and_recovers_through_half_open(upstream: FakeUpstream) -> None:
    now = [1000.0]
    breaker = CircuitBreaker(failure_threshold=2, recovery_s=30.0, clock=lambda: now[0])
    one_shot = RetryPolicy(max_attempts=1)
    upstream.play(status(500))
    async with make_client(upstream, retry=one_shot, breaker=breaker) as client:
        for _ in range(2):
            assert (await fail(client)).category == "upstream_5xx"
        assert breaker.state == "open"
        assert (await fail(client)).category == "circuit_open"
        assert upstream.hits == 2  # rejected without touching the upstream

        now[0] += 30.0
        assert breaker.state == "half_open"
        assert (await fail(client)).category == "upstream_5xx"  # the probe fails
        assert breaker.state == "open"
        assert upstream.hits == 3

        now[0] += 30.0
        upstream.play(answer())
        assert text_of(await collect(client)) == "Hello"  # the probe succeeds
        assert breaker.state == "closed"
        assert upstream.hits == 4


async def test_breaker_tripping_during_retries_reports_the_real_error(
    upstream: FakeUpstream,
) -> None:
    breaker = CircuitBreaker(failure_threshold=2, recovery_s=30.0)
    upstream.play(status(502, "bad gateway"))
    async with make_client(upstream, breaker=breaker) as client:
        error = await fail(client)
    assert error.category == "upstream_5xx"
    assert upstream.hits == 2
    assert breaker.state == "open"


async def test_4xx_does_not_count_against_the_breaker(upstream: FakeUpstream) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    upstream.play(status(400))
    async with make_client(upstream, breaker=breaker) as client:
        await fail(client)
        await fail(client)
    assert breaker.state == "closed"


async def test_concurrency_is_bounded_per_client(upstream: FakeUpstream) -> None:
    upstream.play(answer(["a", "b"], delay=0.05))
    async with make_client(upstream, max_inflight=2) as client:
        results = await asyncio.gather(*(collect(client) for _ in range(5)))
    assert all(text_of(r) == "ab" for r in results)
    assert upstream.max_active == 2


async def test_abandoned_stream_frees_its_slot(upstream: FakeUpstream) -> None:
    upstream.play(answer(["a", "b", "c"], delay=0.05))
    async with make_client(upstream, max_inflight=1, total_s=3.0) as client:
        stream = client.stream(HELLO, [], model="m")
        first = await anext(stream)  # type: ignore[call-overload]
        assert first.text == "a"
        await stream.aclose()  # type: ignore[attr-defined]
        assert text_of(await collect(client)) == "abc"
    assert client.breaker.state == "closed"


async def test_closed_client_refuses(upstream: FakeUpstream) -> None:
    client = make_client(upstream)
    await client.aclose()
    error = await fail(client)
    assert error.category == "internal"


async def test_unexpected_errors_are_internal_and_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    client = OpenAICompatClient(
        "http://upstream.invalid/v1", retry=FAST_RETRY, transport=httpx.MockTransport(handler)
    )
    async with client:
        error = await fail(client)
    assert error.category == "internal" and calls == 1
    assert client.breaker.consecutive_failures == 0
