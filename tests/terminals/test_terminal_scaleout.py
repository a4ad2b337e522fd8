"""Two relay instances sharing PostgreSQL and Redis, a worker running terminals connected to
one of them: every step of a terminal works through the other one too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from relayline.testing import RelayServer, WsHarness
from tests.conftest import SettingsFactory
from tests.fixtures import KEY_ID, SECRET, Workers, eventually, new_tenant
from tests.scaleout.test_shared_instances import REDIS, _redis_up, two_instances
from tests.terminals.helpers import output_until, snapshot_of, terminal_worker_settings

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}"),
]


@pytest.fixture
async def pair(
    make_settings: SettingsFactory, own_pg_url: str
) -> AsyncIterator[tuple[RelayServer, RelayServer]]:
    async with two_instances(
        make_settings,
        database_url=own_pg_url,
        worker_keys=[f"{KEY_ID}:{SECRET}"],
        terminal_detach_grace_s=0.2,
    ) as relays:
        yield relays


async def test_a_terminal_through_the_instance_its_worker_is_not_on(
    pair: tuple[RelayServer, RelayServer], workers: Workers
) -> None:
    a, b = pair
    await workers.start(a, **terminal_worker_settings())
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        tenant = await new_tenant(b, http)

        async def offered() -> bool:
            r = await http.get("/v1/terminals", headers=tenant.auth)
            return "cat" in r.json()["programs"]

        await eventually(offered)  # b learns a's hosts from a's report
        chat = await tenant.chat()
        r = await http.post(
            "/v1/terminals",
            json={"program": "cat", "cols": 80, "rows": 24, "chat_id": chat},
            headers=tenant.auth,
        )
        assert r.status_code == 201, r.text
        terminal = r.json()["id"]
        topic = f"term:{terminal}"
        reader = (
            await http.post(
                "/v1/sessions", json={"chat_ids": [chat], "terminals": "read"}, headers=tenant.auth
            )
        ).json()["token"]
        async with (
            WsHarness(b, token=tenant.key, auth="header") as on_b,
            WsHarness(a, token=reader, auth="header") as on_a,
        ):
            await on_b.subscribe(topic)  # the ACL of b finds the session in the directory
            await snapshot_of(on_b, topic)  # the redraw went to a, the snapshot came back
            await on_a.subscribe(topic)
            await on_b.send_op("term.input", topic=topic, data="typed on b\n")
            assert "typed on b" in await output_until(on_b, topic, "typed on b\r\ntyped on b")
            assert "typed on b" in await output_until(on_a, topic, "typed on b\r\ntyped on b")
            await on_b.send_op("term.resize", topic=topic, cols=100, rows=30)

            async def resized() -> bool:
                r = await http.get(f"/v1/terminals/{terminal}", headers=tenant.auth)
                return (r.json()["cols"], r.json()["rows"]) == (100, 30)

            await eventually(resized)
            listed = (await http.get("/v1/terminals", headers=tenant.auth)).json()["items"]
            assert [t["id"] for t in listed] == [terminal]
            r = await http.delete(f"/v1/terminals/{terminal}", headers=tenant.auth)
            assert r.status_code == 202
            exited = await on_b.expect("term.exited", 10, topic=topic)
            assert exited["data"]["reason"] == "terminated"
        r = await http.get(f"/v1/terminals/{terminal}", headers=tenant.auth)
        assert r.json()["state"] == "exited"


async def test_a_worker_that_moves_to_another_instance_takes_its_sessions_along(
    pair: tuple[RelayServer, RelayServer], workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relayline.terminals import sessions

    monkeypatch.setattr(sessions, "DETACH_MARGIN_S", 0.3)
    a, b = pair
    worker = await workers.start(f"{a.url},{b.url}", **terminal_worker_settings())
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        tenant = await new_tenant(a, http)

        async def offered() -> bool:
            r = await http.get("/v1/terminals", headers=tenant.auth)
            return "cat" in r.json()["programs"]

        await eventually(offered)
        r = await http.post(
            "/v1/terminals", json={"program": "cat", "cols": 80, "rows": 24}, headers=tenant.auth
        )
        terminal = r.json()["id"]
        topic = f"term:{terminal}"
        # a drops the worker's connection (say, a network blip); the worker goes on to b.
        link = next(iter(a.app.http.state.relay.dispatcher.pool.workers.values()))
        await link._close(1012, "moving")
        state_b = b.app.http.state.relay.terminals

        async def adopted_by_b() -> bool:
            return state_b.local.holds(terminal) is not None

        await eventually(adopted_by_b, 15)
        # a's detach grace ends: the session lives on b, so a forgets it without ending it.
        await asyncio.sleep(a.settings.terminal_detach_grace_s + 0.5)
        async with WsHarness(a, token=tenant.key, auth="header") as on_a:
            await on_a.subscribe(topic)
            await on_a.send_op("term.input", topic=topic, data="still here\n")
            assert "still here" in await output_until(on_a, topic, "still here\r\nstill here")
            assert not [f for f in on_a.frames if f.get("type") == "term.exited"]
        body = (await http.get(f"/v1/terminals/{terminal}", headers=tenant.auth)).json()
        assert body["state"] == "running"
        assert worker.connection.relay == b.url
