"""Operator API for turns: the queue and the last hour's outcomes (``/v1/admin/turns/summary``),
and the latest turns in a state (``/v1/admin/turns``), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import event, update

from relayline.clock import now_ms
from relayline.store import migrate, turn_reports
from relayline.store.database import Database
from relayline.store.models import Turn
from relayline.testing import RelayServer, WsHarness
from tests.conftest import SettingsFactory, admin_headers, assert_error, bearer
from tests.fixtures import FakeWorker, RelayFactory, Tenant, Tenants, post, until_event

UNKNOWN_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # well formed, never created
SUMMARY = "/v1/admin/turns/summary"
TURNS = "/v1/admin/turns"


@pytest.fixture
async def relay(turn_relay: RelayFactory, own_db_url: str) -> RelayServer:
    # A database of this test's own: the counts are exact only when no other test's turns
    # share it.
    return await turn_relay(database_url=own_db_url)


@pytest.fixture
async def tenant(relay: RelayServer, tenants: Tenants) -> Tenant:
    return await tenants.new(relay, "acme")


async def get(tenant: Tenant, path: str, **params: Any) -> dict[str, Any]:
    r = await tenant.http.get(path, params=params, headers=admin_headers())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def db_of(relay: RelayServer) -> Database:
    db: Database = relay.app.http.state.relay.db
    return db


class Script:
    """A tenant's chats watched over WebSocket while a fake worker answers as told."""

    def __init__(self, tenant: Tenant, ws: WsHarness, fake: FakeWorker) -> None:
        self.tenant = tenant
        self.ws = ws
        self.fake = fake

    async def assigned(self, turn_id: str) -> None:
        frame = await self.fake.expect("turn.assigned")
        assert frame["turn_id"] == turn_id

    async def fail(self, turn_id: str, category: str, detail: str = "it broke") -> None:
        await self.fake.send(
            {"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "partial "}
        )
        await self.fake.send(
            {
                "type": "turn.failed",
                "turn_id": turn_id,
                "attempt": 1,
                "category": category,
                "detail": detail,
            }
        )
        await until_event(self.ws, "turn.failed", turn_id=turn_id)

    async def complete(self, turn_id: str) -> None:
        await self.fake.send({"type": "turn.delta", "turn_id": turn_id, "attempt": 1, "text": "ok"})
        await self.fake.send({"type": "turn.done", "turn_id": turn_id, "attempt": 1, "usage": {}})
        await until_event(self.ws, "message.completed", turn_id=turn_id)


async def chats(tenant: Tenant, count: int) -> list[str]:
    return [await tenant.chat() for _ in range(count)]


@asynccontextmanager
async def scripted(
    relay: RelayServer, tenant: Tenant, chat_ids: list[str], capacity: int = 1
) -> AsyncIterator[Script]:
    async with (
        WsHarness(relay, token=tenant.key, topics=[f"chat:{c}" for c in chat_ids]) as ws,
        FakeWorker(relay, "fake-1", capacity=capacity) as fake,
    ):
        yield Script(tenant, ws, fake)


# The summary


async def test_an_idle_relay_has_nothing_waiting(tenant: Tenant) -> None:
    assert await get(tenant, SUMMARY) == {
        "queued": 0,
        "oldest_queued_s": None,
        "running": 0,
        "failed_last_hour": {},
        "completed_last_hour": 0,
        "cancelled_last_hour": 0,
    }


async def test_a_turn_nobody_takes_is_queued_since_its_post(tenant: Tenant) -> None:
    chat = await tenant.chat()
    await post(tenant, chat, "anyone there?")
    await asyncio.sleep(0.3)

    summary = await get(tenant, SUMMARY)
    assert summary["queued"] == 1 and summary["running"] == 0
    assert 0.3 <= summary["oldest_queued_s"] < 30


async def test_the_summary_counts_the_queue_and_the_last_hours_outcomes(
    relay: RelayServer, tenant: Tenant
) -> None:
    c = await chats(tenant, 6)
    async with scripted(relay, tenant, c) as s:
        t0 = await post(tenant, c[0], "one")
        await s.assigned(t0)
        await s.fail(t0, "timeout")
        t1 = await post(tenant, c[1], "two")
        await s.assigned(t1)
        await s.complete(t1)
        t2 = await post(tenant, c[2], "three")
        await s.assigned(t2)  # runs, and holds the worker's only slot
        t3 = await post(tenant, c[3], "four")
        await post(tenant, c[4], "five")
        r = await tenant.http.post(f"/v1/chats/{c[4]}/cancel", headers=tenant.auth)
        assert r.json()["cancelled"] is True, r.text
        await until_event(s.ws, "turn.cancelled")

        assert await get(tenant, SUMMARY) == {
            "queued": 1,
            "oldest_queued_s": pytest.approx(0, abs=30),
            "running": 1,
            "failed_last_hour": {"timeout": 1},
            "completed_last_hour": 1,
            "cancelled_last_hour": 1,
        }

        await s.fail(t2, "upstream_5xx")
        await s.assigned(t3)
        await s.fail(t3, "timeout")
        summary = await get(tenant, SUMMARY)
    assert summary["queued"] == 0 and summary["oldest_queued_s"] is None
    assert summary["running"] == 0
    # Most frequent first.
    assert list(summary["failed_last_hour"].items()) == [("timeout", 2), ("upstream_5xx", 1)]

    # A failure older than the hour is no longer counted (and is still listed).
    async with db_of(relay).write() as session:
        await session.execute(
            update(Turn).where(Turn.id == t0).values(finished_at=now_ms() - 2 * 3_600_000)
        )
    summary = await get(tenant, SUMMARY)
    assert summary["failed_last_hour"] == {"timeout": 1, "upstream_5xx": 1}
    assert t0 in [t["id"] for t in (await get(tenant, TURNS))["items"]]


# The list


async def test_failed_turns_come_newest_first_with_why_and_timings(
    relay: RelayServer, tenant: Tenant
) -> None:
    c = await chats(tenant, 3)
    async with scripted(relay, tenant, c) as s:
        r = await tenant.http.post(
            f"/v1/chats/{c[0]}/messages",
            json={"content": "trace me"},
            headers={**tenant.auth, "X-Request-ID": "req-operator-0001"},
        )
        first = r.json()["turn_id"]
        await s.assigned(first)
        await s.fail(first, "upstream_4xx", "model server said 400: unknown model")
        second = await post(tenant, c[1], "and me")
        await s.assigned(second)
        await s.fail(second, "timeout", "no token in 30 s")
        done = await post(tenant, c[2], "fine")
        await s.assigned(done)
        await s.complete(done)

    body = await get(tenant, TURNS)
    assert [t["id"] for t in body["items"]] == [second, first]
    assert body["next_before"] is None
    item = body["items"][1]
    assert item["chat_id"] == c[0]
    assert item["tenant_id"] == tenant.id and item["tenant_name"] == "acme"
    assert item["state"] == "failed" and item["attempt"] == 1
    assert item["worker_id"] == "fake-1"
    assert item["correlation_id"] == "req-operator-0001"
    assert item["error_category"] == "upstream_4xx"
    assert item["error_detail"] == "model server said 400: unknown model"
    assert item["created_at"] <= item["started_at"] <= item["finished_at"]
    timings = item["timings"]
    assert timings["queued_ms"] == item["started_at"] - item["created_at"]
    assert timings["run_ms"] == item["finished_at"] - item["started_at"]
    assert isinstance(timings["first_token_ms"], int) and timings["first_token_ms"] >= 0

    completed = await get(tenant, TURNS, state="completed")
    assert [t["id"] for t in completed["items"]] == [done]
    assert completed["items"][0]["error_category"] is None


async def test_queued_turns_have_no_timings_yet(tenant: Tenant) -> None:
    turn_id = await post(tenant, await tenant.chat(), "waiting")

    (item,) = (await get(tenant, TURNS, state="queued"))["items"]
    assert item["id"] == turn_id and item["attempt"] == 0
    assert item["started_at"] is None and item["worker_id"] is None
    assert item["timings"] == {"queued_ms": None, "run_ms": None, "first_token_ms": None}
    assert (await get(tenant, TURNS))["items"] == []  # none failed


async def test_the_list_filters_by_tenant(
    relay: RelayServer, tenant: Tenant, tenants: Tenants
) -> None:
    other = await tenants.new(relay, "globex")
    mine, theirs = await tenant.chat(), await other.chat()
    async with (
        WsHarness(relay, token=tenant.key, topics=[f"chat:{mine}"]) as ws_mine,
        WsHarness(relay, token=other.key, topics=[f"chat:{theirs}"]) as ws_theirs,
        FakeWorker(relay, "fake-1", capacity=2) as fake,
    ):
        for who, chat, ws in ((tenant, mine, ws_mine), (other, theirs, ws_theirs)):
            turn_id = await post(who, chat, "fail please")
            await Script(who, ws, fake).assigned(turn_id)
            await Script(who, ws, fake).fail(turn_id, "internal")

    everyone = await get(tenant, TURNS)
    assert {t["tenant_name"] for t in everyone["items"]} == {"acme", "globex"}
    only_other = await get(tenant, TURNS, tenant_id=other.id)
    assert [(t["tenant_id"], t["chat_id"]) for t in only_other["items"]] == [(other.id, theirs)]
    only_mine = await get(tenant, TURNS, tenant_id=tenant.id)
    assert [t["chat_id"] for t in only_mine["items"]] == [mine]
    assert (await get(tenant, TURNS, tenant_id=tenant.id, state="queued"))["items"] == []

    r = await tenant.http.get(TURNS, params={"tenant_id": UNKNOWN_ID}, headers=admin_headers())
    assert_error(r, 404, "not_found")


async def test_the_list_pages_with_before(relay: RelayServer, tenant: Tenant) -> None:
    c = await chats(tenant, 5)
    async with scripted(relay, tenant, c, capacity=5) as s:
        failed = []
        for chat in c:
            turn_id = await post(tenant, chat, "fail")
            await s.assigned(turn_id)
            await s.fail(turn_id, "timeout")
            failed.append(turn_id)

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    pages = 0
    while True:
        body = await get(tenant, TURNS, **params)
        assert len(body["items"]) <= 2
        seen += [t["id"] for t in body["items"]]
        pages += 1
        if body["next_before"] is None:
            break
        assert body["next_before"] == body["items"][-1]["id"]
        params["before"] = body["next_before"]
        assert pages < 10, "paging does not end"
    assert seen == failed[::-1]
    assert pages == 3  # 2 + 2 + 1


# Who may ask, and what is refused


@pytest.mark.parametrize("path", [SUMMARY, TURNS])
async def test_only_the_admin_key_may_read_turns(tenant: Tenant, path: str) -> None:
    assert_error(await tenant.http.get(path), 401, "unauthorized")
    assert_error(await tenant.http.get(path, headers=bearer("not-a-key")), 401, "unauthorized")
    assert_error(await tenant.http.get(path, headers=tenant.auth), 403, "forbidden")


@pytest.mark.parametrize(
    "params",
    [
        {"state": "exploded"},
        {"state": ""},
        {"limit": 0},
        {"limit": 1001},
        {"limit": 201},  # above RELAYLINE_MAX_PAGE_SIZE (200)
        {"limit": "ten"},
        {"before": "not an id!"},
        {"before": "0" * 65},
        {"tenant_id": ""},
        {"tenant_id": "x\x00y"},
        {"tenant_id": "../tenants"},
    ],
)
async def test_bad_parameters_are_422(tenant: Tenant, params: dict[str, Any]) -> None:
    r = await tenant.http.get(TURNS, params=params, headers=admin_headers())
    assert_error(r, 422, "validation_error")


# The queries stay on indexes


async def test_the_reports_never_scan_every_turn(make_settings: SettingsFactory) -> None:
    """On SQLite's plans: every read of ``turns`` is a search of an index, not a table scan
    (the summary and the pages must not grow with all the turns ever stored)."""
    db = Database(make_settings())
    try:
        await migrate.upgrade(db.engine)
        statements: list[tuple[str, Any]] = []

        def record(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
            if "turns" in sql:
                statements.append((sql, params))

        event.listen(db.engine.sync_engine, "before_cursor_execute", record)
        async with db.read() as session:
            await turn_reports.summary(session, since=now_ms() - 3_600_000)
            for tenant_id in (None, UNKNOWN_ID):
                for before in (None, UNKNOWN_ID):
                    await turn_reports.list_turns(
                        session, state="failed", limit=50, tenant_id=tenant_id, before=before
                    )
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
        assert len(statements) == 7
        async with db.engine.connect() as conn:
            for sql, params in statements:
                plan = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)).all()
                steps = [str(row[-1]) for row in plan]
                on_turns = [s for s in steps if " turns " in f"{s} "]
                assert on_turns, (sql, steps)
                assert all(s.startswith("SEARCH") for s in on_turns), (sql, steps)
                if "finished_at >=" in sql:  # the last hour: a range, not every ended turn
                    assert any("finished_at>" in s for s in on_turns), (sql, steps)
                if "turns.tenant_id =" in sql:
                    assert any("ix_turns_tenant_id_state_id" in s for s in on_turns), steps
                # Pages come in index order, not sorted afterwards.
                assert not any("TEMP B-TREE FOR ORDER BY" in s for s in steps), (sql, steps)
    finally:
        await db.dispose()
