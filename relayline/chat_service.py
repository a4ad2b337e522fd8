"""Chat actions shared by the REST API and the WebSocket ops, with the events they publish.

One code path for "post a message" and "cancel the turn" whichever door a client came
through: validation, per-chat rate limit, idempotency, storage, then the events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from relayline.auth import Principal
from relayline.bus.base import Bus
from relayline.config import Settings
from relayline.errors import NotFound, RateLimited, ValidationFailed
from relayline.limits import RateLimiter
from relayline.observability.metrics import RATE_LIMITED
from relayline.store import chats
from relayline.store.chats import PostedMessage
from relayline.store.database import Database
from relayline.store.models import Chat, Message, Turn
from relayline.turns.dispatcher import TurnDispatcher
from relayline.turns.events import chat_topic


def message_dict(row: Message) -> dict[str, Any]:
    return {
        "id": row.id,
        "chat_id": row.chat_id,
        "seq": row.seq,
        "role": row.role,
        "content": row.content,
        "status": row.status,
        "finish_reason": row.finish_reason,
        "client_msg_id": row.client_msg_id,
        "turn_id": row.turn_id,
        "created_at": row.created_at,
    }


@dataclass(frozen=True, slots=True)
class ChatSnapshot:
    """A chat as a client reloads it: the chat, its turn in progress with the text streamed so
    far and its open approval requests, and the topic position to resume events from."""

    chat: Chat
    turn: Turn | None
    partial: tuple[str, str] | None  # (message id, text so far) of the running answer
    pending_approvals: list[dict[str, Any]]
    topic: str
    epoch: str
    seq: int


class ChatService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        limiter: RateLimiter,
        dispatcher: TurnDispatcher,
        chat_owner: Callable[[str], Awaitable[str | None]],
    ) -> None:
        """``chat_owner``: the tenant owning a chat id, None for no such chat (the topic ACL's
        lookup, cached: a chat's owner never changes)."""
        self.settings = settings
        self.chat_owner = chat_owner
        self.db = db
        self.bus = bus
        self.events = dispatcher.ctx.events
        self.limiter = limiter
        self.dispatcher = dispatcher

    def visible_tenant(self, who: Principal, chat_id: str) -> str:
        """The caller's tenant, after checking that a session token covers the chat."""
        if not who.allows_chat(chat_id):
            raise NotFound("chat not found")
        return who.require_tenant()

    async def post_message(
        self,
        who: Principal,
        chat_id: str,
        content: str,
        client_msg_id: str | None,
        request_id: str | None = None,
    ) -> PostedMessage:
        """Store a message and queue its turn; ``request_id`` (the post's, or the send op's)
        becomes the turn's correlation id."""
        tenant_id = self.visible_tenant(who, chat_id)
        if not content:
            raise ValidationFailed("content: must not be empty")
        if len(content) > self.settings.max_message_chars:
            raise ValidationFailed(f"content: at most {self.settings.max_message_chars} characters")
        try:
            await self.limiter.hit("chat", chat_id)
        except RateLimited:
            RATE_LIMITED.labels("chat").inc()
            raise
        posted = await chats.post_user_message(
            self.db, tenant_id, chat_id, content, client_msg_id, request_id
        )
        if posted.created:
            turn = posted.turn
            await self.events.message_created(
                chat_id,
                message_dict(posted.message),
                turn.id if turn is not None else None,
                turn.correlation_id if turn is not None else None,
            )
            if posted.turn is not None:
                await self.dispatcher.enqueue(posted.turn.id, chat_id, tenant_id)
        return posted

    async def cancel(self, who: Principal, chat_id: str) -> Turn | None:
        tenant_id = self.visible_tenant(who, chat_id)
        async with self.db.write() as session:
            await chats.get_chat(session, tenant_id, chat_id)
            turn = await chats.cancel_active_turn(session, chat_id)
        if turn is not None:
            await self.dispatcher.cancel_running(chat_id, turn.id)
            await self.events.turn_cancelled(chat_id, turn.id, turn.correlation_id)
        return turn

    async def snapshot(self, who: Principal, chat_id: str) -> ChatSnapshot:
        tenant_id = self.visible_tenant(who, chat_id)
        # No topic position for a chat that is not the caller's (nor for one that does not
        # exist): the owner lookup is cached, so a reload of a known chat costs no read here.
        if await self.chat_owner(chat_id) != tenant_id:
            raise NotFound("chat not found")
        # Read the topic position before the state: a client that resumes from (epoch, seq)
        # may then see an event whose effect the snapshot already shows (it dedupes by message
        # id), but never misses one.
        topic = chat_topic(chat_id)
        epoch, seq = await self.bus.position(topic)
        partial = await self.dispatcher.partial(chat_id)
        approvals = await self.dispatcher.pending_approvals(chat_id)
        chat, turn = await self.db.run_read(
            lambda conn: chats.chat_for_reading(conn, tenant_id, chat_id)
        )
        running = turn.id if turn is not None and turn.state == "running" else None
        return ChatSnapshot(
            chat=chat,
            turn=turn,
            partial=partial,
            pending_approvals=[a for a in approvals if a.get("turn_id") == running],
            topic=topic,
            epoch=epoch,
            seq=seq,
        )

    async def approve(self, who: Principal, chat_id: str, approval_id: str, approve: bool) -> bool:
        """Forward a human decision on a tool call; False when nothing awaits it any more."""
        self.visible_tenant(who, chat_id)
        return await self.dispatcher.resolve_approval(chat_id, approval_id, approve)
