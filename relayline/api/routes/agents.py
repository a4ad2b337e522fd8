"""Operator API for agents: each tenant's agent settings, and the connected workers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from relayline.api.deps import Admin, State
from relayline.api.params import IdPath
from relayline.errors import ValidationFailed
from relayline.protocol.generation import Generation
from relayline.store import tenants, turn_queue

router = APIRouter(prefix="/v1/admin", tags=["admin"])

KNOWN_TOOLS = ("read_file", "list_dir", "edit_file", "run_command")


class AgentSettings(Generation):
    """What a tenant's turns carry to the worker: the system prompt, the model, the tools it
    may use, and how answers are sampled (temperature, top_p, max_tokens, stop: see
    :mod:`relayline.protocol.generation`; a worker may hold them to lower limits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    system_prompt: str | None = Field(default=None, max_length=20_000)
    model: str | None = Field(default=None, max_length=200, pattern=r"^[\w.:/@+-]+$")
    tools: list[str] = Field(default_factory=list, max_length=len(KNOWN_TOOLS))
    # Completions of the OpenAI-compatible gateway are kept as chats (listed, with their
    # texts); off: only their turns and metrics are stored.
    store_completions: bool = False


class WorkerOut(BaseModel):
    worker_id: str
    key_id: str
    capacity: int
    inflight: int
    draining: bool
    status: str | None = None
    breaker: str | None = None
    last_error: str | None = None
    detail: str | None = None
    models: list[str] = Field(default_factory=list, description="The models it announces.")
    instance: str | None = Field(
        default=None,
        description="The relay instance the worker is connected to (with several instances).",
    )


class WorkerList(BaseModel):
    items: list[WorkerOut]
    queued_turns: int


@router.get("/tenants/{tenant_id}/agent")
async def get_agent(tenant_id: IdPath, _: Admin, st: State) -> AgentSettings:
    async with st.db.read() as session:
        tenant = await tenants.get_tenant(session, tenant_id)
    return AgentSettings.model_validate(tenant.agent_settings or {})


@router.put("/tenants/{tenant_id}/agent")
async def put_agent(tenant_id: IdPath, body: AgentSettings, _: Admin, st: State) -> AgentSettings:
    unknown = sorted(set(body.tools) - set(KNOWN_TOOLS))
    if unknown:
        raise ValidationFailed(f"tools: unknown {unknown}; known: {list(KNOWN_TOOLS)}")
    async with st.db.write() as session:
        tenant = await tenants.get_tenant(session, tenant_id)
        value: dict[str, Any] = body.model_dump()
        tenant.agent_settings = value
    return body


@router.get("/workers")
async def list_workers(_: Admin, st: State) -> WorkerList:
    queued = await turn_queue.queued_count(st.db)
    return WorkerList(
        items=[WorkerOut.model_validate(w) for w in await st.dispatcher.all_workers()],
        queued_turns=queued,
    )
