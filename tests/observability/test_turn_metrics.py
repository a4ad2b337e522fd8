"""/metrics answers "is anyone waiting on an answer, why, and since when?": turn counters and
histograms by outcome, queue and worker gauges, store and Redis figures."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from relayline.testing import RelayServer, WsHarness
from relayline.turns import figures
from tests.conftest import ADMIN_KEY
from tests.fixtures import (
    FakeWorker,
    RelayFactory,
    Tenants,
    Workers,
    dispatcher_of,
    post,
    until_event,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(relay: RelayServer) -> Samples:
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    found: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_turn_outcomes_are_counted_and_timed(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    before = await scrape(relay)
    await workers.start(relay)
    async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
        done = await post(tenant, chat, "hello")
        await until_event(ws, "message.completed", turn_id=done)
    async with (
        FakeWorker(relay, "failing") as fake,
        WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws,
    ):
        await workers.close()  # only the scripted worker is left to take the next turn
        failed = await post(tenant, chat, "fail please")
        assigned = await fake.expect("turn.assigned", 10)
        await fake.send(
            {
                "type": "turn.failed",
                "turn_id": failed,
                "attempt": assigned["attempt"],
                "category": "upstream_5xx",
                "detail": "model down",
            }
        )
        await until_event(ws, "turn.failed", turn_id=failed)
    after = await scrape(relay)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("relayline_turns_started_total") == 2
    assert grew("relayline_turns_ended_total", outcome="completed") == 1
    assert grew("relayline_turns_ended_total", outcome="failed") == 1
    assert grew("relayline_turns_failed_total", category="upstream_5xx") == 1
    assert grew("relayline_turn_first_token_seconds_count", outcome="completed") == 1
    assert grew("relayline_turn_duration_seconds_count", outcome="completed") == 1
    assert grew("relayline_turn_duration_seconds_count", outcome="failed") == 1
    assert grew("relayline_store_statement_seconds_count", kind="insert") >= 2


async def test_queue_and_worker_gauges(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    dispatcher = dispatcher_of(relay)
    for _ in range(3):
        await post(tenant, await tenant.chat(), "anyone there?")
    await asyncio.sleep(1.1)
    await figures.report(dispatcher.ctx, dispatcher.pool)
    waiting = await scrape(relay)
    assert value(waiting, "relayline_turns_queued") == 3
    assert value(waiting, "relayline_turn_oldest_queued_seconds") >= 1
    assert value(waiting, "relayline_queue_figures_leader") == 1
    assert value(waiting, "relayline_workers_connected") == 0

    async with FakeWorker(relay, "holder", capacity=2) as fake:
        await fake.expect("turn.assigned", 10)
        await fake.expect("turn.assigned", 10)
        await figures.report(dispatcher.ctx, dispatcher.pool)
        busy = await scrape(relay)
    assert value(busy, "relayline_turns_queued") == 1
    assert value(busy, "relayline_workers_connected") == 1
    assert value(busy, "relayline_worker_capacity") == 2
    assert value(busy, "relayline_worker_inflight") == 2
