"""Browser session tokens, minted with a tenant key for a list of the tenant's chats."""

from __future__ import annotations

import time

from fastapi import APIRouter
from sqlalchemy import func, select

from relayline import session_tokens
from relayline.api import schemas as s
from relayline.api.deps import State, TenantSessions, check_max
from relayline.errors import Forbidden, NotFound, ValidationFailed
from relayline.store.models import Chat

router = APIRouter(prefix="/v1", tags=["sessions"])


@router.post("/sessions", status_code=201)
async def create_session(body: s.SessionIn, who: TenantSessions, st: State) -> s.SessionOut:
    settings = st.settings
    check_max("chat_ids", len(body.chat_ids), settings.max_session_chats)
    ttl = body.ttl_s if body.ttl_s is not None else settings.session_ttl_s
    check_max("ttl_s", ttl, settings.max_session_ttl_s)
    tenant_id = who.require_tenant()
    wanted = sorted(set(body.chat_ids))
    if not wanted and not (body.can_create_chats or body.terminal_ids or body.completions):
        raise ValidationFailed(
            "chat_ids: at least one chat (or can_create_chats, terminal_ids, completions)"
        )
    if body.terminal_ids and body.terminals is None:
        raise ValidationFailed("terminal_ids: needs terminals ('read' or 'write')")
    if body.terminals is not None and who.scopes and "terminals" not in who.scopes:
        raise Forbidden("this key lacks the 'terminals' scope")
    async with st.db.read() as session:
        owned = await session.scalar(
            select(func.count())
            .select_from(Chat)
            .where(Chat.tenant_id == tenant_id, Chat.id.in_(wanted))
        )
    if owned != len(wanted):
        raise NotFound("chat not found")
    token, expires_at = session_tokens.mint(
        settings.secret_key.get_secret_value(),
        tenant_id,
        wanted,
        ttl,
        int(time.time()),
        can_create_chats=body.can_create_chats,
        can_read_analytics=body.analytics,
        terminals=body.terminals,
        terminal_ids=body.terminal_ids,
        can_use_completions=body.completions,
    )
    return s.SessionOut(token=token, expires_at=expires_at)
