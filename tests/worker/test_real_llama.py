"""The worker against a real model server: llama.cpp's server (llama-cpp-python) serving
SmolLM2-135M-Instruct. What a fake upstream cannot show: how the real server streams, ends,
cuts, counts and fails. The fake stays for faults a real server cannot be made to produce."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relayline.protocol.generation import Generation
from relayline.testing import RelayServer, WsHarness
from relayline.worker.llm.base import ChatMessage, LLMError, StreamChunk
from relayline.worker.llm.openai_compat import OpenAICompatClient
from tests.fixtures import RelayFactory, Tenant, Tenants, Workers, admin, answers, post, until_event
from tests.worker.llama_server import LlamaServer, llama_server, missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

ANSWER_S = 60.0  # a 135M model on two cores answers in well under a second; CI may be slower


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with llama_server(tmp_path_factory.mktemp("llama")) as server:
        yield server


async def _agent(tenant: Tenant, **settings: object) -> None:
    r = await tenant.http.put(
        f"/v1/admin/tenants/{tenant.id}/agent", json=settings, headers=admin()
    )
    assert r.status_code == 200, r.text


async def _ask(
    relay: RelayServer, tenant: Tenant, chat: str, text: str, timeout: float = ANSWER_S
) -> dict[str, Any]:
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        turn_id = await post(tenant, chat, text)
        done = await until_event(ws, "message.completed", timeout, turn_id=turn_id)
    data: dict[str, Any] = done["data"]
    return data


async def test_an_answer_streams_and_is_stored_with_counted_usage(
    llama: LlamaServer, turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    await _agent(tenant, max_tokens=48, temperature=0)
    chat = await tenant.chat()
    worker = await workers.start(relay, llm_url=llama.base_url, llm_probe=True)
    llm = worker.model.inner
    assert isinstance(llm, OpenAICompatClient)
    # The probe recognised llama-cpp-python's server: one stream at a time, its tokenizer.
    assert (llm.upstream.server, llm.max_inflight) == ("llama-cpp-python", 1)
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        turn_id = await post(tenant, chat, "Name three colours.")
        deltas: list[str] = []
        while True:
            frame = await ws.recv(timeout=ANSWER_S)
            if frame.get("type") == "message.delta":
                deltas.append(frame["data"]["text"])
            elif frame.get("type") == "message.completed":
                break
    done = frame["data"]
    assert done["turn_id"] == turn_id
    assert done["content"] and done["content"] == "".join(deltas)
    assert len(deltas) > 1  # streamed token by token, not in one piece
    assert done["finish_reason"] in ("stop", "length")
    metrics = done["metrics"]
    # llama.cpp reports no usage when streaming: counted with its own tokenizer, and said so.
    assert metrics["usage_source"] == "counted"
    assert 0 < metrics["tokens_out"] <= 48 and metrics["tokens_in"] > 0
    (stored,) = await answers(tenant, chat)
    assert (stored["content"], stored["status"]) == (done["content"], "complete")


async def test_max_tokens_cuts_at_the_length_limit_and_says_so(
    llama: LlamaServer, turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    await _agent(tenant, max_tokens=5, temperature=0)
    chat = await tenant.chat()
    await workers.start(relay, llm_url=llama.base_url, llm_probe=True)
    done = await _ask(relay, tenant, chat, "Write a long story about a lighthouse keeper.")
    assert done["finish_reason"] == "length"
    assert done["metrics"]["tokens_out"] == 5
    (stored,) = await answers(tenant, chat)
    assert (stored["status"], stored["finish_reason"]) == ("complete", "length")


async def test_temperature_zero_is_repeatable_and_stop_sequences_end_the_answer(
    llama: LlamaServer, turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    await _agent(tenant, max_tokens=24, temperature=0)
    await workers.start(relay, llm_url=llama.base_url, llm_probe=True)
    question = "List the days of the week."
    first = await _ask(relay, tenant, await tenant.chat(), question)
    again = await _ask(relay, tenant, await tenant.chat(), question)
    text = str(first["content"])
    assert text == again["content"]  # greedy sampling: the settings reached the server
    words = text.split()
    assert len(words) >= 4, text
    stop = words[len(words) // 2]
    await _agent(tenant, max_tokens=24, temperature=0, stop=[stop])
    cut = await _ask(relay, tenant, await tenant.chat(), question)
    assert cut["finish_reason"] == "stop"
    assert stop not in str(cut["content"]) and text.startswith(str(cut["content"]).rstrip())


async def _stream(llm: OpenAICompatClient, prompt: str, tokens: int) -> list[StreamChunk]:
    got: list[StreamChunk] = []
    async for chunk in llm.stream(
        [ChatMessage("user", prompt)],
        [],
        model="smollm2",
        options=Generation(max_tokens=tokens, temperature=0),
    ):
        got.append(chunk)
    return got


async def test_a_second_request_cuts_the_first_unless_the_worker_knows_the_slots(
    llama: LlamaServer,
) -> None:
    """llama-cpp-python's server interrupts a running stream when another request arrives,
    ending it with [DONE] and no finish_reason: never stored complete. Knowing the server's one
    slot, the worker never starts the second before the first is done."""
    prompt = "Write a long story about a lighthouse keeper."
    async with OpenAICompatClient(llama.base_url, max_inflight=2) as naive:
        first = asyncio.create_task(_stream(naive, prompt, 200))
        await asyncio.sleep(0.3)  # the first is generating
        second = await _stream(naive, "Say hi.", 4)
        with pytest.raises(LLMError) as cut:
            await first
    assert cut.value.category == "incomplete"
    assert any(c.finish_reason for c in second)

    async with OpenAICompatClient(llama.base_url, max_inflight=2) as known:
        assert (await known.probe()).slots == 1
        both = await asyncio.gather(_stream(known, prompt, 60), _stream(known, "Say hi.", 4))
    for chunks in both:
        assert [c.finish_reason for c in chunks if c.finish_reason] in (["stop"], ["length"])


async def test_stop_ends_the_upstream_request_and_the_next_turn_is_answered(
    llama: LlamaServer, turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    await _agent(tenant, max_tokens=400, temperature=0)
    chat = await tenant.chat()
    worker = await workers.start(relay, llm_url=llama.base_url, llm_probe=True)
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        turn_id = await post(tenant, chat, "Write a very long story about the sea.")
        await until_event(ws, "message.delta", ANSWER_S, turn_id=turn_id)
        r = await tenant.http.post(f"/v1/chats/{chat}/cancel", headers=tenant.auth)
        assert r.status_code in (200, 202), r.text
        await until_event(ws, "turn.cancelled", ANSWER_S, turn_id=turn_id)
    assert worker.model.stopped_early == 1
    (stopped,) = await answers(tenant, chat)
    assert stopped["status"] == "cancelled" and stopped["content"]
    # The server is free again (it stopped generating): a short question is answered now.
    await _agent(tenant, max_tokens=8, temperature=0)
    done = await _ask(relay, tenant, chat, "Say hi.", timeout=20)
    assert done["content"]


async def test_an_upstream_killed_mid_answer_fails_the_turn_and_keeps_the_text(
    turn_relay: RelayFactory,
    tenants: Tenants,
    workers: Workers,
    tmp_path: Path,
) -> None:
    relay = await turn_relay(delta_coalesce_ms=0)
    tenant = await tenants.new(relay)
    await _agent(tenant, max_tokens=400, temperature=0)
    chat = await tenant.chat()
    with llama_server(tmp_path) as doomed:
        await workers.start(relay, llm_url=doomed.base_url, llm_probe=True, llm_max_attempts=1)
        async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            turn_id = await post(tenant, chat, "Write a very long story about the sea.")
            await until_event(ws, "message.delta", ANSWER_S, turn_id=turn_id)
            doomed.kill()
            failed = await until_event(ws, "turn.failed", ANSWER_S, turn_id=turn_id)
    assert failed["data"]["category"] == "upstream_5xx"
    (kept,) = await answers(tenant, chat)
    assert kept["status"] == "failed" and kept["content"]
    with contextlib.suppress(ProcessLookupError):
        doomed.kill()
