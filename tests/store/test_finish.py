"""An attempt's outcome in the store (relayline.store.turns.finish), on both stores: one
statement on PostgreSQL, one transaction of three on SQLite, the same writes and the same
fence."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import event, select

from relayline.ids import new_id
from relayline.store import chats, completions, tenants
from relayline.store import turns as store_turns
from relayline.store.database import Database
from relayline.store.models import Message, MessageMetric, Turn
from relayline.store.turns import Assignment, start_attempt
from tests.conftest import SettingsFactory, migrated


@pytest.fixture
async def db(make_settings: SettingsFactory, db_url: str) -> AsyncIterator[Database]:
    async with migrated(make_settings(database_url=db_url)) as database:
        yield database


async def _started(db: Database, turn_id: str) -> Assignment:
    return await db.run_write(
        lambda conn: start_attempt(
            conn, turn_id, "w1", max_messages=50, max_chars=10_000, lease_ms=30_000
        )
    )


async def _chat_turn(db: Database) -> Assignment:
    async with db.write() as session:
        tenant = await tenants.create_tenant(session, "acme")
        chat = await chats.create_chat(session, tenant.id, "t")
    posted = await chats.post_user_message(db, tenant.id, chat.id, "question", None)
    assert posted.turn is not None
    return await _started(db, posted.turn.id)


async def _completion_turn(db: Database, keep: bool) -> Assignment:
    async with db.write() as session:
        tenant = await tenants.create_tenant(session, "acme")
    made = await completions.create(
        db,
        tenant.id,
        chat_id=new_id(),
        model="m",
        request={"messages": [{"role": "user", "content": "hi"}]},
        texts=[("user", "hi")],
        keep=keep,
        correlation_id="c",
    )
    return await _started(db, made.turn_id)


async def _stored(db: Database, turn: Assignment) -> tuple[Turn, Message, list[MessageMetric]]:
    async with db.read() as session:
        row = await session.get_one(Turn, turn.turn_id)
        answer = await session.get_one(Message, turn.message_id)
        query = select(MessageMetric).where(MessageMetric.message_id == turn.message_id)
        metrics = list(await session.scalars(query))
    return row, answer, metrics


async def test_a_failure_without_metrics_is_stored_with_its_category(db: Database) -> None:
    turn = await _chat_turn(db)
    stored = await store_turns.finish(
        db,
        turn.turn_id,
        turn.attempt,
        state="failed",
        text="half an ans",
        message_status="failed",
        category="upstream",
        detail="x" * 2000,
    )
    assert stored is not None and (stored.id, stored.seq) == (turn.message_id, turn.message_seq)
    row, answer, metrics = await _stored(db, turn)
    assert (row.state, row.error_category, row.error_detail) == ("failed", "upstream", "x" * 1000)
    assert row.finished_at is not None
    assert (answer.content, answer.status, answer.finish_reason) == ("half an ans", "failed", None)
    assert metrics == []
    # Once ended, the attempt owns nothing: a second outcome changes nothing.
    again = await store_turns.finish(
        db, turn.turn_id, turn.attempt, state="completed", text="x", message_status="complete"
    )
    assert again is None
    assert (await _stored(db, turn))[1].content == "half an ans"


async def test_a_cancelled_turn_takes_only_cancelled(db: Database) -> None:
    turn = await _chat_turn(db)
    async with db.write() as session:
        cancelled = await chats.cancel_active_turn(session, turn.chat_id)
    assert cancelled is not None and cancelled.id == turn.turn_id
    raced = await store_turns.finish(
        db, turn.turn_id, turn.attempt, state="completed", text="late", message_status="complete"
    )
    assert raced is None
    assert (await _stored(db, turn))[0].state == "cancelled"
    ended = await store_turns.finish(
        db,
        turn.turn_id,
        turn.attempt,
        state="cancelled",
        text="what was seen",
        message_status="cancelled",
        metrics={"latency_ms": 7, "tokens_out": 3, "usage_source": "estimated"},
    )
    assert ended is not None
    row, answer, metrics = await _stored(db, turn)
    assert (row.state, answer.content, answer.status) == (
        "cancelled",
        "what was seen",
        "cancelled",
    )
    assert [(m.latency_ms, m.tokens_out, m.status, m.chat_id) for m in metrics] == [
        (7, 3, "cancelled", turn.chat_id)
    ]


@pytest.mark.parametrize("keep", [True, False])
async def test_a_completion_keeps_its_texts_only_when_its_tenant_does(
    db: Database, keep: bool
) -> None:
    turn = await _completion_turn(db, keep)
    stored = await store_turns.finish(
        db,
        turn.turn_id,
        turn.attempt,
        state="completed",
        text="the answer",
        message_status="complete",
        metrics={"tokens_in": 4, "tokens_out": 2, "first_token_ms": 1, "latency_ms": 2},
        finish_reason="stop",
    )
    assert stored is not None
    row, answer, metrics = await _stored(db, turn)
    assert row.state == "completed"
    assert (row.request is not None) is keep
    assert answer.content == ("the answer" if keep else "")
    assert answer.finish_reason == "stop"
    # The metrics are stored either way.
    assert [(m.tokens_in, m.tokens_out, m.first_token_ms, m.latency_ms) for m in metrics] == [
        (4, 2, 1, 2)
    ]


@pytest.fixture
async def pg_db(make_settings: SettingsFactory, pg_url: str) -> AsyncIterator[Database]:
    async with migrated(make_settings(database_url=pg_url)) as database:
        yield database


async def test_on_postgresql_the_outcome_is_one_statement(pg_db: Database) -> None:
    db = pg_db
    turn = await _chat_turn(db)
    sent: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", note)
    try:
        stored = await store_turns.finish(
            db,
            turn.turn_id,
            turn.attempt,
            state="completed",
            text="done",
            message_status="complete",
            metrics={"tokens_out": 1},
        )
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", note)
    assert stored is not None
    assert len(sent) == 1 and sent[0].startswith("WITH fenced_turn"), sent
    assert [m.tokens_out for m in (await _stored(db, turn))[2]] == [1]
