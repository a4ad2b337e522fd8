"""Turn lifecycle in the store. Every write after assignment is fenced by the attempt number,
so a stale worker (an earlier attempt) can never overwrite the answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    Connection,
    Row,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncConnection

from relayline.clock import now_ms
from relayline.ids import new_id
from relayline.store.chats import INSERT_MESSAGE, MESSAGES, TURNS, next_seq
from relayline.store.database import Database
from relayline.store.models import MessageMetric, Tenant, Turn


@dataclass(frozen=True, slots=True)
class Assignment:
    turn_id: str
    chat_id: str
    tenant_id: str
    attempt: int
    message_id: str
    message_seq: int
    history: list[dict[str, str]]
    agent: dict[str, object]
    correlation_id: str
    # A completion's request (see relayline.store.completions); None for a chat turn.
    request: dict[str, object] | None = None


_TENANTS: Table = Tenant.__table__  # type: ignore[assignment]

# Starting an attempt: the turn's row takes the attempt, the worker and the lease, and names its
# answer (a new message, unless an earlier attempt already placed one), all in one statement.
_START = (
    update(TURNS)
    .where(TURNS.c.id == bindparam("p_turn_id"))
    .values(
        attempt=TURNS.c.attempt + 1,
        state="running",
        worker_id=bindparam("p_worker_id"),
        started_at=bindparam("p_now"),
        lease_expires_at=bindparam("p_lease_expires_at"),
        response_message_id=func.coalesce(TURNS.c.response_message_id, bindparam("p_answer_id")),
    )
    .returning(
        TURNS.c.chat_id,
        TURNS.c.tenant_id,
        TURNS.c.attempt,
        TURNS.c.message_id,
        TURNS.c.response_message_id,
        TURNS.c.correlation_id,
        TURNS.c.request,
    )
)
_RESTART_ANSWER = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("p_message_id"))
    .values(content="", status="streaming")
    .returning(MESSAGES.c.seq)
)
_AGENT = select(_TENANTS.c.agent_settings).where(_TENANTS.c.id == bindparam("p_tenant_id"))


def _history_statement() -> Select[str, str]:
    """The conversation up to a question, newest first (see :func:`history`)."""
    answer = MESSAGES
    question = MESSAGES.alias("question")
    asked = MESSAGES.alias("asked")
    # The question's own seq (its answer's when the question is gone).
    asked_seq = func.coalesce(
        select(asked.c.seq).where(asked.c.id == bindparam("p_question_id")).scalar_subquery(),
        bindparam("p_answer_seq"),
    )
    anchor = func.coalesce(question.c.seq, answer.c.seq)
    return (
        select(answer.c.role, answer.c.content)
        .outerjoin(
            question,
            and_(
                answer.c.role == "assistant",
                question.c.chat_id == answer.c.chat_id,
                question.c.turn_id == answer.c.turn_id,
                question.c.role == "user",
            ),
        )
        .where(
            answer.c.chat_id == bindparam("p_chat_id"),
            answer.c.content != "",
            or_(
                answer.c.role != "assistant",
                answer.c.status != "failed",
                bindparam("p_include_failed", type_=Boolean) == true(),
            ),
            or_(anchor < asked_seq, answer.c.seq == asked_seq),
        )
        .order_by(anchor.desc(), answer.c.seq.desc())
        .limit(bindparam("p_limit"))
    )


_HISTORY = _history_statement()


def start_attempt(
    conn: Connection,
    turn_id: str,
    worker_id: str,
    *,
    max_messages: int,
    max_chars: int,
    lease_ms: int | None,
    include_failed: bool = False,
) -> Assignment:
    """The write half of an assignment, inside the caller's transaction (which chose the turn,
    so choosing and starting it commit together)."""
    now = now_ms()
    new_answer_id = new_id()
    turn = conn.execute(
        _START,
        {
            "p_turn_id": turn_id,
            "p_worker_id": worker_id,
            "p_now": now,
            "p_lease_expires_at": now + lease_ms if lease_ms is not None else None,
            "p_answer_id": new_answer_id,
        },
    ).one()
    if turn.response_message_id == new_answer_id:
        # The answer takes its place in the chat now, so messages posted while it streams
        # come after it.
        answer_seq = next_seq(conn, turn.chat_id)
        conn.execute(
            INSERT_MESSAGE,
            {
                "id": new_answer_id,
                "chat_id": turn.chat_id,
                "seq": answer_seq,
                "role": "assistant",
                "content": "",
                "status": "streaming",
                "finish_reason": None,
                "client_msg_id": None,
                "turn_id": turn_id,
                "created_at": now,
            },
        )
    else:
        answer_seq = conn.execute(
            _RESTART_ANSWER, {"p_message_id": turn.response_message_id}
        ).scalar_one()
    if turn.request is not None:
        # A completion carries its whole conversation: no history to read, no agent settings.
        request = dict(turn.request)
        return Assignment(
            turn_id,
            turn.chat_id,
            turn.tenant_id,
            turn.attempt,
            turn.response_message_id,
            answer_seq,
            list(request.get("messages") or []),
            {},
            turn.correlation_id or turn_id,
            request,
        )
    agent = conn.execute(_AGENT, {"p_tenant_id": turn.tenant_id}).scalar_one_or_none()
    messages = history(
        conn,
        turn.chat_id,
        turn.message_id,
        answer_seq,
        max_messages,
        max_chars,
        include_failed,
    )
    return Assignment(
        turn_id,
        turn.chat_id,
        turn.tenant_id,
        turn.attempt,
        turn.response_message_id,
        answer_seq,
        messages,
        dict(agent) if agent else {},
        turn.correlation_id or turn_id,
    )


def history(
    conn: Connection,
    chat_id: str,
    question_id: str,
    answer_seq: int,
    max_messages: int,
    max_chars: int,
    include_failed: bool = False,
) -> list[dict[str, str]]:
    """The conversation up to the question ``question_id`` (answered at ``answer_seq``), in
    conversation order.

    An answer takes its seq when its turn starts, so messages queued behind a turn are stored
    before its answer. Each answer is therefore placed right after the question it answers,
    and questions asked after this one are left out.

    What goes back to the model: every question, every complete answer, and an answer the
    person stopped (its text is what they saw and reacted to). A failed answer does not: it is
    text the model never finished (cut by a timeout, a dead upstream, a lost worker), and
    feeding it back would have the model continue or imitate a broken reply; an operator who
    wants it anyway sets ``RELAYLINE_TURN_HISTORY_FAILED`` (``include_failed``).
    """
    params = _history_params(chat_id, question_id, answer_seq, max_messages, include_failed)
    return _picked(conn.execute(_HISTORY, params).all(), max_chars)


async def read_history(
    conn: AsyncConnection,
    chat_id: str,
    question_id: str,
    answer_seq: int,
    max_messages: int,
    max_chars: int,
    include_failed: bool = False,
) -> list[dict[str, str]]:
    """:func:`history`, on an async connection."""
    params = _history_params(chat_id, question_id, answer_seq, max_messages, include_failed)
    return _picked((await conn.execute(_HISTORY, params)).all(), max_chars)


def _history_params(
    chat_id: str, question_id: str, answer_seq: int, max_messages: int, include_failed: bool
) -> dict[str, object]:
    return {
        "p_chat_id": chat_id,
        "p_question_id": question_id,
        "p_answer_seq": answer_seq,
        "p_include_failed": include_failed,
        "p_limit": max_messages,
    }


def _picked(rows: Sequence[Row[str, str]], max_chars: int) -> list[dict[str, str]]:
    """The newest-first ``rows`` within ``max_chars``, in conversation order."""
    picked: list[dict[str, str]] = []
    total = 0
    for role, content in rows:
        if total + len(content) > max_chars:
            break  # oldest are dropped first: we walk newest to oldest
        total += len(content)
        picked.append({"role": role, "content": content})
    picked.reverse()
    return picked


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The answer an attempt's outcome was stored in."""

    id: str
    seq: int


_METRICS: Table = MessageMetric.__table__  # type: ignore[assignment]


def _finish_statement(writable: tuple[str, ...]) -> Update:
    return (
        update(TURNS)
        .where(
            TURNS.c.id == bindparam("p_turn_id"),
            TURNS.c.attempt == bindparam("p_attempt"),
            TURNS.c.state.in_(writable),
        )
        .values(
            state=bindparam("p_state"),
            finished_at=bindparam("p_now"),
            error_category=bindparam("p_category"),
            error_detail=bindparam("p_detail"),
        )
        .returning(TURNS.c.response_message_id, TURNS.c.tenant_id, TURNS.c.chat_id, TURNS.c.request)
    )


_FINISH = _finish_statement(("running",))
_FINISH_CANCELLED = _finish_statement(("running", "cancelled"))
_STORE_ANSWER = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("p_message_id"))
    .values(
        content=bindparam("p_content"),
        status=bindparam("p_status"),
        finish_reason=bindparam("p_finish_reason"),
    )
    .returning(MESSAGES.c.seq)
)
_INSERT_METRIC = insert(_METRICS)
_FORGET_REQUEST = update(TURNS).where(TURNS.c.id == bindparam("p_turn_id")).values(request=None)


# :func:`finish` as one PostgreSQL statement (data-modifying CTEs), committed on its own: one
# round trip instead of ``BEGIN``, three statements and ``COMMIT``. The same fence (the attempt,
# and the states it may leave: ``p_writable``), the same writes (the metrics row only with
# ``p_metric``), the same result: the answer's id and seq, or no row. A turn's ``request`` is
# JSON, where SQLAlchemy stores None as JSON ``null``: a chat turn's is ``null``, and a dropped
# one becomes ``null`` as the transaction's ``_FORGET_REQUEST`` makes it.
_FINISH_ONE = sql_text(
    """WITH fenced_turn AS (
    SELECT id, request IS NULL OR json_typeof(request) = 'null'
        OR COALESCE((request ->> 'keep')::boolean, false) AS kept
    FROM turns
    WHERE id = :p_turn_id AND attempt = :p_attempt
        AND state = ANY(CAST(:p_writable AS VARCHAR[]))
    FOR UPDATE
), ended AS (
    UPDATE turns
    SET state = :p_state, finished_at = :p_now, error_category = :p_category,
        error_detail = :p_detail,
        request = CASE WHEN fenced_turn.kept THEN turns.request ELSE CAST('null' AS JSON) END
    FROM fenced_turn
    WHERE turns.id = fenced_turn.id
    RETURNING turns.response_message_id, turns.tenant_id, turns.chat_id, fenced_turn.kept
), answer AS (
    UPDATE messages
    SET content = CASE WHEN ended.kept THEN CAST(:p_content AS TEXT) ELSE '' END,
        status = :p_status, finish_reason = :p_finish_reason
    FROM ended
    WHERE messages.id = ended.response_message_id
    RETURNING messages.id, messages.seq, ended.tenant_id, ended.chat_id
), metric AS (
    INSERT INTO message_metrics (id, message_id, tenant_id, chat_id, first_token_ms,
        latency_ms, tokens_in, tokens_out, usage_source, status, created_at)
    SELECT CAST(:m_id AS VARCHAR), answer.id, answer.tenant_id, answer.chat_id,
        CAST(:m_first_token_ms AS INTEGER), CAST(:m_latency_ms AS INTEGER),
        CAST(:m_tokens_in AS INTEGER), CAST(:m_tokens_out AS INTEGER),
        CAST(:m_usage_source AS VARCHAR), CAST(:p_status AS VARCHAR), CAST(:p_now AS BIGINT)
    FROM answer
    WHERE CAST(:p_metric AS BOOLEAN)
)
SELECT id, seq FROM answer"""
)
_WRITABLE = ["running"]
_WRITABLE_CANCELLED = ["running", "cancelled"]


async def finish(
    db: Database,
    turn_id: str,
    attempt: int,
    *,
    state: str,
    text: str,
    message_status: str,
    category: str | None = None,
    detail: str | None = None,
    metrics: dict[str, int | str | None] | None = None,
    finish_reason: str | None = None,
) -> StoredAnswer | None:
    """Store the outcome of ``attempt``; None when that attempt no longer owns the turn.

    A turn the store already marked cancelled (a cancel request) only takes ``cancelled``: a
    completion or failure that raced the cancel returns None and leaves it cancelled, so the
    store agrees with the ``turn.cancelled`` the chat was told. The turn, its answer and the
    answer's metrics commit together: on PostgreSQL as one statement (``_FINISH_ONE``), on
    SQLite as one transaction on the store's thread.
    """
    now = now_ms()
    if not db.is_sqlite:
        measured = metrics or {}
        params = {
            "p_turn_id": turn_id,
            "p_attempt": attempt,
            "p_writable": _WRITABLE_CANCELLED if state == "cancelled" else _WRITABLE,
            "p_state": state,
            "p_now": now,
            "p_category": category,
            "p_detail": (detail or "")[:1000] or None,
            "p_content": text,
            "p_status": message_status,
            "p_finish_reason": finish_reason,
            "p_metric": metrics is not None,
            "m_id": new_id() if metrics is not None else None,
            "m_first_token_ms": _int(measured.get("first_token_ms")),
            "m_latency_ms": _int(measured.get("latency_ms")),
            "m_tokens_in": _int(measured.get("tokens_in")),
            "m_tokens_out": _int(measured.get("tokens_out")),
            "m_usage_source": _str(measured.get("usage_source")),
        }
        async with db.autocommit() as conn:
            row = (await conn.execute(_FINISH_ONE, params)).first()
        return None if row is None else StoredAnswer(row[0], int(row[1]))

    def store(conn: Connection) -> StoredAnswer | None:
        fenced = conn.execute(
            _FINISH_CANCELLED if state == "cancelled" else _FINISH,
            {
                "p_turn_id": turn_id,
                "p_attempt": attempt,
                "p_state": state,
                "p_now": now,
                "p_category": category,
                "p_detail": (detail or "")[:1000] or None,
            },
        )
        row = fenced.first()
        if row is None:
            return None
        message_id, tenant_id, chat_id, request = row
        if message_id is None:
            return None
        kept = request is None or bool(request.get("keep"))
        if not kept:
            # A completion whose tenant does not keep them: its request goes, its answer's
            # text is not stored (its metrics are).
            conn.execute(_FORGET_REQUEST, {"p_turn_id": turn_id})
        seq = conn.execute(
            _STORE_ANSWER,
            {
                "p_message_id": message_id,
                "p_content": text if kept else "",
                "p_status": message_status,
                "p_finish_reason": finish_reason,
            },
        ).scalar_one_or_none()
        if seq is None:
            return None
        if metrics is not None:
            conn.execute(
                _INSERT_METRIC,
                {
                    "id": new_id(),
                    "message_id": message_id,
                    "tenant_id": tenant_id,
                    "chat_id": chat_id,
                    "first_token_ms": _int(metrics.get("first_token_ms")),
                    "latency_ms": _int(metrics.get("latency_ms")),
                    "tokens_in": _int(metrics.get("tokens_in")),
                    "tokens_out": _int(metrics.get("tokens_out")),
                    "usage_source": _str(metrics.get("usage_source")),
                    "status": message_status,
                    "created_at": now,
                },
            )
        return StoredAnswer(message_id, int(seq))

    return await db.run_write(store)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


async def requeue(db: Database, turn_id: str, attempt: int) -> bool:
    """Put a running attempt back in the queue (its worker was lost); fenced by attempt."""
    async with db.write() as session:
        result = await session.execute(
            update(Turn)
            .where(Turn.id == turn_id, Turn.attempt == attempt, Turn.state == "running")
            .values(state="queued", worker_id=None, lease_expires_at=None)
            .returning(Turn.id)
        )
        return result.first() is not None
