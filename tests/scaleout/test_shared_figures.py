"""With several instances the shared queue figures are reported once: summed across instances
they are the true queue, not a multiple of it (relays as separate processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.scaleout.cluster import ADMIN_KEY, Cluster, RelayProcess, post
from tests.scaleout.test_shared_instances import REDIS, _redis_up

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}"),
]


@pytest.fixture
async def cluster(tmp_path: Path, own_pg_url: str) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path, own_pg_url)
    try:
        yield made
    finally:
        await made.close()


async def gauges(relay: RelayProcess) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
        if not sample.labels
    }


async def test_queue_depth_summed_across_instances_is_not_doubled(cluster: Cluster) -> None:
    relays = await cluster.start_relays(2)
    key = await cluster.tenant_key(relays[0])
    for i in range(3):
        relay = relays[i % 2]
        await post(relay, key, await cluster.chat(relay, key), "waiting")
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        seen = [await gauges(relay) for relay in relays]
        queued = sum(g.get("relayline_turns_queued", 0) for g in seen)
        leaders = sum(g.get("relayline_queue_figures_leader", 0) for g in seen)
        if queued == 3 and leaders == 1:
            break
        assert asyncio.get_running_loop().time() < deadline, (queued, leaders)
        await asyncio.sleep(0.5)
    # One instance reports the queue, the other 0; the oldest turn's age comes from one only.
    assert sorted(g.get("relayline_turns_queued", 0) for g in seen) == [0, 3]
    assert sorted(g.get("relayline_turn_oldest_queued_seconds", 0) > 0 for g in seen) == [
        False,
        True,
    ]
