"""What a client receives: the event envelope, the deltas of an answer, the reset that follows
``events.missed``, and the errors the client raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a topic's log (the design's envelope)."""

    id: str
    topic: str
    type: str
    seq: int
    ts: int
    data: dict[str, Any]

    @classmethod
    def of(cls, frame: dict[str, Any]) -> Event:
        data = frame.get("data")
        return cls(
            id=str(frame.get("id", "")),
            topic=str(frame["topic"]),
            type=str(frame["type"]),
            seq=int(frame["seq"]),
            ts=int(frame.get("ts", 0)),
            data=data if isinstance(data, dict) else {},
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A chat as ``GET /v1/chats/{id}`` returns it: the turn in progress, its answer so far,
    its open tool approvals and the topic position the events resume from."""

    chat_id: str
    epoch: str
    seq: int
    turn: dict[str, Any] | None
    partial_message_id: str | None
    partial_text: str | None
    pending_approvals: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, body: dict[str, Any]) -> Snapshot:
        turn = body.get("turn")
        return cls(
            chat_id=str(body["id"]),
            epoch=str(body.get("epoch", "")),
            seq=int(body.get("seq", 0)),
            turn=turn if isinstance(turn, dict) else None,
            partial_message_id=body.get("partial_message_id"),
            partial_text=body.get("partial_text"),
            pending_approvals=list(body.get("pending_approvals") or []),
            raw=body,
        )


@dataclass(frozen=True, slots=True)
class Reset:
    """The relay no longer held the events a subscription missed (``events.missed``): whatever
    the subscriber built from earlier events is stale; ``snapshot`` is the chat as it is now
    (``None`` for a topic that is not a chat's). Events after it continue from its position."""

    topic: str
    reason: str
    snapshot: Snapshot | None


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of an answer, in order, never repeated."""

    message_id: str
    turn_id: str
    text: str


class ClientError(Exception):
    """Base of the errors of :mod:`relayline.client`."""


class OpError(ClientError):
    """The relay refused an op (an ``error`` frame) or a request (an HTTP error body)."""

    def __init__(self, code: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status


class ConnectionStopped(ClientError):
    """The connection ended for good: the relay refused it with a code after which a client does
    not reconnect (4403 and the like), a new token was needed and none came, or it was closed."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection stopped ({code}): {reason}" if code else reason)
        self.code = code
        self.reason = reason


class TurnFailed(ClientError):
    """The answer failed (``turn.failed``): ``category`` is the design's failure category."""

    def __init__(self, turn_id: str, category: str, detail: str) -> None:
        super().__init__(f"turn {turn_id} failed ({category}): {detail}")
        self.turn_id = turn_id
        self.category = category
        self.detail = detail


class TurnCancelled(ClientError):
    """The answer was cancelled (``turn.cancelled``) before it completed."""

    def __init__(self, turn_id: str) -> None:
        super().__init__(f"turn {turn_id} was cancelled")
        self.turn_id = turn_id
