"""Tables. Timestamps are integer milliseconds since the Unix epoch (UTC), like event ``ts``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(26)

naming = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class Chat(Base):
    __tablename__ = "chats"
    __table_args__ = (Index("ix_chats_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    title: Mapped[str | None] = mapped_column(String(1000))
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    archived_at: Mapped[int | None] = mapped_column(BigInteger)
    # "chat": a conversation of the chat API (listed, readable); "completion": one request of
    # the OpenAI-compatible gateway that its tenant does not keep as a chat (never listed or
    # readable through the chat API; its texts are not stored).
    kind: Mapped[str] = mapped_column(String(16), default="chat", server_default="chat")


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("chat_id", "seq", name="uq_messages_chat_seq"),
        UniqueConstraint("chat_id", "client_msg_id", name="uq_messages_chat_client_msg_id"),
        # A turn's question and answer: the history sent with each attempt pairs them.
        Index("ix_messages_turn_id", "turn_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    chat_id: Mapped[str] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="complete")
    # How the model ended a complete answer: "stop", or "length" (cut at the length limit).
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    client_msg_id: Mapped[str | None] = mapped_column(String(128))
    turn_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (
        # A chat's active turns, oldest first: whether a turn heads its chat is one seek.
        Index("ix_turns_chat_id_state_id", "chat_id", "state", "id"),
        Index("ix_turns_state_lease", "state", "lease_expires_at"),
        # The claim walks queued turns oldest first and stops at the first that heads its chat.
        Index("ix_turns_state_id", "state", "id"),
        # The operator's pages: one tenant's turns in a state, newest first (and, by its prefix,
        # any lookup by tenant), and the turns that ended in a recent window, by outcome.
        Index("ix_turns_tenant_id_state_id", "tenant_id", "state", "id"),
        Index("ix_turns_state_finished_at", "state", "finished_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    chat_id: Mapped[str] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ID)
    message_id: Mapped[str] = mapped_column(ID)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    response_message_id: Mapped[str | None] = mapped_column(ID)
    # The request id of the post (or send op) that created the turn: on every log line about it,
    # in its events, and sent to the model server as X-Request-ID.
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    error_category: Mapped[str | None] = mapped_column(String(32))
    error_detail: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    # While running: until when the instance that holds the attempt vouches for it. Any
    # instance re-queues a running turn whose lease ran out (its holder died).
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    # A completion of the OpenAI-compatible gateway: only a worker that announces this model
    # may claim the turn (None: any worker, as for chat turns).
    model: Mapped[str | None] = mapped_column(String(200))
    # A completion's request as the worker gets it (messages with their tool calls, tools,
    # tool_choice, sampling) and whether its texts are kept; cleared when the turn ends unless
    # they are (see relayline.store.completions).
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class MessageMetric(Base):
    __tablename__ = "message_metrics"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    # Indexed with created_at (below): the daily analytics read one tenant's day at a time.
    tenant_id: Mapped[str] = mapped_column(ID)
    chat_id: Mapped[str] = mapped_column(ID)
    first_token_ms: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    # "reported" by the model server, or "estimated" by the worker (None: no counts).
    usage_source: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)


# Daily analytics (relayline.store.analytics): figures per tenant and UTC day, computed from the
# turns and the answers' metrics, which are read one tenant batch and one day at a time.

Index("ix_message_metrics_tenant_id_created_at", MessageMetric.tenant_id, MessageMetric.created_at)
Index("ix_turns_tenant_id_created_at", Turn.tenant_id, Turn.created_at)
Index("ix_turns_tenant_id_finished_at", Turn.tenant_id, Turn.finished_at)


class AnalyticsDaily(Base):
    """One tenant's figures for one UTC day (a row only for a tenant with activity that day).

    ``messages``: user messages posted that day (each queues one turn); ``turns``: turns that
    ended that day, ``answered`` + ``cancelled`` + ``failed``, with the failures by category.
    Percentiles (nearest rank) are over the day's completed answers; token sums and the counts
    by ``usage_source`` over every answer whose metrics were stored that day.
    """

    __tablename__ = "analytics_daily"
    __table_args__ = (Index("ix_analytics_daily_day", "day"),)

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # "YYYY-MM-DD", UTC
    messages: Mapped[int] = mapped_column(Integer)
    turns: Mapped[int] = mapped_column(Integer)
    answered: Mapped[int] = mapped_column(Integer)
    cancelled: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    failed_by_category: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_token_p50_ms: Mapped[int | None] = mapped_column(Integer)
    first_token_p95_ms: Mapped[int | None] = mapped_column(Integer)
    latency_p50_ms: Mapped[int | None] = mapped_column(Integer)
    latency_p95_ms: Mapped[int | None] = mapped_column(Integer)
    tokens_in: Mapped[int] = mapped_column(BigInteger)
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    usage_reported: Mapped[int] = mapped_column(Integer)
    usage_counted: Mapped[int] = mapped_column(Integer)
    usage_estimated: Mapped[int] = mapped_column(Integer)


class AnalyticsRun(Base):
    """A UTC day whose analytics were computed (with or without activity): the catch-up
    resumes after the latest, and retention deletes only the metrics of days listed here."""

    __tablename__ = "analytics_runs"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    finished_at: Mapped[int] = mapped_column(BigInteger)
    tenant_rows: Mapped[int] = mapped_column(Integer)  # analytics_daily rows written
    # When retention deleted the day's message_metrics (None: not yet).
    metrics_deleted_at: Mapped[int | None] = mapped_column(BigInteger)
