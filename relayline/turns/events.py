"""The one publisher of a conversation's events: ``message.*``, ``turn.*``, ``tool.approval_*``
and ``worker.state``. Every module that announces one calls a method here; nothing else spells
these event types, so each event's ``data`` has one shape.

Publishing never raises: the store is the truth, and a client that misses an event recovers
from the chat's snapshot (an event the bus could not take is logged as ``publish_failed``).
"""

from __future__ import annotations

from typing import Any

import structlog

from relayline.bus.base import Bus
from relayline.protocol.frames import (
    ApprovalResolvedData,
    MessageCompletedData,
    MessageCreatedData,
    MessageDeltaData,
    TurnCancelledData,
    TurnFailedData,
    TurnQueuedData,
    TurnRetryingData,
    TurnStartedData,
)
from relayline.protocol.names import EventType

log = structlog.get_logger("relayline.turns")


def chat_topic(chat_id: str) -> str:
    return f"chat:{chat_id}"


class ChatEvents:
    """Announces what happened in a chat on its topic (and workers' state to operators)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def _publish(self, topic: str, type: EventType, data: dict[str, Any]) -> None:
        try:
            await self.bus.publish(topic, type, data)
        except Exception:
            log.warning("publish_failed", topic=topic, type=str(type))

    # A message posted, and the turn it queued (one write, so one publish of both)

    async def message_created(
        self,
        chat_id: str,
        message: dict[str, Any],
        turn_id: str | None,
        correlation_id: str | None = None,
    ) -> None:
        created: MessageCreatedData = {"message": message}
        items: list[tuple[str, dict[str, Any]]] = [(EventType.MESSAGE_CREATED, dict(created))]
        if turn_id is not None:
            queued: TurnQueuedData = {
                "turn_id": turn_id,
                "message_id": message["id"],
                "correlation_id": correlation_id,
            }
            items.append((EventType.TURN_QUEUED, dict(queued)))
        try:
            await self.bus.publish_many(chat_topic(chat_id), items)
        except Exception:
            log.warning(
                "publish_failed", topic=chat_topic(chat_id), type=str(EventType.MESSAGE_CREATED)
            )

    # A turn's life

    async def turn_started(
        self,
        chat_id: str,
        turn_id: str,
        attempt: int,
        message_id: str,
        worker_id: str,
        correlation_id: str | None,
    ) -> None:
        data: TurnStartedData = {
            "turn_id": turn_id,
            "attempt": attempt,
            "message_id": message_id,
            "worker_id": worker_id,
            "correlation_id": correlation_id,
        }
        await self._publish(chat_topic(chat_id), EventType.TURN_STARTED, dict(data))

    async def message_delta(
        self,
        chat_id: str,
        message_id: str,
        turn_id: str,
        offset: int,
        text: str,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        data: MessageDeltaData = {
            "message_id": message_id,
            "turn_id": turn_id,
            "offset": offset,
            "text": text,
        }
        if tool_calls:
            data["tool_calls"] = tool_calls
        await self._publish(chat_topic(chat_id), EventType.MESSAGE_DELTA, dict(data))

    async def message_completed(
        self,
        chat_id: str,
        message_id: str,
        turn_id: str,
        seq: int,
        content: str,
        finish_reason: str,
        metrics: dict[str, Any],
        correlation_id: str | None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        data: MessageCompletedData = {
            "message_id": message_id,
            "turn_id": turn_id,
            "seq": seq,
            "content": content,
            "finish_reason": finish_reason,
            "metrics": metrics,
            "correlation_id": correlation_id,
        }
        if tool_calls:
            data["tool_calls"] = tool_calls
        await self._publish(chat_topic(chat_id), EventType.MESSAGE_COMPLETED, dict(data))

    async def turn_retrying(
        self, chat_id: str, turn_id: str, attempt: int, reason: str, correlation_id: str | None
    ) -> None:
        data: TurnRetryingData = {
            "turn_id": turn_id,
            "attempt": attempt,
            "reason": reason,
            "correlation_id": correlation_id,
        }
        await self._publish(chat_topic(chat_id), EventType.TURN_RETRYING, dict(data))

    async def turn_failed(
        self,
        chat_id: str,
        turn_id: str,
        message_id: str | None,
        category: str,
        detail: str,
        correlation_id: str | None,
    ) -> None:
        data: TurnFailedData = {
            "turn_id": turn_id,
            "message_id": message_id,
            "category": category,
            "detail": detail[:500],
            "correlation_id": correlation_id,
        }
        await self._publish(chat_topic(chat_id), EventType.TURN_FAILED, dict(data))

    async def turn_cancelled(
        self, chat_id: str, turn_id: str, correlation_id: str | None = None
    ) -> None:
        data: TurnCancelledData = {"turn_id": turn_id, "correlation_id": correlation_id}
        await self._publish(chat_topic(chat_id), EventType.TURN_CANCELLED, dict(data))

    # Tool approvals

    async def approval_requested(self, chat_id: str, request: dict[str, Any]) -> None:
        await self._publish(chat_topic(chat_id), EventType.TOOL_APPROVAL_REQUESTED, request)

    async def approval_resolved(self, chat_id: str, approval_id: str, decision: str) -> None:
        data: ApprovalResolvedData = {"approval_id": approval_id, "decision": decision}
        await self._publish(chat_topic(chat_id), EventType.TOOL_APPROVAL_RESOLVED, dict(data))

    # Workers

    async def no_worker(self, chat_id: str, turn_id: str) -> None:
        """The chat's turn waits: no instance has a worker."""
        await self._publish(
            chat_topic(chat_id), EventType.WORKER_STATE, {"status": "no_worker", "turn_id": turn_id}
        )

    async def worker_state(self, topics: list[str], state: dict[str, Any]) -> None:
        """A worker's state, to the operators' topic and the tenants it serves."""
        for topic in topics:
            await self._publish(topic, EventType.WORKER_STATE, state)
