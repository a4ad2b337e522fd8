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

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import aliased

from relayline.clock import now_ms
from relayline.store.chats import TURNS
from relayline.store.database import Database
from relayline.store.models import Message, Turn
from relayline.store.turns import Assignment, start_attempt

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


def _claimable(models: bool, exclude: bool = False, one: bool = False) -> Select[str]:
    """The claim's query, locking the oldest claimable turn (``one``: the turn
    ``p_turn_id``, if it still is)."""
    query = select(TURNS.c.id).where(_claimable_heads(models))
    if exclude:
        query = query.where(TURNS.c.chat_id.not_in(bindparam("p_exclude", expanding=True)))
    if one:
        query = query.where(TURNS.c.id == bindparam("p_turn_id"))
    return query.order_by(TURNS.c.id).limit(1).with_for_update(skip_locked=True)


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
    one: Select[str]
    heads: Select[str, str]


# Built once: the claim runs after every post, and building this query is most of its cost.
# A worker that serves no model (a chat worker) gets statements without ``p_models``: an
# expanding parameter makes SQLAlchemy rewrite the statement's text on every execution.
_CLAIMS = {
    models: _Claims(
        _claimable(models),
        _claimable(models, exclude=True),
        _claimable(models, one=True),
        _heads(models),
    )
    for models in (False, True)
}

# At most this many chats to leave out are looked for among the first heads. A relay running
# many answers holds as many chats, and binding them all into the query (SQLAlchemy expands
# each into a parameter of its own, on every claim) cost ~0.6 ms a claim at 1,000; but a chat
# it holds can head the queue only once its turn has ended in the store (while the outcome is
# being announced, or after a cancel), which few do at a time. So the first heads are read and
# the held chats skipped here, and only the chosen turn is locked.
_EXCLUDE_BOUND = 16


def claimable_turn_id(
    conn: Connection,
    *,
    exclude_chats: Collection[str] = (),
    models: Collection[str] = (),
) -> str | None:
    """The oldest queued turn that heads its chat and that a worker serving ``models`` can
    answer (a turn that names no model, or one of them), locked for this transaction.

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
            if conn.dialect.name == "sqlite":
                return str(free)  # one writer: what this transaction read stays as it is
            locked = conn.execute(claims.one, {**params, "p_turn_id": free}).scalar_one_or_none()
            if locked is not None:
                return str(locked)
        # More held chats at the head than read, or the chosen turn was taken meanwhile
        # (another instance locked it): the whole query decides.
        result = conn.execute(claims.excluding, {**params, "p_exclude": list(exclude_chats)})
    else:
        result = conn.execute(claims.claimable, params)
    found = result.scalar_one_or_none()
    return None if found is None else str(found)


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
    in one transaction."""

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
