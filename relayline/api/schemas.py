"""Request and response bodies of the HTTP API.

Length limits that depend on settings (message length, title length, page size) are checked
in the routes through :func:`relayline.api.deps.check_len` so the 422 names the field; the
hard ceilings here keep the OpenAPI document honest and reject absurd input early.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from relayline.store.models import ApiKey, Chat, Message, Tenant, Turn

CLIENT_MSG_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
Scope = Literal["chats", "sessions", "publish", "terminals"]
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
ChatId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]
# PostgreSQL cannot store NUL in text; refusing it here keeps both backends alike (422, not 500).
NO_NUL = r"^[^\x00]*$"
MAX_SEQ = 2**31 - 1  # messages.seq is a 32-bit integer column


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantIn(_In):
    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)


class TenantOut(BaseModel):
    id: str
    name: str
    disabled: bool
    created_at: int

    @classmethod
    def of(cls, row: Tenant) -> TenantOut:
        return cls(id=row.id, name=row.name, disabled=row.disabled, created_at=row.created_at)


class TenantList(BaseModel):
    items: list[TenantOut]
    next_after: str | None


class KeyIn(_In):
    # Omitted: every scope. An empty list is refused rather than read as "all".
    scopes: list[Scope] | None = Field(default=None, min_length=1, max_length=4)
    name: str | None = Field(default=None, max_length=200, pattern=NO_NUL)


class KeyOut(BaseModel):
    id: str
    tenant_id: str
    prefix: str
    name: str | None
    scopes: list[str]
    created_at: int
    last_used_at: int | None
    revoked_at: int | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyOut:
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            prefix=row.prefix,
            name=row.name,
            scopes=list(row.scopes),
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class NewKeyOut(KeyOut):
    key: str = Field(description="The secret key; shown only in this response.")


class KeyList(BaseModel):
    items: list[KeyOut]


class ChatIn(_In):
    title: str | None = Field(default=None, max_length=1000, pattern=NO_NUL)


class TurnOut(BaseModel):
    id: str
    state: str
    attempt: int
    error_category: str | None
    created_at: int
    started_at: int | None
    finished_at: int | None

    @classmethod
    def of(cls, row: Turn) -> TurnOut:
        return cls(
            id=row.id,
            state=row.state,
            attempt=row.attempt,
            error_category=row.error_category,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


class ChatOut(BaseModel):
    id: str
    title: str | None
    created_at: int
    archived_at: int | None
    last_seq: int

    @classmethod
    def of(cls, row: Chat) -> ChatOut:
        return cls(
            id=row.id,
            title=row.title,
            created_at=row.created_at,
            archived_at=row.archived_at,
            last_seq=row.last_seq,
        )


class NewChatOut(ChatOut):
    session_token: str | None = Field(
        default=None, description="For a session that created the chat: its new token."
    )


class PendingApprovalOut(BaseModel):
    """A tool call waiting for the user's decision, as announced by `tool.approval_requested`."""

    approval_id: str
    turn_id: str
    tool: str
    arguments: Any = Field(
        default=None,
        description="What the tool would be called with. When the open requests of a chat "
        "are large together, a value may be cut short: then it is the start of its JSON "
        "text, ending in `…`.",
    )
    deadline: int = Field(
        description="Unix time in milliseconds; no answer by then counts as a denial."
    )


class ChatSnapshot(ChatOut):
    """A chat with what a reloaded page needs: the turn in progress (with its answer so far
    and its open tool approvals) and the topic position."""

    turn: TurnOut | None
    partial_message_id: str | None = Field(
        default=None, description="The answer being generated, if any."
    )
    partial_text: str | None = Field(
        default=None,
        description="Its text so far; later `message.delta` events carry an "
        "`offset` into this text, so a client appends only what it does not have.",
    )
    pending_approvals: list[PendingApprovalOut] = Field(
        default_factory=list,
        description="The tool calls of the running turn still waiting for a decision, oldest "
        "first; later `tool.approval_resolved` events say which were decided.",
    )
    topic: str
    epoch: str | None
    seq: int


class ChatList(BaseModel):
    items: list[ChatOut]
    next_after: str | None


class MessageIn(_In):
    content: str = Field(min_length=1, max_length=1_000_000, pattern=NO_NUL)
    client_msg_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")


class MessageOut(BaseModel):
    id: str
    chat_id: str
    seq: int
    role: str
    content: str
    status: str
    finish_reason: str | None = Field(
        default=None,
        description='How the model ended a complete answer: "stop", or "length" (cut at the '
        "length limit); null for questions and for answers that did not complete.",
    )
    client_msg_id: str | None
    turn_id: str | None
    created_at: int

    @classmethod
    def of(cls, row: Message) -> MessageOut:
        return cls(
            id=row.id,
            chat_id=row.chat_id,
            seq=row.seq,
            role=row.role,
            content=row.content,
            status=row.status,
            finish_reason=row.finish_reason,
            client_msg_id=row.client_msg_id,
            turn_id=row.turn_id,
            created_at=row.created_at,
        )


class PostedOut(BaseModel):
    message: MessageOut
    turn_id: str | None
    duplicate: bool


class MessageList(BaseModel):
    items: list[MessageOut]
    next_after: int | None


class CancelOut(BaseModel):
    cancelled: bool
    turn_id: str | None


class SessionIn(_In):
    chat_ids: list[ChatId] = Field(default_factory=list, max_length=1000)
    ttl_s: int | None = Field(default=None, ge=30, le=30 * 86400)
    can_create_chats: bool = Field(
        default=False,
        description="The holder may create chats of its own; each creation "
        "returns a new token that also covers the new chat.",
    )
    analytics: bool = Field(
        default=False,
        description="The holder may also read its tenant's daily figures "
        "(GET /v1/analytics): for the tenant's own people, not for visitors.",
    )
    terminals: Literal["read", "write"] | None = Field(
        default=None,
        description="The holder's reach into terminal sessions: 'read' watches the terminals "
        "of its chats, of terminal_ids and those it opened; 'write' also opens terminals, "
        "types, resizes and ends them. Omitted: none. Needs a key with the terminals scope.",
    )
    terminal_ids: list[ChatId] = Field(default_factory=list, max_length=100)
    completions: bool = Field(
        default=False,
        description="The holder may also use the OpenAI-compatible gateway "
        "(POST /v1/chat/completions, GET /v1/models) as its tenant.",
    )


class SessionOut(BaseModel):
    token: str
    expires_at: int


class ErrorBody(BaseModel):
    code: str
    detail: str
    request_id: str


class ErrorOut(BaseModel):
    error: ErrorBody


# Terminal sessions

PROGRAM_PATTERN = r"^[a-z0-9_-]{1,32}$"
TERM_SIZE = Field(ge=1, le=500)


class TerminalIn(_In):
    program: str = Field(
        pattern=PROGRAM_PATTERN, description="a name from a worker's allowlist (not a command)"
    )
    chat_id: ChatId | None = Field(
        default=None, description="attach it to a chat: session tokens of that chat may see it"
    )
    cols: int = Field(ge=1, le=500)
    rows: int = Field(ge=1, le=500)
    cwd: str | None = Field(
        default=None,
        max_length=4096,
        pattern=NO_NUL,
        description="working directory inside the worker's workspace roots (default: the first)",
    )


class TerminalExitOut(BaseModel):
    reason: str
    status: int | None = None
    signal: int | None = None
    error: dict[str, str] | None = None


class TerminalOut(BaseModel):
    id: str
    topic: str
    program: str
    chat_id: str | None
    state: Literal["starting", "running", "detached", "exited"]
    cols: int
    rows: int
    worker_id: str
    created_at: int
    ended_at: int | None
    exit: TerminalExitOut | None
    writable: bool = Field(description="whether this caller may type, resize and end it")


class TerminalSnapshotOut(TerminalOut):
    epoch: str = Field(description="the topic's epoch: subscribe with it and seq to replay")
    seq: int = Field(description="the topic's last seq when this was read")


class NewTerminalOut(TerminalSnapshotOut):
    session_token: str | None = Field(
        default=None,
        description="for a session token: a new token that also lists this terminal",
    )


class TerminalList(BaseModel):
    items: list[TerminalOut]
    programs: list[str] = Field(description="the programs connected workers offer now")
