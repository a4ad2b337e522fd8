"""``POST /v1/publish``: a tenant's backend pushes its own events into its topics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from relayline.api.deps import State, TenantPublish, check_max
from relayline.observability import hub_metrics as m

router = APIRouter(prefix="/v1", tags=["events"])


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(pattern=r"^custom\.[A-Za-z0-9_.:-]{1,64}$")
    data: dict[str, Any] = Field(default_factory=dict)


class PublishIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str = Field(min_length=1, max_length=80)
    events: list[EventIn] = Field(min_length=1, max_length=10_000)


class PublishOut(BaseModel):
    epoch: str
    seqs: list[int]


@router.post("/publish", status_code=202)
async def publish(body: PublishIn, who: TenantPublish, st: State) -> PublishOut:
    """Publish up to ``RELAYLINE_MAX_PUBLISH_EVENTS`` events, in order, with contiguous seqs."""
    check_max("events", len(body.events), st.settings.max_publish_events)
    await st.acl.check(who, body.topic)
    published = await st.bus.publish_many(body.topic, [(e.type, e.data) for e in body.events])
    m.EVENTS_PUBLISHED.inc(len(published))
    return PublishOut(epoch=published[0].epoch, seqs=[e.seq for e in published])
