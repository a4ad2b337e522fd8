"""Chats, their messages and turns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from relayline.clock import now_ms
from relayline.errors import Conflict, NotFound
from relayline.ids import new_id
from relayline.store.database import Database
from relayline.store.models import Chat, Message, Turn

ACTIVE_TURN_STATES = ("queued", "running")


@dataclass(frozen=True, slots=True)
class PostedMessage:
    message: Message
    turn: Turn | None
    created: bool


async def create_chat(session: AsyncSession, tenant_id: str, title: str | None) -> Chat:
    chat = Chat(
        id=new_id(), tenant_id=tenant_id, title=title, last_seq=0, created_at=now_ms(), kind="chat"
    )
    session.add(chat)
    await session.flush()
    return chat


async def list_chats(
    session: AsyncSession,
    tenant_id: str,
    *,
    after: str | None,
    limit: int,
    include_archived: bool,
    only: frozenset[str] | None = None,
) -> Sequence[Chat]:
    """Newest first; ``after`` is the last id of the previous page."""
    query = (
        select(Chat)
        .where(Chat.tenant_id == tenant_id, Chat.kind == "chat")
        .order_by(Chat.id.desc())
        .limit(limit)
    )
    if after:
        query = query.where(Chat.id < after)
    if not include_archived:
        query = query.where(Chat.archived_at.is_(None))
    if only is not None:
        query = query.where(Chat.id.in_(sorted(only)))
    return (await session.scalars(query)).all()


async def get_chat(session: AsyncSession, tenant_id: str, chat_id: str) -> Chat:
    chat = await session.get(Chat, chat_id)
    if chat is None or chat.tenant_id != tenant_id or chat.kind != "chat":
        raise NotFound("chat not found")
    return chat


async def archive_chat(session: AsyncSession, tenant_id: str, chat_id: str) -> Chat:
    chat = await get_chat(session, tenant_id, chat_id)
    if chat.archived_at is None:
        chat.archived_at = now_ms()
        await session.flush()
    return chat


async def find_by_client_msg_id(
    session: AsyncSession, chat_id: str, client_msg_id: str
) -> Message | None:
    query = select(Message).where(
        Message.chat_id == chat_id, Message.client_msg_id == client_msg_id
    )
    return (await session.scalars(query)).first()


# The hot path's statements are built once (Core, bound parameters): a post and a claim run
# them with no ORM unit of work and no per-call construction of the SQL expression.
CHATS: Table = Chat.__table__  # type: ignore[assignment]
MESSAGES: Table = Message.__table__  # type: ignore[assignment]
TURNS: Table = Turn.__table__  # type: ignore[assignment]

# One UPDATE … RETURNING both allocates the number and takes the row lock, so concurrent
# posters to one chat (on any instance) get distinct, gap-free sequence numbers; it also
# reads what a post checks (the chat's tenant, whether it is archived), and a refused post
# rolls the number back with its transaction.
BUMP_SEQ = (
    update(CHATS)
    .where(CHATS.c.id == bindparam("p_chat_id"))
    .values(last_seq=CHATS.c.last_seq + 1)
    .returning(CHATS.c.last_seq, CHATS.c.tenant_id, CHATS.c.archived_at, CHATS.c.kind)
)
INSERT_MESSAGE = insert(MESSAGES)
_INSERT_TURN = insert(TURNS)

# A post as one PostgreSQL statement (data-modifying CTEs), committed on its own: one round trip
# instead of ``BEGIN``, three statements and ``COMMIT``. The chat's number is taken only for a
# chat of the tenant that is not archived (no row otherwise: a read of the chat then says why),
# with the same row lock; a repeated ``client_msg_id`` fails the whole statement on the unique
# constraint, as it rolled back the transaction. A turn's ``request`` is JSON ``null``, as
# SQLAlchemy writes None.
_POST_ONE = sql_text(
    """WITH chat AS (
    UPDATE chats SET last_seq = last_seq + 1
    WHERE id = :p_chat_id AND tenant_id = :p_tenant_id AND kind = 'chat'
        AND archived_at IS NULL
    RETURNING last_seq
), message AS (
    INSERT INTO messages (id, chat_id, seq, role, content, status, finish_reason,
        client_msg_id, turn_id, created_at)
    SELECT CAST(:p_message_id AS VARCHAR), CAST(:p_chat_id AS VARCHAR), chat.last_seq, 'user',
        CAST(:p_content AS TEXT), 'complete', NULL, CAST(:p_client_msg_id AS VARCHAR),
        CAST(:p_turn_id AS VARCHAR), CAST(:p_now AS BIGINT)
    FROM chat
    RETURNING seq
), turn AS (
    INSERT INTO turns (id, chat_id, tenant_id, message_id, state, attempt, correlation_id,
        created_at, request)
    SELECT CAST(:p_turn_id AS VARCHAR), CAST(:p_chat_id AS VARCHAR),
        CAST(:p_tenant_id AS VARCHAR), CAST(:p_message_id AS VARCHAR), 'queued', 0,
        CAST(:p_correlation_id AS VARCHAR), CAST(:p_now AS BIGINT), CAST('null' AS JSON)
    FROM message
)
SELECT seq FROM message"""
)
_CHAT_OF_POST = select(CHATS.c.tenant_id, CHATS.c.archived_at, CHATS.c.kind).where(
    CHATS.c.id == bindparam("p_chat_id")
)


def next_seq(conn: Connection, chat_id: str) -> int:
    """The chat's next message number (the chat must exist)."""
    return int(conn.execute(BUMP_SEQ, {"p_chat_id": chat_id}).one()[0])


class _Refused(Exception):
    """A post the chat refuses (archived), raised inside the transaction to roll it back."""


async def post_user_message(
    db: Database,
    tenant_id: str,
    chat_id: str,
    content: str,
    client_msg_id: str | None,
    correlation_id: str | None = None,
) -> PostedMessage:
    """Store a user message and queue its turn, once per ``client_msg_id``; the turn keeps
    ``correlation_id`` (the creating request's id; default: the turn's own id).

    A repeated ``client_msg_id`` returns the original message (and its turn), whether the
    repeat arrives later or races the first one: the unique constraint decides the winner
    (one write either way: a transaction on SQLite, one statement on PostgreSQL; a repeat
    costs a rolled-back insert and a read).
    """
    now = now_ms()

    def rows(seq: int) -> tuple[Message, Turn]:
        turn_id = new_id()
        message = Message(
            id=new_id(),
            chat_id=chat_id,
            seq=seq,
            role="user",
            content=content,
            status="complete",
            finish_reason=None,
            client_msg_id=client_msg_id,
            turn_id=turn_id,
            created_at=now,
        )
        turn = Turn(
            id=turn_id,
            chat_id=chat_id,
            tenant_id=tenant_id,
            message_id=message.id,
            state="queued",
            attempt=0,
            worker_id=None,
            response_message_id=None,
            correlation_id=correlation_id or turn_id,
            error_category=None,
            error_detail=None,
            created_at=now,
            started_at=None,
            finished_at=None,
            lease_expires_at=None,
        )
        return message, turn

    def post(conn: Connection) -> PostedMessage:
        row = conn.execute(BUMP_SEQ, {"p_chat_id": chat_id}).first()
        if row is None or row.tenant_id != tenant_id or row.kind != "chat":
            raise NotFound("chat not found")
        if row.archived_at is not None:
            raise _Refused
        message, turn = rows(int(row.last_seq))
        conn.execute(INSERT_MESSAGE, _columns(message, MESSAGES))
        conn.execute(_INSERT_TURN, _columns(turn, TURNS))
        return PostedMessage(message, turn, created=True)

    async def post_one() -> PostedMessage:
        message, turn = rows(0)  # its seq comes from the statement
        params = {
            "p_chat_id": chat_id,
            "p_tenant_id": tenant_id,
            "p_message_id": message.id,
            "p_content": content,
            "p_client_msg_id": client_msg_id,
            "p_turn_id": turn.id,
            "p_correlation_id": turn.correlation_id,
            "p_now": now,
        }
        async with db.autocommit() as conn:
            seq = (await conn.execute(_POST_ONE, params)).scalar_one_or_none()
            if seq is None:
                chat = (await conn.execute(_CHAT_OF_POST, params)).first()
                if chat is None or chat.tenant_id != tenant_id or chat.kind != "chat":
                    raise NotFound("chat not found")
                raise _Refused
        message.seq = int(seq)
        return PostedMessage(message, turn, created=True)

    try:
        return await (db.run_write(post) if db.is_sqlite else post_one())
    except IntegrityError:
        if client_msg_id is None:
            raise
    except _Refused:
        if client_msg_id is not None:
            # A retry of a message stored before the chat was archived still gets its answer.
            async with db.read() as session:
                existing = await find_by_client_msg_id(session, chat_id, client_msg_id)
                if existing is not None:
                    return PostedMessage(existing, await _turn_of(session, existing), created=False)
        raise Conflict("chat is archived") from None
    async with db.read() as session:
        existing = await find_by_client_msg_id(session, chat_id, client_msg_id)
        if existing is None:  # the winner rolled back after all
            raise Conflict("message could not be stored, retry")
        return PostedMessage(existing, await _turn_of(session, existing), created=False)


def _columns(row: object, table: Table) -> dict[str, object]:
    return {column.key: getattr(row, column.key) for column in table.columns}


async def _turn_of(session: AsyncSession, message: Message) -> Turn | None:
    return await session.get(Turn, message.turn_id) if message.turn_id else None


async def list_messages(
    session: AsyncSession, chat_id: str, *, after_seq: int, limit: int
) -> Sequence[Message]:
    query = (
        select(Message)
        .where(Message.chat_id == chat_id, Message.seq > after_seq)
        .order_by(Message.seq)
        .limit(limit)
    )
    return (await session.scalars(query)).all()


# The turn in progress: the oldest queued or running one (built once, bound parameters).
_ACTIVE_TURN_ROW = (
    select(TURNS)
    .where(TURNS.c.chat_id == bindparam("p_chat_id"), TURNS.c.state.in_(ACTIVE_TURN_STATES))
    .order_by(TURNS.c.id)
    .limit(1)
)
_ACTIVE_TURN = select(Turn).from_statement(_ACTIVE_TURN_ROW)


async def active_turn(session: AsyncSession, chat_id: str) -> Turn | None:
    """The turn in progress, loaded into the session (to change it)."""
    return (await session.scalars(_ACTIVE_TURN, {"p_chat_id": chat_id})).first()


# A chat reload reads the chat and its turn in progress without changing them: Core selects
# built once, the rows made into objects of no session (no identity map, no ORM loading), which is
# most of what a reload costs the store.
_CHAT_ROW = select(CHATS).where(CHATS.c.id == bindparam("p_chat_id"))


def chat_for_reading(conn: Connection, tenant_id: str, chat_id: str) -> tuple[Chat, Turn | None]:
    """The chat and its turn in progress, read in one transaction (``Database.run_read``), as
    objects of no session (to read, not to change); ``NotFound`` as :func:`get_chat`."""
    row = conn.execute(_CHAT_ROW, {"p_chat_id": chat_id}).first()
    if row is None or row.tenant_id != tenant_id or row.kind != "chat":
        raise NotFound("chat not found")
    turn_row = conn.execute(_ACTIVE_TURN_ROW, {"p_chat_id": chat_id}).first()
    turn = Turn(**turn_row._mapping) if turn_row is not None else None
    return Chat(**row._mapping), turn


async def cancel_active_turn(session: AsyncSession, chat_id: str) -> Turn | None:
    """Mark the turn in progress (the oldest queued or running one) cancelled.

    Later queued turns keep waiting: cancel stops what is being answered, not what was asked
    after it. Returns the cancelled turn, or None when nothing was in progress.
    """
    turn = await active_turn(session, chat_id)
    if turn is not None:
        turn.state = "cancelled"
        turn.finished_at = now_ms()
        await session.flush()
    return turn
