"""Operator API for turns: is anyone waiting on an answer, why, and since when.

Read from the store, which every relay instance shares: any instance answers for all of them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from relayline.api.deps import Admin, State, page_size
from relayline.api.params import Limit
from relayline.api.schemas import ID_PATTERN
from relayline.clock import now_ms
from relayline.store import tenants, turn_reports

router = APIRouter(prefix="/v1/admin", tags=["admin"])

WINDOW_MS = 3_600_000  # "the last hour" of the summary

TurnState = Literal["queued", "running", "completed", "failed", "cancelled"]
QueryId = Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN)]


class TurnSummaryOut(BaseModel):
    queued: int = Field(description="Turns waiting for a worker, on every instance.")
    oldest_queued_s: float | None = Field(
        description="Seconds since the oldest queued turn was created; null when none waits."
    )
    running: int = Field(description="Turns a worker is answering now.")
    failed_last_hour: dict[str, int] = Field(
        description="Turns that failed in the last hour, by failure category (most first)."
    )
    completed_last_hour: int
    cancelled_last_hour: int


class TurnTimingsOut(BaseModel):
    queued_ms: int | None = Field(
        description="From the turn's creation to the start of its last attempt."
    )
    run_ms: int | None = Field(description="From the start of its last attempt to its end.")
    first_token_ms: int | None = Field(
        description="From the start of its last attempt to the answer's first text, when the "
        "answer's metrics were stored."
    )


class AdminTurnOut(BaseModel):
    id: str
    chat_id: str
    tenant_id: str
    tenant_name: str | None
    state: str
    attempt: int
    worker_id: str | None
    correlation_id: str | None = Field(
        description="The request id that follows the turn through every log line."
    )
    error_category: str | None
    error_detail: str | None
    created_at: int
    started_at: int | None
    finished_at: int | None
    timings: TurnTimingsOut

    @classmethod
    def of(cls, row: turn_reports.TurnReport) -> AdminTurnOut:
        return cls(
            id=row.id,
            chat_id=row.chat_id,
            tenant_id=row.tenant_id,
            tenant_name=row.tenant_name,
            state=row.state,
            attempt=row.attempt,
            worker_id=row.worker_id,
            correlation_id=row.correlation_id,
            error_category=row.error_category,
            error_detail=row.error_detail,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            timings=TurnTimingsOut(
                queued_ms=row.queued_ms, run_ms=row.run_ms, first_token_ms=row.first_token_ms
            ),
        )


class AdminTurnList(BaseModel):
    items: list[AdminTurnOut]
    next_before: str | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )


@router.get("/turns/summary")
async def turn_summary(_: Admin, st: State) -> TurnSummaryOut:
    now = now_ms()
    async with st.db.read() as session:
        figures = await turn_reports.summary(session, since=now - WINDOW_MS)
    oldest = figures.oldest_queued_at
    return TurnSummaryOut(
        queued=figures.queued,
        oldest_queued_s=max(0.0, (now - oldest) / 1000) if oldest is not None else None,
        running=figures.running,
        failed_last_hour=figures.failed_by_category,
        completed_last_hour=figures.completed,
        cancelled_last_hour=figures.cancelled,
    )


@router.get("/turns")
async def list_turns(
    _: Admin,
    st: State,
    state: TurnState = "failed",
    tenant_id: QueryId = None,
    before: QueryId = None,
    limit: Limit = None,
) -> AdminTurnList:
    """The latest turns in ``state`` (default ``failed``), newest first, optionally of one
    tenant (an unknown tenant is a 404); page with ``before``."""
    limit = page_size(limit, st.settings.max_page_size)
    async with st.db.read() as session:
        if tenant_id is not None:
            await tenants.get_tenant(session, tenant_id)
        rows = await turn_reports.list_turns(
            session, state=state, limit=limit, tenant_id=tenant_id, before=before
        )
    return AdminTurnList(
        items=[AdminTurnOut.of(r) for r in rows],
        next_before=rows[-1].id if len(rows) == limit else None,
    )
