"""What the operator reads about turns: the queue and recent outcomes, and turns by state.

Both read the store, which every relay instance shares, so any instance answers for all of
them. The queries stay cheap however many turns the store keeps:

- counts of queued and running turns walk ``(state, id)`` over the active turns only;
- outcomes of the last hour are a range of ``(state, finished_at)``, not every turn ever ended;
- a page of turns in a state is a backward walk of ``(state, id)``, or of
  ``(tenant_id, state, id)`` for one tenant, that stops after ``limit`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from relayline.store.models import MessageMetric, Tenant, Turn

ENDED = ("completed", "failed", "cancelled")
# A failed turn stored without a category (none is written so today) is counted under this.
UNKNOWN_CATEGORY = "unknown"


@dataclass(frozen=True, slots=True)
class TurnSummary:
    queued: int
    # When the oldest queued turn was created (ms since the epoch); None: nothing waits.
    oldest_queued_at: int | None
    running: int
    # Outcomes of turns that ended at or after ``since`` (ms).
    since: int
    failed_by_category: dict[str, int]
    completed: int
    cancelled: int


async def summary(session: AsyncSession, since: int) -> TurnSummary:
    """The queue now, and how turns that ended at or after ``since`` (ms) ended."""
    queued, oldest = (
        await session.execute(
            select(func.count(), func.min(Turn.created_at)).where(Turn.state == "queued")
        )
    ).one()
    running = await session.scalar(select(func.count()).where(Turn.state == "running"))
    ended = await session.execute(
        select(Turn.state, Turn.error_category, func.count())
        .where(Turn.state.in_(ENDED), Turn.finished_at >= since)
        .group_by(Turn.state, Turn.error_category)
    )
    failed: dict[str, int] = {}
    by_state = dict.fromkeys(ENDED, 0)
    for state, category, count in ended.all():
        by_state[state] += int(count)
        if state == "failed":
            key = category or UNKNOWN_CATEGORY
            failed[key] = failed.get(key, 0) + int(count)
    return TurnSummary(
        queued=int(queued or 0),
        oldest_queued_at=int(oldest) if oldest is not None else None,
        running=int(running or 0),
        since=since,
        failed_by_category=dict(sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))),
        completed=by_state["completed"],
        cancelled=by_state["cancelled"],
    )


@dataclass(frozen=True, slots=True)
class TurnReport:
    id: str
    chat_id: str
    tenant_id: str
    tenant_name: str | None
    state: str
    attempt: int
    worker_id: str | None
    correlation_id: str | None
    error_category: str | None
    error_detail: str | None
    created_at: int
    started_at: int | None
    finished_at: int | None
    # From the answer's stored metrics (present once an attempt ended with the turn).
    first_token_ms: int | None

    @property
    def queued_ms(self) -> int | None:
        """From creation to the start of the last attempt (a retry waits again)."""
        if self.started_at is None:
            return None
        return max(0, self.started_at - self.created_at)

    @property
    def run_ms(self) -> int | None:
        """From the start of the last attempt to the turn's end."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0, self.finished_at - self.started_at)


async def list_turns(
    session: AsyncSession,
    *,
    state: str,
    limit: int,
    tenant_id: str | None = None,
    before: str | None = None,
) -> list[TurnReport]:
    """Turns in ``state``, newest first (ids are creation-ordered), older than ``before``."""
    query = (
        select(Turn, Tenant.name, MessageMetric.first_token_ms)
        .outerjoin(Tenant, Tenant.id == Turn.tenant_id)
        .outerjoin(MessageMetric, MessageMetric.message_id == Turn.response_message_id)
        .where(Turn.state == state)
    )
    if tenant_id is not None:
        query = query.where(Turn.tenant_id == tenant_id)
    if before is not None:
        query = query.where(Turn.id < before)
    query = query.order_by(Turn.id.desc()).limit(limit)
    return [
        TurnReport(
            id=turn.id,
            chat_id=turn.chat_id,
            tenant_id=turn.tenant_id,
            tenant_name=name,
            state=turn.state,
            attempt=turn.attempt,
            worker_id=turn.worker_id,
            correlation_id=turn.correlation_id,
            error_category=turn.error_category,
            error_detail=turn.error_detail,
            created_at=turn.created_at,
            started_at=turn.started_at,
            finished_at=turn.finished_at,
            first_token_ms=first_token_ms,
        )
        for turn, name, first_token_ms in (await session.execute(query)).all()
    ]
