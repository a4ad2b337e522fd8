"""Tenant and session API: chats and their messages."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, Request

from relayline import session_tokens
from relayline.api import schemas as s
from relayline.api.deps import (
    State,
    TenantChats,
    TenantOnlyChats,
    check_max,
    check_max_len,
    page_size,
)
from relayline.api.params import AfterId, AfterSeq, IdPath, Limit
from relayline.auth import Principal
from relayline.errors import Forbidden, NotFound, ValidationFailed
from relayline.store import chats

router = APIRouter(prefix="/v1/chats", tags=["chats"])


def _visible(who: Principal, chat_id: str) -> str:
    """The caller's tenant, after checking that a session token covers the chat."""
    if not who.allows_chat(chat_id):
        raise NotFound("chat not found")
    return who.require_tenant()


@router.post("", status_code=201)
async def create_chat(body: s.ChatIn, who: TenantChats, st: State) -> s.NewChatOut:
    """Create a chat. A session token may do so only when minted with ``can_create_chats``;
    it then gets a new token in ``session_token`` that also covers the new chat."""
    check_max_len("title", body.title, st.settings.max_title_chars)
    if who.kind == "session":
        if not who.can_create_chats:
            raise Forbidden("this session may not create chats")
        owned = sorted(who.chat_ids or ())
        check_max("chats of this session", len(owned) + 1, st.settings.max_session_chats)
    async with st.db.write() as session:
        chat = await chats.create_chat(session, who.require_tenant(), body.title)
    token = None
    if who.kind == "session":
        now = int(time.time())
        ttl = max(1, (who.expires_at or now) - now)
        token, _ = session_tokens.mint(
            st.settings.secret_key.get_secret_value(),
            who.require_tenant(),
            [*owned, chat.id],
            ttl,
            now,
            can_create_chats=True,
            can_read_analytics=who.can_read_analytics,
            terminals=who.terminals,
            terminal_ids=sorted(who.terminal_ids),
            can_use_completions=who.can_use_completions,
        )
    return s.NewChatOut(**s.ChatOut.of(chat).model_dump(), session_token=token)


@router.get("")
async def list_chats(
    who: TenantChats,
    st: State,
    after: AfterId = None,
    limit: Limit = None,
    archived: bool = False,
) -> s.ChatList:
    limit = page_size(limit, st.settings.max_page_size)
    async with st.db.read() as session:
        rows = await chats.list_chats(
            session,
            who.require_tenant(),
            after=after,
            limit=limit,
            include_archived=archived,
            only=who.chat_ids,
        )
    return s.ChatList(
        items=[s.ChatOut.of(r) for r in rows],
        next_after=rows[-1].id if len(rows) == limit else None,
    )


@router.get("/{chat_id}")
async def get_chat(chat_id: IdPath, who: TenantChats, st: State) -> s.ChatSnapshot:
    snap = await st.chats.snapshot(who, chat_id)
    return s.ChatSnapshot(
        **s.ChatOut.of(snap.chat).model_dump(),
        turn=s.TurnOut.of(snap.turn) if snap.turn else None,
        partial_message_id=snap.partial[0] if snap.partial else None,
        partial_text=snap.partial[1] if snap.partial else None,
        pending_approvals=[s.PendingApprovalOut.model_validate(a) for a in snap.pending_approvals],
        topic=snap.topic,
        epoch=snap.epoch,
        seq=snap.seq,
    )


@router.post("/{chat_id}/archive")
async def archive_chat(chat_id: IdPath, who: TenantOnlyChats, st: State) -> s.ChatOut:
    async with st.db.write() as session:
        return s.ChatOut.of(await chats.archive_chat(session, who.require_tenant(), chat_id))


@router.post("/{chat_id}/messages", status_code=202)
async def post_message(
    request: Request,
    chat_id: IdPath,
    body: s.MessageIn,
    who: TenantChats,
    st: State,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> s.PostedOut:
    tenant_id = _visible(who, chat_id)
    check_max_len("content", body.content, st.settings.max_message_chars)
    if idempotency_key is not None and not s.CLIENT_MSG_ID.fullmatch(idempotency_key):
        raise ValidationFailed("Idempotency-Key: 1 to 128 of A-Z a-z 0-9 . _ : -")
    # Another tenant's chat is answered as missing before the post counts against the chat's
    # rate limit: refused posts to its id must not use up its owner's budget.
    if await st.acl.chat_owner(chat_id) != tenant_id:
        raise NotFound("chat not found")
    client_msg_id = body.client_msg_id or idempotency_key
    request_id = request.state.request_id
    posted = await st.chats.post_message(who, chat_id, body.content, client_msg_id, request_id)
    return s.PostedOut(
        message=s.MessageOut.of(posted.message),
        turn_id=posted.turn.id if posted.turn else None,
        duplicate=not posted.created,
    )


@router.get("/{chat_id}/messages")
async def list_messages(
    chat_id: IdPath,
    who: TenantChats,
    st: State,
    after: AfterSeq = 0,
    limit: Limit = None,
) -> s.MessageList:
    tenant_id = _visible(who, chat_id)
    limit = page_size(limit, st.settings.max_page_size)
    async with st.db.read() as session:
        await chats.get_chat(session, tenant_id, chat_id)
        rows = await chats.list_messages(session, chat_id, after_seq=after, limit=limit)
    return s.MessageList(
        items=[s.MessageOut.of(r) for r in rows],
        next_after=rows[-1].seq if len(rows) == limit else None,
    )


@router.post("/{chat_id}/cancel")
async def cancel_turn(chat_id: IdPath, who: TenantChats, st: State) -> s.CancelOut:
    turn = await st.chats.cancel(who, chat_id)
    return s.CancelOut(cancelled=turn is not None, turn_id=turn.id if turn else None)
