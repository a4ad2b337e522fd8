"""The store on SQLite and PostgreSQL: migrations, keys, messages and turns."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, func, inspect, select, text, update

from relayline import api_keys
from relayline.clock import now_ms
from relayline.errors import Conflict, NotFound
from relayline.ids import new_id
from relayline.store import chats, completions, migrate, tenants, turn_queue
from relayline.store import turns as store_turns
from relayline.store.database import Database
from relayline.store.models import Chat, Message, MessageMetric, Tenant, Turn
from tests.conftest import SettingsFactory, migrated


@pytest.fixture
async def db(make_settings: SettingsFactory, db_url: str) -> AsyncIterator[Database]:
    async with migrated(make_settings(database_url=db_url)) as database:
        yield database


async def _tenant(db: Database, name: str = "acme") -> Tenant:
    async with db.write() as session:
        return await tenants.create_tenant(session, name)


async def _chat(db: Database, tenant_id: str) -> Chat:
    async with db.write() as session:
        return await chats.create_chat(session, tenant_id, "t")


async def _turn_states(db: Database, turn_ids: list[str]) -> list[str]:
    async with db.read() as session:
        return [(await session.get_one(Turn, turn_id)).state for turn_id in turn_ids]


# --- migrations -----------------------------------------------------------------------------


async def test_migrations_reach_head_and_rerunning_is_a_no_op(db: Database) -> None:
    head = migrate.head_revision()
    assert head is not None
    assert await migrate.current_revision(db.engine) == head
    tenant = await _tenant(db)

    await migrate.upgrade(db.engine)

    assert await migrate.current_revision(db.engine) == head
    async with db.read() as session:
        assert (await session.get_one(Tenant, tenant.id)).name == "acme"
        versions = (await session.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert [row[0] for row in versions] == [head]


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """An empty database of its own on the test server (no schema yet)."""
    server, _, _ = pg_url.rpartition("/")
    name = f"relayline_migrate_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_url, timeout=3)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.postgres
async def test_concurrent_upgrades_on_postgres_both_succeed(
    make_settings: SettingsFactory, fresh_pg_url: str
) -> None:
    settings = make_settings(database_url=fresh_pg_url)

    def slow_commit(_conn: Any) -> None:
        # Hold the migration's transaction open a moment, as a slow commit would: an instance
        # that got the lock before this commit would find no schema yet and fail on its tables.
        time.sleep(0.3)

    async def one_instance() -> str | None:
        database = Database(settings)
        event.listen(database.engine.sync_engine, "commit", slow_commit)
        try:
            await migrate.upgrade(database.engine)
            return await migrate.current_revision(database.engine)
        finally:
            await database.dispose()

    def in_own_thread() -> str | None:
        # A loop per thread, like two processes: neither waits on the other's event loop.
        return asyncio.run(one_instance())

    revisions = await asyncio.gather(
        asyncio.to_thread(in_own_thread), asyncio.to_thread(in_own_thread)
    )

    assert revisions == [migrate.head_revision()] * 2


# --- tenants and keys -----------------------------------------------------------------------


async def test_find_key_accepts_only_the_live_key_of_an_enabled_tenant(db: Database) -> None:
    tenant = await _tenant(db)
    async with db.write() as session:
        row, key = await tenants.create_key(session, tenant.id, ["chats"], "server")
        other_row, other_key = await tenants.create_key(session, tenant.id, ["chats"], None)

    async with db.read() as session:
        found = await tenants.find_key(session, key)
        assert found is not None and found[0].id == row.id and found[1].id == tenant.id
        prefix = api_keys.prefix_of(key)
        assert prefix is not None
        wrong_secret = f"rl_{prefix}_{'A' * 43}"
        assert await tenants.find_key(session, wrong_secret) is None
        assert await tenants.find_key(session, key[:-1]) is None
        assert await tenants.find_key(session, "not-a-key") is None
        assert await tenants.find_key(session, f"rl_{'0' * 12}_{key.split('_', 2)[2]}") is None

    async with db.write() as session:
        await tenants.revoke_key(session, row.id)
    async with db.read() as session:
        assert await tenants.find_key(session, key) is None
        assert await tenants.find_key(session, other_key) is not None

    async with db.write() as session:
        await tenants.set_disabled(session, tenant.id, True)
    async with db.read() as session:
        assert await tenants.find_key(session, other_key) is None

    async with db.write() as session:
        await tenants.set_disabled(session, tenant.id, False)
    async with db.read() as session:
        found = await tenants.find_key(session, other_key)
        assert found is not None and found[0].id == other_row.id


async def test_key_is_stored_hashed(db: Database) -> None:
    tenant = await _tenant(db)
    async with db.write() as session:
        row, key = await tenants.create_key(session, tenant.id, ["chats"], None)

    async with db.read() as session:
        query = text("SELECT * FROM api_keys WHERE id = :id")
        stored = (await session.execute(query, {"id": row.id})).all()
    assert len(stored) == 1
    assert all(key not in str(value) for value in stored[0])
    assert row.key_hash == api_keys.hash_key(key)


async def test_unknown_tenant_is_not_found(db: Database) -> None:
    async with db.write() as session:
        with pytest.raises(NotFound):
            await tenants.create_key(session, "01ARZ3NDEKTSV4RRFFQ69G5FAV", ["chats"], None)
    async with db.write() as session:
        with pytest.raises(NotFound):
            await tenants.set_disabled(session, "01ARZ3NDEKTSV4RRFFQ69G5FAV", True)


# --- messages -------------------------------------------------------------------------------


async def test_post_user_message_allocates_seqs_and_dedupes(db: Database) -> None:
    tenant = await _tenant(db)
    chat = await _chat(db, tenant.id)

    plain = [await chats.post_user_message(db, tenant.id, chat.id, f"m{i}", None) for i in range(3)]
    first = await chats.post_user_message(db, tenant.id, chat.id, "once", "c-1")
    again = await chats.post_user_message(db, tenant.id, chat.id, "twice", "c-1")

    assert [p.message.seq for p in plain] == [1, 2, 3]
    assert all(p.created and p.turn is not None for p in plain)
    assert first.created and first.message.seq == 4
    assert not again.created
    assert again.message.id == first.message.id and again.message.content == "once"
    assert again.turn is not None and first.turn is not None
    assert again.turn.id == first.turn.id
    async with db.read() as session:
        assert (await session.get_one(Chat, chat.id)).last_seq == 4
        count = await session.scalar(
            select(func.count()).select_from(Message).where(Message.chat_id == chat.id)
        )
        turns = await session.scalar(
            select(func.count()).select_from(Turn).where(Turn.chat_id == chat.id)
        )
    assert count == 4 and turns == 4


async def test_concurrent_duplicates_store_one_message(db: Database) -> None:
    tenant = await _tenant(db)
    chat = await _chat(db, tenant.id)

    results = await asyncio.gather(
        *(chats.post_user_message(db, tenant.id, chat.id, f"try {i}", "dup") for i in range(10))
    )

    assert sum(r.created for r in results) == 1
    assert len({r.message.id for r in results}) == 1
    async with db.read() as session:
        assert (await session.get_one(Chat, chat.id)).last_seq == 1


async def test_post_user_message_checks_the_chat(db: Database) -> None:
    tenant = await _tenant(db)
    other = await _tenant(db, "other")
    chat = await _chat(db, tenant.id)

    with pytest.raises(NotFound):
        await chats.post_user_message(db, other.id, chat.id, "x", None)
    with pytest.raises(NotFound):
        await chats.post_user_message(db, other.id, chat.id, "x", "with-id")
    async with db.write() as session:
        await chats.archive_chat(session, tenant.id, chat.id)
    with pytest.raises(Conflict):
        await chats.post_user_message(db, tenant.id, chat.id, "x", None)
    async with db.read() as session:
        assert (await session.get_one(Chat, chat.id)).last_seq == 0


async def test_a_post_to_no_chat_or_a_completions_chat_is_not_found(db: Database) -> None:
    tenant = await _tenant(db)
    with pytest.raises(NotFound):
        await chats.post_user_message(db, tenant.id, new_id(), "x", None)
    made = await completions.create(
        db,
        tenant.id,
        chat_id=new_id(),
        model="m",
        request={"messages": [{"role": "user", "content": "hi"}]},
        texts=[("user", "hi")],
        keep=False,
        correlation_id="c",
    )
    with pytest.raises(NotFound):
        await chats.post_user_message(db, tenant.id, made.chat_id, "x", None)
    async with db.read() as session:
        assert (await session.get_one(Chat, made.chat_id)).last_seq == 1


async def test_on_postgresql_a_post_is_one_statement(
    make_settings: SettingsFactory, pg_url: str
) -> None:
    async with migrated(make_settings(database_url=pg_url)) as db:
        await _post_once_on_postgresql(db)


async def _post_once_on_postgresql(db: Database) -> None:
    tenant = await _tenant(db)
    chat = await _chat(db, tenant.id)
    sent: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", note)
    try:
        posted = await chats.post_user_message(db, tenant.id, chat.id, "hello", "c-1", "req-1")
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", note)
    assert len(sent) == 1 and sent[0].startswith("WITH chat AS"), sent
    assert posted.created and posted.message.seq == 1 and posted.turn is not None
    async with db.read() as session:
        message = await session.get_one(Message, posted.message.id)
        turn = await session.get_one(Turn, posted.turn.id)
    assert (message.content, message.client_msg_id, message.turn_id) == ("hello", "c-1", turn.id)
    assert (turn.state, turn.message_id, turn.correlation_id, turn.request) == (
        "queued",
        message.id,
        "req-1",
        None,
    )


async def test_a_retry_after_the_chat_was_archived_gets_its_message(db: Database) -> None:
    tenant = await _tenant(db)
    chat = await _chat(db, tenant.id)
    first = await chats.post_user_message(db, tenant.id, chat.id, "before", "c-1")
    async with db.write() as session:
        await chats.archive_chat(session, tenant.id, chat.id)

    again = await chats.post_user_message(db, tenant.id, chat.id, "before", "c-1")
    with pytest.raises(Conflict):
        await chats.post_user_message(db, tenant.id, chat.id, "after", "c-2")

    assert not again.created and again.message.id == first.message.id
    assert again.turn is not None and first.turn is not None and again.turn.id == first.turn.id
    async with db.read() as session:
        assert (await session.get_one(Chat, chat.id)).last_seq == 1  # the refusal took no seq


@pytest.mark.parametrize(
    ("held_heads", "expect", "unrelated"),
    [
        (3, "the fourth", 40),  # a few held chats head the queue: skipped among the first heads
        (3, "the fourth", 0),  # ... and when the instance holds only a few chats
        (turn_queue._EXCLUDE_BOUND + 2, "the first free", 40),  # more than are read: the full query
        (-1, "none", 40),  # every head is a held chat
        (-1, "none", 0),
    ],
)
async def test_a_claim_leaves_out_held_chats(
    db: Database, held_heads: int, expect: str, unrelated: int
) -> None:
    """An instance holding chats (``unrelated`` more than head the queue) claims the oldest
    head whose chat it does not hold, or nothing when it holds them all."""
    tenant = await _tenant(db)
    async with db.read() as session:  # other tests' turns may wait in the same database
        others = set(await session.scalars(select(Turn.chat_id)))
    posted: list[tuple[str, str]] = []  # (turn id, chat id), oldest first
    for _ in range(turn_queue._EXCLUDE_BOUND + 4):
        chat = await _chat(db, tenant.id)
        message = await chats.post_user_message(db, tenant.id, chat.id, "q", None)
        assert message.turn is not None
        posted.append((message.turn.id, chat.id))
    held = set(others) | {f"no-such-chat-{i}" for i in range(unrelated)}
    if held_heads < 0:
        held |= {chat_id for _, chat_id in posted}
    else:
        held |= {chat_id for _, chat_id in posted[:held_heads]}
    claimed = await turn_queue.claim_next(db, "w1", 30_000, 50, 10_000, exclude_chats=held)
    if expect == "none":
        assert claimed is None
    else:
        assert claimed is not None and claimed.turn_id == posted[held_heads][0]
    async with db.write() as session:  # leave nothing claimable behind for other tests
        await session.execute(
            update(Turn)
            .where(Turn.id.in_([turn_id for turn_id, _ in posted]))
            .values(state="cancelled")
        )


async def test_a_claim_leaving_out_many_chats_skips_a_turn_another_instance_locked(
    db: Database,
) -> None:
    """The head chosen among the first heads is locked by another instance's claim meanwhile:
    the whole query decides, and skips it (PostgreSQL's row locks)."""
    if db.is_sqlite:
        pytest.skip("row locks: SQLite has one writer, no other instance can hold a turn")
    tenant = await _tenant(db)
    async with db.read() as session:
        others = set(await session.scalars(select(Turn.chat_id)))
    posted: list[str] = []
    for _ in range(2):
        chat = await _chat(db, tenant.id)
        message = await chats.post_user_message(db, tenant.id, chat.id, "q", None)
        assert message.turn is not None
        posted.append(message.turn.id)
    held = set(others) | {f"no-such-chat-{i}" for i in range(40)}
    async with db.engine.connect() as other, other.begin():
        await other.execute(select(Turn.id).where(Turn.id == posted[0]).with_for_update())
        claimed = await turn_queue.claim_next(db, "w1", 30_000, 50, 10_000, exclude_chats=held)
    assert claimed is not None and claimed.turn_id == posted[1]
    async with db.write() as session:
        await session.execute(update(Turn).where(Turn.id.in_(posted)).values(state="cancelled"))


async def test_a_new_attempt_reuses_its_answer_and_fences_the_old_one(db: Database) -> None:
    tenant = await _tenant(db)
    chat = await _chat(db, tenant.id)
    posted = await chats.post_user_message(db, tenant.id, chat.id, "question", None)
    assert posted.turn is not None

    async with db.read() as session:  # other tests' turns may wait in the same database
        others = set(await session.scalars(select(Turn.chat_id).where(Turn.chat_id != chat.id)))
    first = await turn_queue.claim_next(db, "w1", 30_000, 50, 10_000, exclude_chats=others)
    assert first is not None and first.attempt == 1
    assert first.history == [{"role": "user", "content": "question"}]
    assert first.message_seq == 2
    assert await store_turns.requeue(db, first.turn_id, first.attempt)
    second = await turn_queue.claim_next(db, "w2", 30_000, 50, 10_000, exclude_chats=others)
    assert second is not None and second.attempt == 2
    # The same answer row, in the same place, emptied for the new attempt.
    assert (second.message_id, second.message_seq) == (first.message_id, first.message_seq)

    stale = await store_turns.finish(
        db, first.turn_id, first.attempt, state="completed", text="old", message_status="complete"
    )
    stored = await store_turns.finish(
        db,
        second.turn_id,
        second.attempt,
        state="completed",
        text="new",
        message_status="complete",
        metrics={"first_token_ms": 5, "usage_source": "counted"},
        finish_reason="stop",
    )

    assert stale is None
    assert stored is not None and (stored.id, stored.seq) == (first.message_id, 2)
    async with db.read() as session:
        answer = await session.get_one(Message, first.message_id)
        turn = await session.get_one(Turn, first.turn_id)
        metric = (
            await session.scalars(
                select(MessageMetric).where(MessageMetric.message_id == answer.id)
            )
        ).one()
        last_seq = (await session.get_one(Chat, chat.id)).last_seq
    assert (answer.content, answer.status, answer.finish_reason) == ("new", "complete", "stop")
    assert (turn.state, turn.attempt, turn.worker_id) == ("completed", 2, "w2")
    assert (metric.first_token_ms, metric.usage_source, metric.tenant_id) == (
        5,
        "counted",
        tenant.id,
    )
    assert last_seq == 2  # one question, one answer: the retry took no new seq


async def test_a_claim_starts_the_oldest_head_with_its_history_and_agent(
    make_settings: SettingsFactory, own_db_url: str
) -> None:
    """What a claim hands the worker, on both stores (one statement and a read on
    PostgreSQL): the oldest turn heading its chat, its new answer placed at the chat's next
    number, the conversation up to its question (not what was asked after it), the tenant's
    agent settings, the correlation id; a completion only to a worker serving its model."""
    async with migrated(make_settings(database_url=own_db_url)) as db:
        tenant = await _tenant(db)
        async with db.write() as session:
            (await session.get_one(Tenant, tenant.id)).agent_settings = {"model": "m1", "tools": []}
        chat = await _chat(db, tenant.id)
        first = await chats.post_user_message(db, tenant.id, chat.id, "one", None, "req-1")
        assert first.turn is not None
        claimed = await turn_queue.claim_next(db, "w1", 30_000, 50, 10_000)
        assert claimed is not None and claimed.turn_id == first.turn.id
        assert await store_turns.finish(
            db,
            claimed.turn_id,
            claimed.attempt,
            state="completed",
            text="answer one",
            message_status="complete",
        )
        second = await chats.post_user_message(db, tenant.id, chat.id, "two", None)
        third = await chats.post_user_message(db, tenant.id, chat.id, "three", None)
        assert second.turn is not None and third.turn is not None
        made = await completions.create(
            db,
            tenant.id,
            chat_id=new_id(),
            model="gpt-x",
            request={"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]},
            texts=[("user", "hi")],
            keep=True,
            correlation_id="c-9",
        )

        claimed = await turn_queue.claim_next(db, "w2", 30_000, 50, 10_000)
        assert claimed is not None
        assert (claimed.turn_id, claimed.chat_id, claimed.tenant_id, claimed.attempt) == (
            second.turn.id,
            chat.id,
            tenant.id,
            1,
        )
        assert claimed.message_seq == 5  # after "one", its answer, "two" and "three"
        assert claimed.history == [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "answer one"},
            {"role": "user", "content": "two"},
        ]
        assert claimed.agent == {"model": "m1", "tools": []}
        assert claimed.correlation_id == second.turn.id and claimed.request is None
        # "three" waits behind "two"; the completion only for a worker serving its model.
        assert await turn_queue.claim_next(db, "w3", 30_000, 50, 10_000) is None
        completion = await turn_queue.claim_next(db, "w3", 30_000, 50, 10_000, models=["gpt-x"])
        assert completion is not None and completion.turn_id == made.turn_id
        assert completion.history == [{"role": "user", "content": "hi"}]
        assert (completion.agent, completion.correlation_id) == ({}, "c-9")
        assert completion.request is not None and completion.request["model"] == "gpt-x"
        async with db.read() as session:
            answer = await session.get_one(Message, claimed.message_id)
            turn = await session.get_one(Turn, claimed.turn_id)
            last_seq = (await session.get_one(Chat, chat.id)).last_seq
        assert (answer.seq, answer.role, answer.status, answer.turn_id) == (
            5,
            "assistant",
            "streaming",
            claimed.turn_id,
        )
        assert (turn.state, turn.worker_id, turn.response_message_id) == (
            "running",
            "w2",
            answer.id,
        )
        assert turn.lease_expires_at is not None and turn.started_at is not None
        assert turn.lease_expires_at - turn.started_at == 30_000
        assert last_seq == 5


async def test_on_postgresql_a_claim_is_one_statement_and_a_read(
    make_settings: SettingsFactory, own_pg_url: str
) -> None:
    async with migrated(make_settings(database_url=own_pg_url)) as db:
        tenant = await _tenant(db)
        chat = await _chat(db, tenant.id)
        posted = await chats.post_user_message(db, tenant.id, chat.id, "hello", None)
        assert posted.turn is not None
        sent: list[str] = []

        def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            sent.append(statement)

        event.listen(db.engine.sync_engine, "before_cursor_execute", note)
        try:
            claimed = await turn_queue.claim_next(db, "w1", 30_000, 50, 10_000)
            nothing = await turn_queue.claim_next(db, "w1", 30_000, 50, 10_000)
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", note)
        assert claimed is not None and claimed.turn_id == posted.turn.id and nothing is None
        assert claimed.history == [{"role": "user", "content": "hello"}]
        # The claim, the history; then a claim that finds nothing: one statement.
        assert len(sent) == 3, sent
        assert sent[0].startswith("WITH head AS") and sent[2].startswith("WITH head AS")
        assert sent[1].startswith("SELECT")


async def test_on_postgresql_a_claim_whose_history_cannot_be_read_hands_the_turn_back(
    make_settings: SettingsFactory, own_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's statement committed, the read after it failed: the turn is queued again at
    once (not when its lease runs out), and the next claim takes it with the same answer."""
    async with migrated(make_settings(database_url=own_pg_url)) as db:
        tenant = await _tenant(db)
        chat = await _chat(db, tenant.id)
        posted = await chats.post_user_message(db, tenant.id, chat.id, "hello", None)
        assert posted.turn is not None

        async def unreadable(*_: object, **__: object) -> list[dict[str, str]]:
            raise ConnectionResetError("the store went away")

        with monkeypatch.context() as patched:
            patched.setattr(turn_queue, "read_history", unreadable)
            with pytest.raises(ConnectionResetError):
                await turn_queue.claim_next(db, "w1", 30_000, 50, 10_000)
        async with db.read() as session:
            turn = await session.get_one(Turn, posted.turn.id)
        assert (turn.state, turn.attempt, turn.worker_id, turn.lease_expires_at) == (
            "queued",
            1,
            None,
            None,
        )
        again = await turn_queue.claim_next(db, "w2", 30_000, 50, 10_000)
        assert again is not None and (again.turn_id, again.attempt) == (posted.turn.id, 2)
        assert again.message_id == turn.response_message_id
        assert again.history == [{"role": "user", "content": "hello"}]


async def test_on_postgresql_a_claim_never_starts_a_turn_before_it_was_posted(
    make_settings: SettingsFactory, own_pg_url: str
) -> None:
    """The claim reads the clock before its statement, which may take a turn posted a moment
    later: the attempt's start, its lease and its answer's creation are never before the
    turn's (a queued time below zero). The post is made to look 5 s late."""
    async with migrated(make_settings(database_url=own_pg_url)) as db:
        tenant = await _tenant(db)
        chat = await _chat(db, tenant.id)
        posted = await chats.post_user_message(db, tenant.id, chat.id, "hello", None)
        assert posted.turn is not None
        later = now_ms() + 5_000
        async with db.write() as session:
            await session.execute(
                update(Turn).where(Turn.id == posted.turn.id).values(created_at=later)
            )
        claimed = await turn_queue.claim_next(db, "w1", 30_000, 50, 10_000)
        assert claimed is not None
        async with db.read() as session:
            turn = await session.get_one(Turn, posted.turn.id)
            answer = await session.get_one(Message, claimed.message_id)
        assert turn.started_at == later and turn.lease_expires_at == later + 30_000
        assert answer.created_at == later


async def test_list_messages_pages_by_seq(db: Database) -> None:
    tenant = await _tenant(db)
    chat, other = await _chat(db, tenant.id), await _chat(db, tenant.id)
    for i in range(5):
        await chats.post_user_message(db, tenant.id, chat.id, f"m{i}", None)
    await chats.post_user_message(db, tenant.id, other.id, "elsewhere", None)

    async with db.read() as session:

        async def page(after: int, limit: int) -> list[str]:
            rows = await chats.list_messages(session, chat.id, after_seq=after, limit=limit)
            return [row.content for row in rows]

        assert await page(0, 2) == ["m0", "m1"]
        assert await page(2, 2) == ["m2", "m3"]
        assert await page(4, 2) == ["m4"]
        assert await page(5, 2) == []
        assert await page(0, 100) == [f"m{i}" for i in range(5)]


async def test_cancel_stops_only_the_oldest_active_turn(db: Database) -> None:
    tenant = await _tenant(db)
    chat = await _chat(db, tenant.id)
    posted = [
        await chats.post_user_message(db, tenant.id, chat.id, f"m{i}", None) for i in range(3)
    ]
    turn_ids = [p.turn.id for p in posted if p.turn is not None]
    assert len(turn_ids) == 3

    async with db.write() as session:
        cancelled = await chats.cancel_active_turn(session, chat.id)
    assert cancelled is not None and cancelled.id == turn_ids[0]
    assert await _turn_states(db, turn_ids) == ["cancelled", "queued", "queued"]

    # A running turn is "in progress" just like a queued one.
    async with db.write() as session:
        (await session.get_one(Turn, turn_ids[1])).state = "running"
    async with db.write() as session:
        cancelled = await chats.cancel_active_turn(session, chat.id)
    assert cancelled is not None and cancelled.id == turn_ids[1]
    assert cancelled.finished_at is not None
    assert await _turn_states(db, turn_ids) == ["cancelled", "cancelled", "queued"]

    async with db.write() as session:
        await chats.cancel_active_turn(session, chat.id)
        assert await chats.cancel_active_turn(session, chat.id) is None
    assert await _turn_states(db, turn_ids) == ["cancelled"] * 3


def _fields(row: object, table: Any) -> dict[str, object]:
    return {column.key: getattr(row, column.key) for column in table.columns}


async def test_a_chat_read_for_a_reload_is_the_stored_chat_and_its_turn(db: Database) -> None:
    tenant = await _tenant(db)
    other = await _tenant(db, "other")
    chat = await _chat(db, tenant.id)

    def reading(tenant_id: str, chat_id: str) -> Any:
        return db.run_read(lambda conn: chats.chat_for_reading(conn, tenant_id, chat_id))

    read, turn = await reading(tenant.id, chat.id)
    assert turn is None
    assert _fields(read, Chat.__table__) == _fields(chat, Chat.__table__)

    first = await chats.post_user_message(db, tenant.id, chat.id, "one", None)
    await chats.post_user_message(db, tenant.id, chat.id, "two", None)
    assert first.turn is not None
    async with db.write() as session:
        stored = await session.get_one(Turn, first.turn.id)
        stored.state, stored.attempt, stored.started_at = "running", 1, 123
    read, turn = await reading(tenant.id, chat.id)
    async with db.read() as session:
        stored_chat = await session.get_one(Chat, chat.id)
        stored_turn = await session.get_one(Turn, first.turn.id)
    # Every column, as the ORM loads it: the oldest turn in progress, the chat's numbers.
    assert turn is not None
    assert _fields(turn, Turn.__table__) == _fields(stored_turn, Turn.__table__)
    assert _fields(read, Chat.__table__) == _fields(stored_chat, Chat.__table__)
    assert read.last_seq == 2
    # Of no session: nothing read for a reload can be flushed by accident.
    assert inspect(read).transient and inspect(turn).transient

    with pytest.raises(NotFound):
        await reading(other.id, chat.id)
    with pytest.raises(NotFound):
        await reading(tenant.id, "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    async with db.write() as session:
        completion = await chats.create_chat(session, tenant.id, "c")
        completion.kind = "completion"
    with pytest.raises(NotFound):
        await reading(tenant.id, completion.id)


async def test_chats_are_listed_per_tenant_newest_first(db: Database) -> None:
    tenant, other = await _tenant(db), await _tenant(db, "other")
    ids = [(await _chat(db, tenant.id)).id for _ in range(3)]
    await _chat(db, other.id)
    async with db.write() as session:
        await chats.archive_chat(session, tenant.id, ids[1])

    async with db.read() as session:
        visible = await chats.list_chats(
            session, tenant.id, after=None, limit=10, include_archived=False
        )
        everything = await chats.list_chats(
            session, tenant.id, after=None, limit=10, include_archived=True
        )
        only = await chats.list_chats(
            session, tenant.id, after=None, limit=10, include_archived=True, only=frozenset(ids[:1])
        )
        after = await chats.list_chats(
            session, tenant.id, after=ids[2], limit=10, include_archived=True
        )
    assert [c.id for c in visible] == [ids[2], ids[0]]
    assert [c.id for c in everything] == ids[::-1]
    assert [c.id for c in only] == [ids[0]]
    assert [c.id for c in after] == [ids[1], ids[0]]
