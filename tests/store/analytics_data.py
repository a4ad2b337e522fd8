"""A fixed data set for the daily analytics, and the figures computed the slow, obvious way.

The rows are written straight into the store (chats, user messages, turns, answers and their
metrics) with chosen times: around midnight UTC between 2024-03-30 and 2024-03-31 (the night
Europe/Berlin moves its clocks forward), with exact rows at 23:59:59.999 and 00:00:00.000, ties
among values, missing values and every outcome. :func:`brute_force` reads every row back and
computes each tenant's figures per UTC day in Python, with the same nearest-rank percentile.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select

from relayline.ids import new_id
from relayline.protocol.names import FailureCategory, UsageSource
from relayline.store import tenants
from relayline.store.database import Database
from relayline.store.models import Chat, Message, MessageMetric, Turn

H = 3_600_000


def ms(text: str) -> int:
    """Epoch milliseconds of an ISO time read as UTC (``2024-03-30T23:59:59.999``)."""
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def utc_day(stamp: int) -> str:
    return datetime.fromtimestamp(stamp // 1000, UTC).date().isoformat()


@dataclass
class Seeded:
    tenant_ids: dict[str, str]  # name -> id


class Writer:
    """Writes turns for one chat at a time."""

    def __init__(self, session: Any, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.chat_id = new_id()
        self.seq = 0
        session.add(Chat(id=self.chat_id, tenant_id=tenant_id, title="t", last_seq=0, created_at=0))

    def turn(
        self,
        created: int,
        *,
        state: str = "completed",
        finished: int | None = None,
        category: str | None = None,
        metric: dict[str, Any] | None = None,
    ) -> None:
        self.seq += 1
        question = Message(
            id=new_id(),
            chat_id=self.chat_id,
            seq=self.seq,
            role="user",
            content="q",
            status="complete",
            created_at=created,
        )
        turn = Turn(
            id=new_id(),
            chat_id=self.chat_id,
            tenant_id=self.tenant_id,
            message_id=question.id,
            state=state,
            attempt=1,
            error_category=category,
            created_at=created,
            started_at=created if state != "queued" else None,
            finished_at=finished if state in ("completed", "failed", "cancelled") else None,
        )
        question.turn_id = turn.id
        self.session.add_all([question, turn])
        if metric is None or turn.finished_at is None:
            return
        self.seq += 1
        status = {"completed": "complete", "failed": "failed", "cancelled": "cancelled"}[state]
        answer = Message(
            id=new_id(),
            chat_id=self.chat_id,
            seq=self.seq,
            role="assistant",
            content="a",
            status=status,
            turn_id=turn.id,
            created_at=created,
        )
        turn.response_message_id = answer.id
        self.session.add(answer)
        self.session.add(
            MessageMetric(
                id=new_id(),
                message_id=answer.id,
                tenant_id=self.tenant_id,
                chat_id=self.chat_id,
                status=status,
                created_at=metric.pop("at", turn.finished_at),
                **metric,
            )
        )


def _random_metric(rng: random.Random) -> dict[str, Any]:
    counted = rng.random() < 0.85
    return {
        # A small range: ties are frequent.
        "first_token_ms": None if rng.random() < 0.15 else rng.choice(range(50, 900, 25)),
        "latency_ms": None if rng.random() < 0.05 else rng.randint(300, 9_000),
        "tokens_in": rng.randint(1, 4000) if counted else None,
        "tokens_out": rng.randint(1, 1000) if counted else None,
        "usage_source": rng.choice(list(UsageSource)) if counted else None,
    }


async def seed(db: Database, *, turns_per_tenant: int = 60, seed_value: int = 20240331) -> Seeded:
    """Tenants ``acme`` and ``globex`` (random turns from 2024-03-30 20:00 to 2024-04-01 04:00
    UTC), ``edge`` (one turn at 2024-03-30T23:59:59.999 and one at 2024-03-31T00:00:00.000,
    each ending in the same millisecond) and ``idle`` (nothing)."""
    rng = random.Random(seed_value)
    ids: dict[str, str] = {}
    async with db.write() as session:
        for name in ("acme", "globex", "edge", "idle"):
            ids[name] = (await tenants.create_tenant(session, name)).id
    begin, end = ms("2024-03-30T20:00:00"), ms("2024-04-01T04:00:00")
    categories = [*FailureCategory, None]
    async with db.write() as session:
        for name in ("acme", "globex"):
            writer = Writer(session, ids[name])
            for _ in range(turns_per_tenant):
                created = rng.randint(begin, end)
                state = rng.choices(
                    ["completed", "failed", "cancelled", "queued", "running"],
                    weights=[60, 20, 10, 5, 5],
                )[0]
                finished = created + rng.randint(0, 3 * H)
                category = rng.choice(categories) if state == "failed" else None
                metric = _random_metric(rng) if rng.random() < 0.9 else None
                writer.turn(
                    created, state=state, finished=finished, category=category, metric=metric
                )
        edge = Writer(session, ids["edge"])
        for stamp in (ms("2024-03-30T23:59:59.999"), ms("2024-03-31T00:00:00")):
            edge.turn(
                stamp,
                finished=stamp,
                metric={
                    "first_token_ms": 100,
                    "latency_ms": 200,
                    "tokens_in": 7,
                    "tokens_out": 3,
                    "usage_source": "reported",
                },
            )
    return Seeded(ids)


def nearest_rank(values: list[int], percent: int) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(len(ordered) * percent / 100) - 1]


def _blank() -> dict[str, Any]:
    return {
        "messages": 0,
        "turns": 0,
        "answered": 0,
        "cancelled": 0,
        "failed": 0,
        "failed_by_category": {},
        "tokens_in": 0,
        "tokens_out": 0,
        "usage_reported": 0,
        "usage_counted": 0,
        "usage_estimated": 0,
        "_first": [],
        "_latency": [],
    }


async def brute_force(db: Database) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (tenant id, UTC day) with activity: its figures, from every row, in Python."""
    async with db.read() as session:
        questions = (
            await session.execute(
                select(Chat.tenant_id, Message.created_at)
                .join(Chat, Chat.id == Message.chat_id)
                .where(Message.role == "user")
            )
        ).all()
        turns = (await session.scalars(select(Turn))).all()
        metrics = (await session.scalars(select(MessageMetric))).all()
    found: dict[tuple[str, str], dict[str, Any]] = {}

    def at(tenant_id: str, stamp: int) -> dict[str, Any]:
        return found.setdefault((tenant_id, utc_day(stamp)), _blank())

    for tenant_id, created in questions:
        at(tenant_id, created)["messages"] += 1
    for turn in turns:
        if turn.state not in ("completed", "cancelled", "failed") or turn.finished_at is None:
            continue
        row = at(turn.tenant_id, turn.finished_at)
        row["turns"] += 1
        key = {"completed": "answered", "cancelled": "cancelled", "failed": "failed"}[turn.state]
        row[key] += 1
        if turn.state == "failed":
            category = turn.error_category or "unknown"
            row["failed_by_category"][category] = row["failed_by_category"].get(category, 0) + 1
    for metric in metrics:
        row = at(metric.tenant_id, metric.created_at)
        row["tokens_in"] += metric.tokens_in or 0
        row["tokens_out"] += metric.tokens_out or 0
        if metric.usage_source is not None:
            row[f"usage_{metric.usage_source}"] += 1
        if metric.status == "complete":
            if metric.first_token_ms is not None:
                row["_first"].append(metric.first_token_ms)
            if metric.latency_ms is not None:
                row["_latency"].append(metric.latency_ms)
    for row in found.values():
        first, latency = row.pop("_first"), row.pop("_latency")
        row["first_token_p50_ms"] = nearest_rank(first, 50)
        row["first_token_p95_ms"] = nearest_rank(first, 95)
        row["latency_p50_ms"] = nearest_rank(latency, 50)
        row["latency_p95_ms"] = nearest_rank(latency, 95)
        row["failed_by_category"] = dict(sorted(row["failed_by_category"].items()))
    return found


SEEDED_DAYS = [date(2024, 3, 30), date(2024, 3, 31), date(2024, 4, 1)]
