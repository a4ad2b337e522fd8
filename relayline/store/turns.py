"""Turn lifecycle in the store. Every write after assignment is fenced by the attempt number,
so a stale worker (an earlier attempt) can never overwrite the answer."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from relayline.clock import now_ms
from relayline.ids import new_id
from relayline.store.chats import _next_seq
from relayline.store.database import Database
from relayline.store.models import Message, MessageMetric, Tenant, Turn


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


async def start_attempt(
    session: AsyncSession,
    turn: Turn,
    worker_id: str,
    *,
    max_messages: int,
    max_chars: int,
    lease_ms: int | None,
    include_failed: bool = False,
) -> Assignment:
    """The write half of an assignment, inside the caller's transaction (which chose the turn,
    so choosing and starting it commit together)."""
    turn.attempt += 1
    turn.state = "running"
    turn.worker_id = worker_id
    turn.started_at = now_ms()
    turn.lease_expires_at = now_ms() + lease_ms if lease_ms is not None else None
    if turn.response_message_id is None:
        # The answer takes its place in the chat now, so messages posted while it streams
        # come after it.
        answer = Message(
            id=new_id(),
            chat_id=turn.chat_id,
            seq=await _next_seq(session, turn.chat_id),
            role="assistant",
            content="",
            status="streaming",
            turn_id=turn.id,
            created_at=now_ms(),
        )
        session.add(answer)
        turn.response_message_id = answer.id
    else:
        answer_or_none = await session.get(Message, turn.response_message_id)
        assert answer_or_none is not None
        answer = answer_or_none
        answer.content = ""
        answer.status = "streaming"
    await session.flush()
    tenant = await session.get(Tenant, turn.tenant_id)
    question = await session.get(Message, turn.message_id)
    asked_seq = question.seq if question is not None else answer.seq
    history = await _history(
        session, turn.chat_id, asked_seq, max_messages, max_chars, include_failed
    )
    return Assignment(
        turn.id,
        turn.chat_id,
        turn.tenant_id,
        turn.attempt,
        answer.id,
        answer.seq,
        history,
        dict(tenant.agent_settings) if tenant else {},
        turn.correlation_id or turn.id,
    )


async def _history(
    session: object,
    chat_id: str,
    asked_seq: int,
    max_messages: int,
    max_chars: int,
    include_failed: bool = False,
) -> list[dict[str, str]]:
    """The conversation up to the question at ``asked_seq``, in conversation order.

    An answer takes its seq when its turn starts, so messages queued behind a turn are stored
    before its answer. Each answer is therefore placed right after the question it answers,
    and questions asked after this one are left out.

    What goes back to the model: every question, every complete answer, and an answer the
    person stopped (its text is what they saw and reacted to). A failed answer does not: it is
    text the model never finished (cut by a timeout, a dead upstream, a lost worker), and
    feeding it back would have the model continue or imitate a broken reply; an operator who
    wants it anyway sets ``RELAYLINE_TURN_HISTORY_FAILED`` (``include_failed``).
    """
    from sqlalchemy.ext.asyncio import AsyncSession

    assert isinstance(session, AsyncSession)
    question = aliased(Message)
    anchor = func.coalesce(question.seq, Message.seq)
    query = (
        select(Message.role, Message.content)
        .outerjoin(
            question,
            and_(
                Message.role == "assistant",
                question.chat_id == Message.chat_id,
                question.turn_id == Message.turn_id,
                question.role == "user",
            ),
        )
        .where(
            Message.chat_id == chat_id,
            Message.content != "",
            or_(Message.role != "assistant", Message.status != "failed", literal(include_failed)),
            or_(anchor < asked_seq, Message.seq == asked_seq),
        )
        .order_by(anchor.desc(), Message.seq.desc())
        .limit(max_messages)
    )
    picked: list[dict[str, str]] = []
    total = 0
    for role, content in (await session.execute(query)).all():
        if total + len(content) > max_chars:
            break  # oldest are dropped first: we walk newest to oldest
        total += len(content)
        picked.append({"role": role, "content": content})
    picked.reverse()
    return picked


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
) -> Message | None:
    """Store the outcome of ``attempt``; None when that attempt no longer owns the turn.

    A turn the store already marked cancelled (a cancel request) only takes ``cancelled``: a
    completion or failure that raced the cancel returns None and leaves it cancelled, so the
    store agrees with the ``turn.cancelled`` the chat was told.
    """
    writable = ("running", "cancelled") if state == "cancelled" else ("running",)
    async with db.write() as session:
        fenced = await session.execute(
            update(Turn)
            .where(
                Turn.id == turn_id,
                Turn.attempt == attempt,
                Turn.state.in_(writable),
            )
            .values(
                state=state,
                finished_at=now_ms(),
                error_category=category,
                error_detail=(detail or "")[:1000] or None,
            )
            .returning(Turn.response_message_id, Turn.tenant_id, Turn.chat_id)
        )
        row = fenced.first()
        if row is None:
            return None
        message_id, tenant_id, chat_id = row
        message = await session.get(Message, message_id) if message_id else None
        if message is None:
            return None
        message.content = text
        message.status = message_status
        message.finish_reason = finish_reason
        if metrics is not None:
            session.add(
                MessageMetric(
                    id=new_id(),
                    message_id=message.id,
                    tenant_id=tenant_id,
                    chat_id=chat_id,
                    first_token_ms=_int(metrics.get("first_token_ms")),
                    latency_ms=_int(metrics.get("latency_ms")),
                    tokens_in=_int(metrics.get("tokens_in")),
                    tokens_out=_int(metrics.get("tokens_out")),
                    usage_source=_str(metrics.get("usage_source")),
                    status=message_status,
                    created_at=now_ms(),
                )
            )
        await session.flush()
        return message


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
