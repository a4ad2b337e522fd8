"""The turn queue, kept in the store so every instance shares it.

A turn is claimable when it is queued and is its chat's oldest unfinished turn (one turn at a
time per chat, in order: a retried turn keeps its place ahead of later messages). Claiming
locks the row with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent instances never
claim the same turn; SQLite has a single writer (write transactions begin IMMEDIATE), which
gives the same guarantee there.

Running turns carry a lease (``lease_expires_at``) that the holding instance renews while its
worker is alive; :func:`reclaim_expired` lets any instance re-queue the turns of an instance
that died. Attempt numbers fence every later write, so a turn is answered once. Renewal is
fenced too: it extends only the attempt the instance holds, and tells it which of its turns
were cancelled or taken over by another attempt meanwhile (its lease ran out while it could
not renew), so that it stops them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    column,
    exists,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import aliased

from relayline.clock import now_ms
from relayline.ids import new_id
from relayline.store.chats import TURNS
from relayline.store.database import Database
from relayline.store.models import Message, Turn
from relayline.store.turns import Assignment, read_history, requeue, start_attempt

ACTIVE = ("queued", "running")


def _heads_its_chat() -> ColumnElement[bool]:
    """No earlier turn of the same chat is active: the turn is its chat's oldest active one.

    Indexes keep the claim cheap however long the queue: ``(state, id)`` walks queued turns
    oldest first (the walk stops at the first claimable one), and ``(chat_id, state, id)``
    answers this test with one seek per active state.
    """
    earlier = aliased(Turn)
    return ~exists().where(
        earlier.chat_id == Turn.chat_id, earlier.state.in_(ACTIVE), earlier.id < Turn.id
    )


def _claimable_heads(models: bool) -> ColumnElement[bool]:
    """Queued, heading its chat (the test of :func:`_heads_its_chat`, in Core: no ORM compile
    step on the hot path) and answerable by the worker: a turn that names no model, or
    (``models``) one of ``p_models``."""
    turns = TURNS
    earlier = TURNS.alias("earlier")
    heads = ~exists().where(
        earlier.c.chat_id == turns.c.chat_id,
        earlier.c.state.in_(ACTIVE),
        earlier.c.id < turns.c.id,
    )
    # A completion waits for a worker that announces its model; a chat turn takes any worker.
    fits: ColumnElement[bool] = turns.c.model.is_(None)
    if models:
        fits = or_(fits, turns.c.model.in_(bindparam("p_models", expanding=True)))
    return and_(turns.c.state == "queued", heads, fits)


def _claimable(models: bool, exclude: bool = False) -> Select[str]:
    """The claim's query: the oldest claimable turn."""
    query = select(TURNS.c.id).where(_claimable_heads(models))
    if exclude:
        query = query.where(TURNS.c.chat_id.not_in(bindparam("p_exclude", expanding=True)))
    return query.order_by(TURNS.c.id).limit(1)


def _heads(models: bool) -> Select[str, str]:
    """The first ``p_limit`` claimable turns and their chats, oldest first, not locked."""
    return (
        select(TURNS.c.id, TURNS.c.chat_id)
        .where(_claimable_heads(models))
        .order_by(TURNS.c.id)
        .limit(bindparam("p_limit"))
    )


@dataclass(frozen=True, slots=True)
class _Claims:
    """The claim's statements for one kind of worker (serving models, or not)."""

    claimable: Select[str]
    excluding: Select[str]
    heads: Select[str, str]


# Built once: the claim runs after every post, and building this query is most of its cost.
# A worker that serves no model (a chat worker) gets statements without ``p_models``: an
# expanding parameter makes SQLAlchemy rewrite the statement's text on every execution.
_CLAIMS = {
    models: _Claims(
        _claimable(models),
        _claimable(models, exclude=True),
        _heads(models),
    )
    for models in (False, True)
}

# At most this many chats to leave out are looked for among the first heads. A relay running
# many answers holds as many chats, and binding them all into the query (SQLAlchemy expands
# each into a parameter of its own, on every claim) cost ~0.6 ms a claim at 1,000; but a chat
# it holds can head the queue only once its turn has ended in the store (while the outcome is
# being announced, or after a cancel), which few do at a time. So the first heads are read and
# the held chats skipped here. (PostgreSQL's claim binds them as one array: no expansion.)
_EXCLUDE_BOUND = 16


def claimable_turn_id(
    conn: Connection,
    *,
    exclude_chats: Collection[str] = (),
    models: Collection[str] = (),
) -> str | None:
    """The oldest queued turn that heads its chat and that a worker serving ``models`` can
    answer (a turn that names no model, or one of them): SQLite's claim, whose transaction is
    the only writer (PostgreSQL's is :data:`_CLAIM_ONE`).

    ``exclude_chats``: chats this instance still holds while it stores and announces the
    outcome of their previous turn, so the next one does not overtake that announcement.
    """
    claims = _CLAIMS[bool(models)]
    params: dict[str, object] = {"p_models": list(models)} if models else {}
    if exclude_chats:
        # Each head is a chat of its own: among one more heads than chats left out, one at
        # least is free, unless the queue has fewer.
        limit = min(len(exclude_chats), _EXCLUDE_BOUND) + 1
        heads = conn.execute(claims.heads, {**params, "p_limit": limit}).all()
        free = next((turn_id for turn_id, chat_id in heads if chat_id not in exclude_chats), None)
        if free is None and len(heads) < limit:
            return None  # every head is a chat left out
        if free is not None:
            return str(free)  # one writer: what this transaction read stays as it is
        # More held chats at the head than read: the whole query decides.
        result = conn.execute(claims.excluding, {**params, "p_exclude": list(exclude_chats)})
    else:
        result = conn.execute(claims.claimable, params)
    found = result.scalar_one_or_none()
    return None if found is None else str(found)


# :func:`claim_next` as one PostgreSQL statement (data-modifying CTEs), committed on its own:
# one round trip instead of ``BEGIN``, the head, the attempt, the answer's number and row, the
# agent and ``COMMIT``. The same choice as :func:`claimable_turn_id` (queued, heading its chat,
# answerable by the worker, not of a chat in ``p_exclude``; the row locked, or skipped when
# another claim holds it) and the same writes as :func:`~relayline.store.turns.start_attempt`:
# the attempt, the worker and the lease; the answer placed at the chat's next number, or an
# earlier attempt's answer emptied in its place. ``p_now`` is read before the statement, which
# may take a turn posted a moment after it: the start is never before the turn's creation.
_CLAIM_ONE = sql_text(
    """WITH head AS (
    SELECT turns.id FROM turns
    WHERE turns.state = 'queued'
        AND NOT EXISTS (
            SELECT 1 FROM turns AS earlier
            WHERE earlier.chat_id = turns.chat_id AND earlier.state IN ('queued', 'running')
                AND earlier.id < turns.id)
        AND (turns.model IS NULL OR turns.model = ANY(CAST(:p_models AS VARCHAR[])))
        AND turns.chat_id <> ALL(CAST(:p_exclude AS VARCHAR[]))
    ORDER BY turns.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), started AS (
    UPDATE turns
    SET attempt = turns.attempt + 1, state = 'running', worker_id = :p_worker_id,
        started_at = GREATEST(CAST(:p_now AS BIGINT), turns.created_at),
        lease_expires_at = GREATEST(CAST(:p_now AS BIGINT), turns.created_at)
            + CAST(:p_lease_ms AS BIGINT),
        response_message_id = COALESCE(turns.response_message_id, :p_answer_id)
    FROM head
    WHERE turns.id = head.id
    RETURNING turns.id, turns.chat_id, turns.tenant_id, turns.attempt, turns.message_id,
        turns.response_message_id, turns.correlation_id, turns.request, turns.started_at
), numbered AS (
    UPDATE chats SET last_seq = chats.last_seq + 1
    FROM started
    WHERE chats.id = started.chat_id
        AND started.response_message_id = CAST(:p_answer_id AS VARCHAR)
    RETURNING chats.last_seq
), placed AS (
    INSERT INTO messages (id, chat_id, seq, role, content, status, finish_reason,
        client_msg_id, turn_id, created_at)
    SELECT CAST(:p_answer_id AS VARCHAR), started.chat_id, numbered.last_seq, 'assistant', '',
        'streaming', NULL, NULL, started.id, started.started_at
    FROM started, numbered
    RETURNING seq
), restarted AS (
    UPDATE messages SET content = '', status = 'streaming'
    FROM started
    WHERE messages.id = started.response_message_id
        AND started.response_message_id <> CAST(:p_answer_id AS VARCHAR)
    RETURNING messages.seq
)
SELECT started.id, started.chat_id, started.tenant_id, started.attempt, started.message_id,
    started.response_message_id, started.correlation_id, started.request,
    COALESCE((SELECT seq FROM placed), (SELECT seq FROM restarted)) AS answer_seq,
    (SELECT agent_settings FROM tenants WHERE tenants.id = started.tenant_id) AS agent
FROM started"""
).columns(
    column("id", String),
    column("chat_id", String),
    column("tenant_id", String),
    column("attempt", Integer),
    column("message_id", String),
    column("response_message_id", String),
    column("correlation_id", String),
    column("request", JSON),
    column("answer_seq", Integer),
    column("agent", JSON),
)


async def _claim_one(
    db: Database,
    worker_id: str,
    lease_ms: int,
    max_messages: int,
    max_chars: int,
    exclude_chats: Collection[str],
    include_failed: bool,
    models: Collection[str],
) -> Assignment | None:
    """:func:`claim_next` on PostgreSQL: the claim in one statement, then the history read."""
    params = {
        "p_models": list(models),
        "p_exclude": list(exclude_chats),
        "p_worker_id": worker_id,
        "p_now": now_ms(),
        "p_lease_ms": lease_ms,
        "p_answer_id": new_id(),
    }
    async with db.autocommit() as conn:
        row = (await conn.execute(_CLAIM_ONE, params)).first()
        if row is None:
            return None
        turn_id, chat_id, tenant_id, attempt, question_id, answer_id, correlation_id = row[:7]
        request, answer_seq, agent = row[7], int(row[8]), row[9]
        if request is not None:
            # A completion carries its whole conversation: no history, no agent settings.
            messages = list(request.get("messages") or [])
            request, agent = dict(request), {}
        else:
            # After the claim's commit, which changed nothing it reads: the answer placed is
            # empty (left out), and what the chat gets later comes after the question.
            try:
                messages = await read_history(
                    conn, chat_id, question_id, answer_seq, max_messages, max_chars, include_failed
                )
            except Exception:
                # The claim is committed: hand the turn back now rather than when its lease
                # runs out (the store may be away; then the lease does it).
                with contextlib.suppress(Exception):
                    await requeue(db, turn_id, attempt)
                raise
            agent = dict(agent) if agent else {}
    return Assignment(
        turn_id,
        chat_id,
        tenant_id,
        attempt,
        answer_id,
        answer_seq,
        messages,
        agent,
        correlation_id or turn_id,
        request,
    )


async def claim_next(
    db: Database,
    worker_id: str,
    lease_ms: int,
    max_messages: int,
    max_chars: int,
    *,
    exclude_chats: Collection[str] = (),
    include_failed: bool = False,
    models: Collection[str] = (),
) -> Assignment | None:
    """Claim the head turn for ``worker_id`` (serving ``models``) and start its next attempt,
    in one transaction (on PostgreSQL one statement, then a read of the history)."""
    if not db.is_sqlite:
        return await _claim_one(
            db,
            worker_id,
            lease_ms,
            max_messages,
            max_chars,
            exclude_chats,
            include_failed,
            models,
        )

    def claim(conn: Connection) -> Assignment | None:
        turn_id = claimable_turn_id(conn, exclude_chats=exclude_chats, models=models)
        if turn_id is None:
            return None
        return start_attempt(
            conn,
            turn_id,
            worker_id,
            max_messages=max_messages,
            max_chars=max_chars,
            lease_ms=lease_ms,
            include_failed=include_failed,
        )

    return await db.run_write(claim)


async def queued_heads(db: Database, limit: int = 1000) -> list[tuple[str, str]]:
    """``(turn_id, chat_id)`` of queued turns that head their chat (what waits for a worker)."""
    async with db.read() as session:
        query = (
            select(Turn.id, Turn.chat_id)
            .where(Turn.state == "queued", _heads_its_chat())
            .order_by(Turn.id)
            .limit(limit)
        )
        return [(row[0], row[1]) for row in (await session.execute(query)).all()]


async def has_running_turn(db: Database, chat_id: str) -> bool:
    """Whether some instance runs a turn of the chat."""
    async with db.read() as session:
        found = await session.scalar(
            select(Turn.id).where(Turn.chat_id == chat_id, Turn.state == "running").limit(1)
        )
    return found is not None


@dataclass(frozen=True, slots=True)
class Renewal:
    """What renewing told the holder about the attempts it sent, by turn id."""

    # Cancelled in the store while this attempt held it: the holder ends it as cancelled.
    cancelled: set[str] = field(default_factory=set)
    # No longer this attempt's: a later attempt started (another instance reclaimed the turn
    # when its lease ran out), the turn was re-queued or ended without it, or it is gone. The
    # holder stops it without writing to the store.
    lost: set[str] = field(default_factory=set)


async def renew(db: Database, held: Mapping[str, int], lease_ms: int) -> Renewal:
    """Extend the leases of the attempts this instance holds (``held``: attempt by turn id).

    Only a row that is still running under the held attempt is extended; the others are
    reported back, so the holder stops them even when the cancel broadcast did not reach it,
    and stops streaming an attempt that another instance has replaced.
    """
    if not held:
        return Renewal()
    ids = list(held)
    async with db.write() as session:
        await session.execute(
            update(Turn)
            .where(
                Turn.id.in_(ids),
                tuple_(Turn.id, Turn.attempt).in_(list(held.items())),
                Turn.state == "running",
            )
            .values(lease_expires_at=now_ms() + lease_ms)
        )
        # In the same transaction: a row renewed above stays locked (PostgreSQL) or unchanged
        # (SQLite's single writer) until the commit, and one that was not can never run under
        # the held attempt again (attempts only grow), so this reads a consistent answer.
        rows = await session.execute(
            select(Turn.id, Turn.state, Turn.attempt).where(Turn.id.in_(ids))
        )
        found = {row[0]: (row[1], row[2]) for row in rows.all()}
    renewal = Renewal()
    for turn_id, attempt in held.items():
        state, stored_attempt = found.get(turn_id, (None, None))
        if stored_attempt == attempt and state == "running":
            continue
        if stored_attempt == attempt and state == "cancelled":
            renewal.cancelled.add(turn_id)
        else:
            renewal.lost.add(turn_id)
    return renewal


@dataclass(frozen=True, slots=True)
class Reclaimed:
    turn_id: str
    chat_id: str
    tenant_id: str
    attempt: int
    message_id: str | None
    failed: bool
    correlation_id: str


async def reclaim_expired(
    db: Database, *, exclude: Collection[str], max_attempts: int, everything: bool = False
) -> list[Reclaimed]:
    """Re-queue running turns whose lease ran out (not those in ``exclude``: held here).

    ``exclude`` is read once the rows are selected, so a live view of what the caller holds
    also covers a turn it claimed while this waited for the store.

    A turn already at ``max_attempts`` fails instead. ``everything`` takes every running turn
    whatever its lease: for a relay that knows it is the only instance (after a restart).
    """
    async with db.write() as session:
        query = select(Turn).where(Turn.state == "running")
        if not everything:
            # A running turn without a lease predates leases: nobody vouches for it.
            query = query.where(
                or_(Turn.lease_expires_at.is_(None), Turn.lease_expires_at < now_ms())
            )
        query = query.order_by(Turn.id).with_for_update(skip_locked=True)
        rows = [t for t in (await session.scalars(query)).all() if t.id not in exclude]
        reclaimed: list[Reclaimed] = []
        for turn in rows:
            failed = turn.attempt >= max_attempts
            turn.worker_id = None
            turn.lease_expires_at = None
            if failed:
                turn.state = "failed"
                turn.finished_at = now_ms()
                turn.error_category = "internal"
                turn.error_detail = f"relay instance lost after {turn.attempt} attempts"
                if turn.response_message_id is not None:
                    answer = await session.get(Message, turn.response_message_id)
                    if answer is not None:
                        answer.status = "failed"
            else:
                turn.state = "queued"
            reclaimed.append(
                Reclaimed(
                    turn.id,
                    turn.chat_id,
                    turn.tenant_id,
                    turn.attempt,
                    turn.response_message_id,
                    failed,
                    turn.correlation_id or turn.id,
                )
            )
        await session.flush()
        return reclaimed


async def queue_figures(db: Database) -> tuple[int, int | None]:
    """How many turns wait in the queue, and when the oldest was created (ms; None: none)."""
    async with db.read() as session:
        row = (
            await session.execute(
                select(func.count(), func.min(Turn.created_at)).where(Turn.state == "queued")
            )
        ).one()
        return int(row[0] or 0), (int(row[1]) if row[1] is not None else None)


async def queued_count(db: Database) -> int:
    """How many turns wait in the queue (every instance's)."""
    async with db.read() as session:
        count = await session.scalar(select(func.count()).where(Turn.state == "queued"))
        return int(count or 0)
