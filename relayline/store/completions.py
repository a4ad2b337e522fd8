"""Completions of the OpenAI-compatible gateway, stored as turns.

A completion is a turn like any other (same queue, leases, attempts, retries, outcomes and
metrics), in a chat of its own that holds its request's messages. What differs:

- the turn names the ``model`` it needs, so only a worker that announces that model claims it;
- the turn carries its ``request`` (messages with their tool calls, tools, tool choice,
  sampling), which the worker gets whole instead of a history read from the chat;
- unless the tenant keeps completions as chats (``request["keep"]``), the chat is of kind
  ``completion`` (never listed or readable through the chat API), holds no text (only its last
  message, empty, which the turn answers), and the request is cleared when the turn ends: what
  remains is the turn, its outcome and its answer's metrics, which feed the analytics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, update

from relayline.clock import now_ms
from relayline.ids import new_id
from relayline.store.chats import CHATS, MESSAGES, TURNS
from relayline.store.database import Database

_INSERT_CHAT = insert(CHATS)
_INSERT_MESSAGE = insert(MESSAGES)
_INSERT_TURN = insert(TURNS)
_FORGET = (
    update(TURNS)
    .where(TURNS.c.id == bindparam("p_turn_id"), TURNS.c.state.not_in(("queued", "running")))
    .values(request=None)
)

TITLE_CHARS = 80


@dataclass(frozen=True, slots=True)
class StoredCompletion:
    chat_id: str
    turn_id: str
    message_id: str  # the last message of the request: the one the turn answers


async def create(
    db: Database,
    tenant_id: str,
    *,
    chat_id: str,
    model: str,
    request: dict[str, Any],
    texts: Sequence[tuple[str, str]],
    keep: bool,
    correlation_id: str,
) -> StoredCompletion:
    """Store a completion's chat, messages and queued turn in one transaction.

    ``texts`` are the request's messages as ``(role, text)``, in order (at least one). With
    ``keep`` they are stored as the chat's messages; without, only the last is, empty.
    """
    now = now_ms()
    kept = list(texts) if keep else [(texts[-1][0], "")]
    turn_id = new_id()
    first_user = next((text for role, text in texts if role == "user" and text), None)
    title = first_user[:TITLE_CHARS] if keep and first_user else None
    message_ids = [new_id() for _ in kept]

    def store(conn: Connection) -> None:
        conn.execute(
            _INSERT_CHAT,
            {
                "id": chat_id,
                "tenant_id": tenant_id,
                "title": title,
                "last_seq": len(kept),
                "created_at": now,
                "archived_at": None,
                "kind": "chat" if keep else "completion",
            },
        )
        conn.execute(
            _INSERT_MESSAGE,
            [
                {
                    "id": message_id,
                    "chat_id": chat_id,
                    "seq": seq,
                    "role": role,
                    "content": text,
                    "status": "complete",
                    "finish_reason": None,
                    "client_msg_id": None,
                    # The last message is the question: the history pairs it with the answer.
                    "turn_id": turn_id if seq == len(kept) else None,
                    "created_at": now,
                }
                for seq, (message_id, (role, text)) in enumerate(
                    zip(message_ids, kept, strict=True), start=1
                )
            ],
        )
        conn.execute(
            _INSERT_TURN,
            {
                "id": turn_id,
                "chat_id": chat_id,
                "tenant_id": tenant_id,
                "message_id": message_ids[-1],
                "state": "queued",
                "attempt": 0,
                "worker_id": None,
                "response_message_id": None,
                "correlation_id": correlation_id,
                "error_category": None,
                "error_detail": None,
                "created_at": now,
                "started_at": None,
                "finished_at": None,
                "lease_expires_at": None,
                "model": model,
                "request": {**request, "keep": keep},
            },
        )

    await db.run_write(store)
    return StoredCompletion(chat_id, turn_id, message_ids[-1])


async def forget_request(db: Database, turn_id: str) -> None:
    """Clear an ended completion's request when its tenant does not keep completions (a turn
    cancelled before any attempt started ends without the outcome write that does it)."""
    async with db.write() as session:
        await session.execute(_FORGET, {"p_turn_id": turn_id})
