"""The OpenAI-compatible gateway, driven by the official ``openai`` package: a real relay, a
real worker, and the scriptable OpenAI-compatible upstream behind it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from relayline.observability import turn_metrics as tm
from relayline.store.models import Chat, Message, MessageMetric, Turn
from relayline.testing.server import RelayServer
from tests.fixtures import (
    RelayFactory,
    Tenant,
    Tenants,
    Workers,
    admin,
    dispatcher_of,
    eventually,
)
from tests.worker.llm_fake_upstream import (
    Exchange,
    FakeUpstream,
    answer,
    stall_before_first,
    status,
    text_event,
    tool_calls,
)

MODEL = "m1"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    with contextlib.suppress(AssertionError):
        await server.close()


_CLIENTS: list[openai.AsyncOpenAI] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while _CLIENTS:
        await _CLIENTS.pop().close()


def client(relay: RelayServer, key: str) -> openai.AsyncOpenAI:
    """The official client, without retries (each refusal is asserted as it comes)."""
    api = openai.AsyncOpenAI(base_url=f"{relay.url}/v1", api_key=key, max_retries=0, timeout=20)
    _CLIENTS.append(api)
    return api


async def gateway(
    turn_relay: RelayFactory,
    tenants: Tenants,
    workers: Workers,
    upstream: FakeUpstream,
    **settings: Any,
) -> tuple[RelayServer, Tenant]:
    relay = await turn_relay(**settings)
    tenant = await tenants.new(relay)
    await workers.start(relay, llm_url=await upstream.start(), model=MODEL)
    return relay, tenant


def db_of(relay: RelayServer) -> Any:
    return relay.app.http.state.relay.db


async def turns_of(relay: RelayServer) -> list[Turn]:
    async with db_of(relay).read() as session:
        return list((await session.scalars(select(Turn).order_by(Turn.id))).all())


# Answers


async def test_a_streamed_completion_arrives_as_openai_chunks_with_usage(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, upstream: FakeUpstream
) -> None:
    upstream.play(answer(["Hel", "lo", " world"], usage=(7, 3)))
    relay, tenant = await gateway(turn_relay, tenants, workers, upstream)
    api = client(relay, tenant.key)
    stream = await api.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.5,
        max_tokens=50,
        stop=["END"],
    )
    chunks = [chunk async for chunk in stream]
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == "Hello world"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 3)
    assert chunks[-1].usage.total_tokens == 10
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.model == MODEL for c in chunks)
    (sent,) = upstream.requests
    assert sent["model"] == MODEL
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]
    assert (sent["temperature"], sent["max_tokens"], sent["stop"]) == (0.5, 50, ["END"])
    # Recorded like a chat turn: completed, with its metrics for the analytics.
    (turn,) = await turns_of(relay)
    assert (turn.state, turn.model) == ("completed", MODEL)
    async with db_of(relay).read() as session:
        metric = (await session.scalars(select(MessageMetric))).one()
    assert (metric.tokens_in, metric.tokens_out, metric.status) == (7, 3, "complete")


async def test_a_whole_completion_and_the_models_list(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, upstream: FakeUpstream
) -> None:
    upstream.play(answer(["Hi", " there"], usage=(5, 2)))
    relay, tenant = await gateway(turn_relay, tenants, workers, upstream)
    api = client(relay, tenant.key)
    models = await api.models.list()
    assert [m.id for m in models.data] == [MODEL]
    done = await api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    )
    assert done.object == "chat.completion"
    assert done.choices[0].message.content == "Hi there"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.total_tokens) == (5, 7)
    # Without stream_options.include_usage the stream carries no usage.
    upstream.play(answer(["x"]))
    stream = await api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "again"}], stream=True
    )
    assert all([chunk.usage is None async for chunk in stream])


async def test_tool_calls_stream_back_in_openai_form_and_their_results_go_upstream(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, upstream: FakeUpstream
) -> None:
    call = ("call_1", "get_weather", '{"city": "Paris"}')
    upstream.play(tool_calls([call]), tool_calls([call]), answer(["Sunny"]))
    relay, tenant = await gateway(turn_relay, tenants, workers, upstream)
    api = client(relay, tenant.key)
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    stream = await api.chat.completions.create(
        model=MODEL, messages=question, tools=tools, tool_choice="auto", stream=True
    )
    chunks = [c async for c in stream]
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].index == 0 and deltas[0].id == "call_1"
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    sent = upstream.requests[0]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "auto"

    whole = await api.chat.completions.create(model=MODEL, messages=question, tools=tools)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    first = message.tool_calls[0]
    assert first.type == "function"
    assert (first.id, first.function.name) == ("call_1", "get_weather")  # type: ignore[union-attr]
    assert json.loads(first.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]

    follow_up: Any = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [first.model_dump()]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    answered = await api.chat.completions.create(model=MODEL, messages=follow_up, tools=tools)
    assert answered.choices[0].message.content == "Sunny"
    last = upstream.requests[-1]["messages"]
    assert last[1]["tool_calls"][0]["id"] == "call_1"
    assert last[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert last[2] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"}


# Errors, each parsed by the openai package as the right exception


async def test_every_error_status_reaches_the_openai_client_as_its_exception(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, upstream: FakeUpstream
) -> None:
    upstream.play(stall_before_first(30))
    relay, tenant = await gateway(
        turn_relay, tenants, workers, upstream, max_concurrent_completions=1, max_body_bytes=4096
    )
    ask: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        await client(relay, "rl_not_a_key").chat.completions.create(model=MODEL, messages=ask)
    assert unauthorized.value.status_code == 401
    r = await tenant.http.post(
        f"/v1/admin/tenants/{tenant.id}/keys", json={"scopes": ["publish"]}, headers=admin()
    )
    assert r.status_code == 201, r.text
    with pytest.raises(openai.PermissionDeniedError):
        await client(relay, r.json()["key"]).chat.completions.create(model=MODEL, messages=ask)
    api = client(relay, tenant.key)
    with pytest.raises(openai.NotFoundError) as unknown:
        await api.chat.completions.create(model="no-such-model", messages=ask)
    assert unknown.value.code == "unknown_model"
    body: Any = unknown.value.body
    assert body["type"] == "not_found_error" and body["request_id"] and body["detail"]
    assert "no-such-model" in body["message"]
    with pytest.raises(openai.APIStatusError) as too_large:
        await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x" * 10_000}]
        )
    assert too_large.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        await api.chat.completions.create(model=MODEL, messages=ask, temperature=True)  # type: ignore[arg-type]
    assert invalid.value.code == "validation_error"
    assert "temperature" in invalid.value.message
    with pytest.raises(openai.UnprocessableEntityError):
        await api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "tool", "content": "no call id"}],  # type: ignore[list-item]
        )
    # One completion in progress (the upstream stalls): the next one is refused.
    first = asyncio.ensure_future(api.chat.completions.create(model=MODEL, messages=ask))
    await eventually(lambda: upstream.hits == 1)
    with pytest.raises(openai.RateLimitError) as limited:
        await api.chat.completions.create(model=MODEL, messages=ask)
    assert limited.value.code == "too_many_completions"
    assert int(limited.value.response.headers["Retry-After"]) >= 1
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError, openai.APIError):
        await first
    # No worker at all: 503 with Retry-After.
    await workers.close()
    await eventually(lambda: not dispatcher_of(relay).workers)
    with pytest.raises(openai.InternalServerError) as unavailable:
        await api.chat.completions.create(model=MODEL, messages=ask)
    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "no_worker"
    assert unavailable.value.response.headers["Retry-After"]


async def test_a_model_server_failure_before_any_text_is_an_error_status(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, upstream: FakeUpstream
) -> None:
    upstream.play(status(400, "bad prompt"))
    relay, tenant = await gateway(turn_relay, tenants, workers, upstream)
    api = client(relay, tenant.key)
    with pytest.raises(openai.APIStatusError) as failed:
        await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert failed.value.status_code == 502
    assert failed.value.code == "upstream_4xx"


async def test_session_tokens_may_use_the_gateway_and_errors_keep_relaylines_shape_elsewhere(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, upstream: FakeUpstream
) -> None:
    upstream.play(answer(["ok"]))
    relay, tenant = await gateway(turn_relay, tenants, workers, upstream)
    r = await tenant.http.post("/v1/sessions", json={"completions": True}, headers=tenant.auth)
    assert r.status_code == 201, r.text
    done = await client(relay, r.json()["token"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content == "ok"
    # A session token minted without it may not.
    chat = await tenant.chat()
    plain = await tenant.session([chat])
    with pytest.raises(openai.PermissionDeniedError):
        await client(relay, plain).models.list()
    r = await tenant.http.get("/v1/chats/nope", headers=tenant.auth)
    assert set(r.json()["error"]) == {"code", "detail", "request_id"}


# Disconnects and lost workers


def stream_until_closed(closed: asyncio.Event) -> Any:
    """Send one piece, then keep the stream open (a comment every 20 ms) until the reader
    closes its connection."""

    async def run(ex: Exchange) -> None:
        await ex.head()
        await ex.event(text_event("partial"))
        try:
            for _ in range(1500):
                await asyncio.sleep(0.02)
                await ex.chunk(b": waiting\n\n")
        except (ConnectionError, RuntimeError):
            closed.set()

    return run


async def test_a_client_that_disconnects_mid_stream_cancels_the_completion_on_its_worker(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, upstream: FakeUpstream
) -> None:
    closed = asyncio.Event()
    upstream.play(stream_until_closed(closed))
    relay, tenant = await gateway(turn_relay, tenants, workers, upstream)
    dropped = tm.COMPLETIONS.labels("disconnected", "true")
    before = dropped._value.get()
    async with (
        httpx.AsyncClient(base_url=relay.url, timeout=10) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers=tenant.auth,
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        seen = ""
        while "partial" not in seen:
            seen += await anext(lines)
    # The client is gone: the turn is cancelled, the worker stopped the model call.
    async with asyncio.timeout(10):
        await closed.wait()
    dispatcher = dispatcher_of(relay)
    await eventually(lambda: not dispatcher.running)
    (turn,) = await turns_of(relay)
    assert turn.state == "cancelled"
    assert all(not w.inflight for w in dispatcher.workers.values())
    (worker,) = workers.running
    await eventually(lambda: worker.model.stopped_early == 1)
    assert dropped._value.get() == before + 1
    # The tenant's slot was given back.
    upstream.play(answer(["next"]))
    done = await client(relay, tenant.key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content == "next"


async def test_a_client_that_gives_up_on_a_whole_completion_cancels_it_too(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, upstream: FakeUpstream
) -> None:
    closed = asyncio.Event()
    upstream.play(stream_until_closed(closed))
    relay, tenant = await gateway(turn_relay, tenants, workers, upstream)
    api = openai.AsyncOpenAI(
        base_url=f"{relay.url}/v1", api_key=tenant.key, max_retries=0, timeout=0.5
    )
    _CLIENTS.append(api)
    with pytest.raises(openai.APITimeoutError):
        await api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    async with asyncio.timeout(10):
        await closed.wait()
    await eventually(lambda: not dispatcher_of(relay).running)
    (turn,) = await turns_of(relay)
    assert turn.state == "cancelled"


async def test_a_worker_lost_before_the_first_token_is_retried_and_answered_once(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    stalled, healthy = FakeUpstream(), FakeUpstream()
    stalled.play(stall_before_first(30))
    healthy.play(answer(["Once", " only"]))
    relay = await turn_relay(turn_lease_s=1.0)
    tenant = await tenants.new(relay)
    try:
        doomed = await workers.start(relay, llm_url=await stalled.start(), model=MODEL)
        api = client(relay, tenant.key)
        asked = asyncio.ensure_future(
            api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        await eventually(lambda: stalled.hits == 1)
        await workers.start(relay, llm_url=await healthy.start(), model=MODEL)
        await doomed.kill()
        stream = await asyncio.wait_for(asked, 20)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    finally:
        await stalled.close()
        await healthy.close()
    assert text == "Once only"
    (turn,) = await turns_of(relay)
    assert (turn.state, turn.attempt) == ("completed", 2)
    assert healthy.hits == 1


# What is kept


async def test_completions_are_not_kept_as_chats_unless_the_tenant_says_so(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, upstream: FakeUpstream
) -> None:
    upstream.play(answer(["secret answer"]))
    relay, tenant = await gateway(turn_relay, tenants, workers, upstream)
    api = client(relay, tenant.key)
    ask: Any = [{"role": "user", "content": "secret question"}]
    await api.chat.completions.create(model=MODEL, messages=ask)
    r = await tenant.http.get("/v1/chats", headers=tenant.auth)
    assert r.json()["items"] == []
    async with db_of(relay).read() as session:
        (chat,) = (await session.scalars(select(Chat))).all()
        texts = [m.content for m in (await session.scalars(select(Message))).all()]
        turn = (await session.scalars(select(Turn))).one()
    assert chat.kind == "completion"
    assert texts == ["", ""]  # the question's place and the answer's, without their texts
    assert turn.request is None and turn.state == "completed"
    r = await tenant.http.get(f"/v1/chats/{chat.id}", headers=tenant.auth)
    assert r.status_code == 404
    r = await tenant.http.post(
        f"/v1/chats/{chat.id}/messages", json={"content": "sneak in"}, headers=tenant.auth
    )
    assert r.status_code == 404

    r = await tenant.http.put(
        f"/v1/admin/tenants/{tenant.id}/agent", json={"store_completions": True}, headers=admin()
    )
    assert r.status_code == 200, r.text
    await api.chat.completions.create(model=MODEL, messages=ask)
    r = await tenant.http.get("/v1/chats", headers=tenant.auth)
    (kept,) = r.json()["items"]
    assert kept["title"] == "secret question"
    r = await tenant.http.get(f"/v1/chats/{kept['id']}/messages", headers=tenant.auth)
    assert [(m["role"], m["content"]) for m in r.json()["items"]] == [
        ("user", "secret question"),
        ("assistant", "secret answer"),
    ]
