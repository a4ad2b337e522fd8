"""Daily analytics: a tenant's figures per UTC day, for the operator (any tenant, or all of
them added up) and for a tenant key (its own tenant). Read from ``analytics_daily`` (see
:mod:`relayline.store.analytics`): a day appears once it was computed, with zeros when the
tenant had no activity that day.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from relayline.api.deps import Admin, State, TenantAnalytics
from relayline.api.schemas import ID_PATTERN
from relayline.errors import ValidationFailed
from relayline.store import analytics, tenants
from relayline.store.database import Database

router = APIRouter(tags=["analytics"])

DEFAULT_DAYS = 30


def _day_param(name: str) -> object:
    return Query(
        alias=name,
        min_length=10,
        max_length=10,
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="a UTC day, YYYY-MM-DD",
    )


FromDay = Annotated[str | None, _day_param("from")]
ToDay = Annotated[str | None, _day_param("to")]


class AnalyticsDayOut(BaseModel):
    day: str = Field(description="The UTC day, YYYY-MM-DD.")
    messages: int = Field(description="User messages posted.")
    turns: int = Field(description="Turns that ended: answered + cancelled + failed.")
    answered: int
    cancelled: int
    failed: int
    failed_by_category: dict[str, int] = Field(
        description="Failed turns by failure category (timeout, upstream_5xx, …)."
    )
    first_token_p50_ms: int | None = Field(
        description="Median time to the first token of the day's completed answers (nearest "
        "rank); null when none, and for all tenants (percentiles do not add up)."
    )
    first_token_p95_ms: int | None
    latency_p50_ms: int | None = Field(description="Median time to the whole answer.")
    latency_p95_ms: int | None
    tokens_in: int
    tokens_out: int
    usage_reported: int = Field(description="Answers whose token counts the model server sent.")
    usage_counted: int = Field(description="… counted with the model server's tokenizer.")
    usage_estimated: int = Field(description="… estimated by the worker (~4 characters a token).")


class TenantTotalsOut(BaseModel):
    tenant_id: str
    name: str
    messages: int
    turns: int
    answered: int
    cancelled: int
    failed: int
    tokens_in: int
    tokens_out: int
    usage_reported: int
    usage_counted: int
    usage_estimated: int


class AnalyticsOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    tenant_id: str | None = Field(description="The tenant; null: every tenant added up.")
    first: str = Field(alias="from")
    last: str = Field(alias="to")
    aggregated_through: str | None = Field(
        description="The latest day computed, for any tenant (null: none yet)."
    )
    days: list[AnalyticsDayOut] = Field(
        description="Every computed day of the range, oldest first; a day not computed yet is "
        "absent."
    )
    tenants_active: int | None = Field(
        default=None, description="All tenants only: how many had activity in the range."
    )
    tenants: list[TenantTotalsOut] | None = Field(
        default=None,
        description=f"All tenants only: the {analytics.BUSIEST_TENANTS} busiest of the range "
        "(most messages), with their sums over it.",
    )


def _day(name: str, text: str) -> date:
    try:
        return analytics.parse_day(text)
    except ValueError:
        raise ValidationFailed(f"{name}: {text!r} is not a day (YYYY-MM-DD)") from None


def _range(first: str | None, last: str | None) -> tuple[date, date]:
    """The range asked for; by default the 30 days up to yesterday (UTC)."""
    end = _day("to", last) if last else analytics.utc_today() - timedelta(days=1)
    start = _day("from", first) if first else end - timedelta(days=DEFAULT_DAYS - 1)
    analytics.check_range(start, end)
    return start, end


async def _report(db: Database, tenant_id: str, start: date, end: date) -> AnalyticsOut:
    latest = await analytics.last_aggregated_day(db)
    rows = await analytics.daily(db, tenant_id, start, end)
    return AnalyticsOut(
        tenant_id=tenant_id,
        first=start.isoformat(),
        last=end.isoformat(),
        aggregated_through=latest.isoformat() if latest else None,
        days=[AnalyticsDayOut.model_validate(r) for r in rows],
    )


async def _all_tenants(db: Database, start: date, end: date) -> AnalyticsOut:
    latest = await analytics.last_aggregated_day(db)
    rows = await analytics.daily_all_tenants(db, start, end)
    active, busiest = await analytics.tenant_totals(db, start, end)
    return AnalyticsOut(
        tenant_id=None,
        first=start.isoformat(),
        last=end.isoformat(),
        aggregated_through=latest.isoformat() if latest else None,
        days=[AnalyticsDayOut.model_validate(r) for r in rows],
        tenants_active=active,
        tenants=[TenantTotalsOut.model_validate(t) for t in busiest],
    )


@router.get("/v1/admin/analytics", tags=["admin"])
async def admin_analytics(
    _: Admin,
    st: State,
    tenant: Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN)] = None,
    tenant_id: Annotated[
        str | None,
        Query(min_length=1, max_length=64, pattern=ID_PATTERN, description="Same as `tenant`."),
    ] = None,
    first: FromDay = None,
    last: ToDay = None,
) -> AnalyticsOut:
    """A tenant's daily figures, ``from``..``to`` (at most 366 days; default the last 30);
    without ``tenant``, every tenant's added up, with the busiest tenants' sums."""
    if tenant is not None and tenant_id is not None and tenant != tenant_id:
        raise ValidationFailed("tenant and tenant_id name different tenants")
    tenant_id = tenant or tenant_id
    start, end = _range(first, last)
    if tenant_id is None:
        return await _all_tenants(st.db, start, end)
    async with st.db.read() as session:
        await tenants.get_tenant(session, tenant_id)
    return await _report(st.db, tenant_id, start, end)


@router.get("/v1/analytics")
async def tenant_analytics(
    who: TenantAnalytics,
    st: State,
    first: FromDay = None,
    last: ToDay = None,
) -> AnalyticsOut:
    """The caller's tenant's daily figures, ``from``..``to`` (as the admin route), for a
    tenant key or a session token minted with ``analytics``."""
    start, end = _range(first, last)
    assert who.tenant_id is not None
    return await _report(st.db, who.tenant_id, start, end)
