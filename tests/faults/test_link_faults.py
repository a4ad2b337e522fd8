"""Network faults between a worker and the relay, and between a client and the relay, through a
fault-injecting TCP proxy (tests/faults/proxy.py): resets, half-open links that never send a
FIN, stalls and added latency, mid-answer. After each, what the client rendered is checked
against the store (tests/faults/checker.py): nothing lost, nothing doubled, every turn ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from relayline.client import Backoff, RelayClient, Reset
from relayline.testing import WsHarness
from relayline.testing.server import RelayServer
from tests.faults.checker import Rendered, check
from tests.faults.proxy import FaultProxy
from tests.fixtures import (
    RelayFactory,
    Tenants,
    Workers,
    dispatcher_of,
    eventually,
    post,
    until_event,
)

pytestmark = pytest.mark.timeout(60)

# A worker that reports often and pings the relay often, so faults are noticed in seconds.
QUICK_WORKER = {"local_model_delay_s": 0.03, "state_interval_s": 0.3, "relay_ping_s": 0.5}
QUESTION = "tell me a long story about the sea and the ships on it"


@pytest.fixture
async def proxies() -> AsyncIterator[list[FaultProxy]]:
    made: list[FaultProxy] = []
    yield made
    for proxy in made:
        await proxy.close()


async def proxy_to(relay: RelayServer, made: list[FaultProxy]) -> FaultProxy:
    proxy = await FaultProxy(relay.port).start()
    made.append(proxy)
    return proxy


def db_of(relay: RelayServer):  # type: ignore[no-untyped-def]
    return relay.app.http.state.relay.db


def rendered_from(frames: list[dict[str, object]], chat_id: str) -> Rendered:
    rendered = Rendered()
    for frame in frames:
        if frame.get("topic") == f"chat:{chat_id}" and isinstance(frame.get("data"), dict):
            rendered.take(str(frame["type"]), frame["data"])  # type: ignore[arg-type]
    return rendered


async def answer_through_a_fault(
    relay: RelayServer, tenants: Tenants, fault: str, proxy: FaultProxy
) -> tuple[float, dict[str, object]]:
    """Post, let the answer start streaming, inject ``fault`` on the worker's link, and wait
    for the answer; returns the time to recover and the completion event."""
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        turn_id = await post(tenant, chat, QUESTION)
        await until_event(ws, "message.delta", turn_id=turn_id)
        injected = time.monotonic()
        getattr(proxy, fault)()
        done = await until_event(ws, "message.completed", timeout=30, turn_id=turn_id)
        recovered = time.monotonic() - injected
        verdict = await check(db_of(relay), chat, rendered_from(ws.frames, chat))
    assert verdict.ok, verdict
    assert verdict.stored == 2
    return recovered, done


async def test_a_worker_link_reset_mid_answer_is_retried_and_answered_once(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, proxies: list[FaultProxy]
) -> None:
    relay = await turn_relay(turn_lease_s=2.0)
    proxy = await proxy_to(relay, proxies)
    await workers.start(proxy.url, **QUICK_WORKER)
    _, done = await answer_through_a_fault(relay, tenants, "reset_all", proxy)
    assert done["data"]["finish_reason"] == "stop"  # type: ignore[index]
    assert len(proxy.links) == 2  # the worker came back on a new connection


async def test_a_half_open_worker_link_is_dropped_and_its_turn_answered_by_the_worker_back(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, proxies: list[FaultProxy]
) -> None:
    # No FIN ever comes: the relay notices the silence (a whole lease without a frame), closes
    # the link and queues the turn again; the worker notices its unanswered pings, reconnects,
    # and answers it.
    relay = await turn_relay(turn_lease_s=1.5)
    proxy = await proxy_to(relay, proxies)
    await workers.start(proxy.url, **QUICK_WORKER)
    recovered, _ = await answer_through_a_fault(relay, tenants, "blackhole_all", proxy)
    assert recovered < 20
    dispatcher = dispatcher_of(relay)
    await eventually(lambda: len(dispatcher.workers) == 1)
    (link,) = dispatcher.workers.values()
    assert not link.closed


async def test_a_stalled_and_slow_worker_link_delays_the_answer_and_loses_nothing(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, proxies: list[FaultProxy]
) -> None:
    relay = await turn_relay(turn_lease_s=5.0)
    proxy = await proxy_to(relay, proxies)
    proxy.latency_s = 0.02
    # Pings far apart: a one-second stall is within what the worker tolerates.
    await workers.start(proxy.url, **{**QUICK_WORKER, "relay_ping_s": 5.0})

    async def stall_then_resume() -> None:
        proxy.stall_all()
        await asyncio.sleep(1.0)  # shorter than the lease: the attempt goes on
        proxy.resume_all()

    tasks: set[asyncio.Task[None]] = set()

    def stall() -> None:
        tasks.add(asyncio.ensure_future(stall_then_resume()))

    proxy.stall_now = stall  # type: ignore[attr-defined]
    await answer_through_a_fault(relay, tenants, "stall_now", proxy)
    await asyncio.gather(*tasks)
    assert len(proxy.links) == 1  # the same connection throughout


async def test_a_client_link_reset_stalled_and_slowed_mid_answer_renders_what_is_stored(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers, proxies: list[FaultProxy]
) -> None:
    relay = await turn_relay()
    await workers.start(relay, local_model_delay_s=0.03)
    proxy = await proxy_to(relay, proxies)
    proxy.latency_s = 0.01
    tenant = await tenants.new(relay)
    chat_id = await tenant.chat()
    rendered = Rendered()
    backoff = Backoff(base_s=0.05, max_s=0.2)
    async with RelayClient(proxy.url, tenant.key, backoff=backoff) as client:
        chat = client.chat(chat_id)
        async with await chat.events() as events:
            answer = await chat.send(QUESTION)
            faults = iter(["reset_all", "stall", "reset_all"])
            async with asyncio.timeout(30):
                async for item in events:
                    if isinstance(item, Reset):
                        rendered.take_snapshot(await chat.messages())
                        continue
                    rendered.take(item.type, item.data)
                    if item.type == "message.completed":
                        break
                    if item.type == "message.delta" and (fault := next(faults, None)):
                        if fault == "stall":
                            proxy.stall_all()
                            await asyncio.sleep(0.5)
                            proxy.resume_all()
                        else:
                            getattr(proxy, fault)()
            assert await answer.text()
    verdict = await check(db_of(relay), chat_id, rendered)
    assert verdict.ok, verdict
    assert verdict.stored == 2
    assert len(proxy.links) >= 3  # two resets: the client came back twice


async def test_a_half_open_client_socket_is_dropped_by_the_relays_heartbeat(
    turn_relay: RelayFactory, tenants: Tenants, proxies: list[FaultProxy]
) -> None:
    relay = await turn_relay(heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0)
    proxy = await proxy_to(relay, proxies)
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    hub = relay.app.http.state.relay.hub
    async with WsHarness(proxy.url, token=tenant.key, topics=[f"chat:{chat}"]):
        await eventually(lambda: hub.subscriber_count() == 1)
        proxy.blackhole_all()
        # The relay hears nothing back: it frees the socket and its subscription on its own.
        await eventually(lambda: hub.subscriber_count() == 0, timeout=10)
