"""Two relay instances sharing PostgreSQL and Redis, the model's worker connected to one of
them: completions asked of the other are answered, streamed and cancelled all the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from relayline.testing import RelayServer
from tests.conftest import SettingsFactory
from tests.fixtures import KEY_ID, SECRET, Workers, eventually, new_tenant
from tests.scaleout.test_shared_instances import REDIS, _redis_up, two_instances
from tests.worker.llm_fake_upstream import FakeUpstream, answer

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}"),
]
MODEL = "m1"


@pytest.fixture
async def pair(
    make_settings: SettingsFactory, own_pg_url: str
) -> AsyncIterator[tuple[RelayServer, RelayServer]]:
    async with two_instances(
        make_settings,
        database_url=own_pg_url,
        worker_keys=[f"{KEY_ID}:{SECRET}"],
        max_concurrent_completions=1,
    ) as relays:
        yield relays


async def test_a_completion_through_the_instance_its_worker_is_not_on(
    pair: tuple[RelayServer, RelayServer], workers: Workers
) -> None:
    a, b = pair
    upstream = FakeUpstream()
    upstream.play(answer(["Far", " away"], delay=0.05))
    try:
        await workers.start(a, llm_url=await upstream.start(), model=MODEL)
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
            tenant = await new_tenant(b, http)
        on_b = openai.AsyncOpenAI(base_url=f"{b.url}/v1", api_key=tenant.key, max_retries=0)
        on_a = openai.AsyncOpenAI(base_url=f"{a.url}/v1", api_key=tenant.key, max_retries=0)
        try:

            async def listed() -> bool:
                return [m.id for m in (await on_b.models.list()).data] == [MODEL]

            await eventually(listed)  # b learns a's workers from a's report
            stream = await on_b.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "Far away"
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
            # The tenant's cap counts over both instances: one in progress on b, none on a.
            upstream.play(answer(["slow"], delay=2.0))
            first = asyncio.ensure_future(
                on_b.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "x"}]
                )
            )
            await eventually(lambda: upstream.hits == 2)
            with pytest.raises(openai.RateLimitError):
                await on_a.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "y"}]
                )
            done = await asyncio.wait_for(first, 20)
            assert done.choices[0].message.content == "slow"
        finally:
            await on_a.close()
            await on_b.close()
    finally:
        await upstream.close()
