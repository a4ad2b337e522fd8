"""Claims side by side on PostgreSQL, one after another on SQLite (relayline.turns.claims):
every turn is answered once, in order within its chat, and no worker gets more turns than its
capacity."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relayline.store import turn_queue
from relayline.store.database import Database
from relayline.store.turns import Assignment
from relayline.testing import WsHarness
from relayline.turns.claims import PARALLEL_CLAIMS
from relayline.turns.worker_link import WorkerLink
from tests.fixtures import RelayFactory, Tenants, Workers, answers, completions, post

CHATS = 8
QUESTIONS = 2
CAPACITY = 3


class ClaimSpy:
    """Counts the claims running at once (each held a little longer, so overlaps show)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.running = 0
        self.peak = 0
        self.claimed = 0
        self._claim = turn_queue.claim_next
        monkeypatch.setattr(turn_queue, "claim_next", self.claim_next)

    async def claim_next(
        self, db: Database, worker_id: str, *args: Any, **kwargs: Any
    ) -> Assignment | None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0.02)
            found = await self._claim(db, worker_id, *args, **kwargs)
        finally:
            self.running -= 1
        self.claimed += found is not None
        return found


@pytest.mark.timeout(90)
async def test_queued_turns_are_claimed_side_by_side_on_postgres_only(
    turn_relay: RelayFactory,
    tenants: Tenants,
    workers: Workers,
    own_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = ClaimSpy(monkeypatch)
    # A database of its own: turns other tests left queued would be claimed too.
    relay = await turn_relay(database_url=own_db_url)
    tenant = await tenants.new(relay)
    chats = [await tenant.chat() for _ in range(CHATS)]
    topics = [f"chat:{chat}" for chat in chats]
    async with WsHarness(relay, token=tenant.key, topics=topics) as ws:
        # Queued before any worker exists: the claims start together when it connects.
        asked: dict[str, list[tuple[str, str]]] = {chat: [] for chat in chats}
        for n in range(QUESTIONS):
            for chat in chats:
                question = f"question {n} in {chat}"
                asked[chat].append((await post(tenant, chat, question), question))
        worker = await workers.start(relay, worker_capacity=CAPACITY, local_model_delay_s=0.01)
        turn_ids = [turn_id for chat in chats for turn_id, _ in asked[chat]]
        done = await completions(ws, *turn_ids, timeout=60)
        for topic in topics:
            ws.assert_no_duplicates(topic)
    assert set(done) == set(turn_ids)
    assert spy.claimed == len(turn_ids)
    # Never more turns at once than the worker's capacity, even with claims side by side.
    assert worker.model.max_active <= CAPACITY
    if own_db_url.startswith("sqlite"):
        assert spy.peak == 1
    else:
        assert 1 < spy.peak <= min(PARALLEL_CLAIMS, CAPACITY)
    # Within each chat, its questions were answered in order, each once.
    for chat in chats:
        stored = await answers(tenant, chat)
        assert [a["turn_id"] for a in stored] == [turn_id for turn_id, _ in asked[chat]]
        assert all(a["status"] == "complete" for a in stored)
        started = [e["data"]["turn_id"] for e in ws.events(f"chat:{chat}", "turn.started")]
        assert started == [turn_id for turn_id, _ in asked[chat]]


def test_a_claims_credit_is_counted_while_it_runs() -> None:
    async def send(_: str) -> None:
        return None

    async def close(_code: int, _reason: str) -> None:
        return None

    link = WorkerLink("w", "k", 2, send, close)
    assert (link.free, link.load) == (2, 0.0)
    link.claiming = 1
    assert (link.free, link.load) == (1, 0.5)
    link.inflight.add("t")
    assert (link.free, link.load) == (0, 1.0)
    link.draining = True
    assert link.free == 0
