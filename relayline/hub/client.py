"""One authenticated WebSocket client: its ops, its subscriptions, its op budget."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import structlog

from relayline.auth import Principal
from relayline.bus.base import missed_event
from relayline.chat_service import ChatService, message_dict
from relayline.config import Settings
from relayline.envelope import Topic
from relayline.errors import (
    NotFound,
    RelaylineError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from relayline.hub.acl import TopicAcl
from relayline.hub.hub import Hub, control_frame
from relayline.hub.outbox import Outbox
from relayline.hub.wire import Wire, text_frame
from relayline.ids import new_id, valid_request_id
from relayline.observability import hub_metrics as m
from relayline.observability.metrics import RATE_LIMITED
from relayline.protocol import jsoncodec
from relayline.protocol.close_codes import Close
from relayline.protocol.jsoncodec import JsonTooDeep
from relayline.protocol.names import ErrorCode, Op
from relayline.terminals.service import TerminalService

log = structlog.get_logger("relayline.ws")

_MAX_REF_LEN = 64
# Typing is many small ops: these have a budget of their own (RELAYLINE_TERMINAL_INPUT_RATE).
_TERMINAL_OPS = frozenset({Op.TERM_INPUT, Op.TERM_RESIZE})


class TokenBucket:
    """Op budget of one connection: ``rate`` per second, bursts up to ``burst``."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _text(
    frame: dict[str, Any], name: str, *, required: bool = True, max_len: int = 256
) -> str | None:
    value = frame.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ValidationFailed(f"{name}: a string of 1 to {max_len} characters is required")
    return value


def _int(frame: dict[str, Any], name: str) -> int | None:
    value = frame.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationFailed(f"{name}: a non-negative integer is required")
    return value


OpHandler = Callable[["ClientConnection", dict[str, Any]], Awaitable[dict[str, Any]]]


class ClientConnection:
    """Handles the ops of one socket, in arrival order."""

    transport = "ws"

    # Slots and a class-level op table: this object lives as long as the socket, so what it
    # carries is multiplied by every idle connection.
    __slots__ = (
        "acl",
        "bucket",
        "chats",
        "hub",
        "last_ping",
        "outbox",
        "settings",
        "term_bucket",
        "terminals",
        "topics",
        "violations",
        "who",
        "wire",
    )

    def __init__(
        self,
        *,
        who: Principal,
        wire: Wire,
        hub: Hub,
        acl: TopicAcl,
        chats: ChatService,
        settings: Settings,
        terminals: TerminalService | None = None,
    ) -> None:
        self.who = who
        self.terminals = terminals
        self.term_bucket: TokenBucket | None = None  # made on the first terminal op
        self.wire = wire
        self.hub = hub
        self.acl = acl
        self.chats = chats
        self.settings = settings
        self.topics: set[str] = set()
        self.bucket = TokenBucket(settings.ws_op_rate, settings.ws_op_burst)
        self.violations = 0
        self.last_ping = 0.0
        self.outbox = Outbox(
            wire,
            max_bytes=settings.ws_queue_max_bytes,
            max_events=settings.ws_queue_max_events,
            policy=settings.ws_slow_policy,
            on_dropped=self._dropped,
        )

    # Plumbing

    def send_control(self, kind: str, payload: dict[str, Any]) -> None:
        self.outbox.push(control_frame(kind, payload))

    def close(self, code: int, reason: str = "") -> None:
        self.outbox.close(code, reason)

    def end_by_auth(self, code: int, reason: str) -> None:
        """Its credential was revoked or expired (see :mod:`relayline.live_credentials`)."""
        self.close(code, reason)

    def _dropped(self, topics: set[str]) -> None:
        # The client reloads these topics' snapshots, then resubscribes from there.
        for topic in topics:
            epoch, seq = self.hub.position_of(self.outbox, "ws", topic)
            missed = missed_event(topic, epoch, seq, "overflow")
            self.outbox.pending.append((text_frame(missed.frame), None))
            m.EVENTS_MISSED.inc()
            if topic.startswith("term:") and self.terminals is not None:
                # A terminal's snapshot comes on its topic: the screen as it is now.
                self.terminals.redraw(topic[5:])

    def _over_budget(self, op: object) -> bool:
        """Take one op from the connection's budget; True (and counted) when it is spent."""
        bucket = self.bucket
        if op in _TERMINAL_OPS:
            if self.term_bucket is None:
                self.term_bucket = TokenBucket(
                    self.settings.terminal_input_rate, self.settings.terminal_input_burst
                )
            bucket = self.term_bucket
        if bucket.take():
            return False
        self.violations += 1
        m.OPS.labels("-", "rate_limited").inc()
        RATE_LIMITED.labels("ws_ops").inc()
        return True

    def _refuse_over_budget(self) -> bool:
        if self.violations >= self.settings.ws_op_violations:
            self.close(Close.RATE_LIMITED, "op rate exceeded")
            return False
        self.send_control(
            "error",
            {
                "ref": None,
                "data": {"code": ErrorCode.RATE_LIMITED, "detail": "op rate exceeded; slow down"},
            },
        )
        return True

    async def handle_text(self, text: str) -> bool:
        """Handle one client frame; False when the connection must end."""
        try:
            frame = jsoncodec.loads(text)
        except ValueError as exc:
            if self._over_budget(None):
                return self._refuse_over_budget()
            detail = str(exc) if isinstance(exc, JsonTooDeep) else "frame is not valid JSON"
            self.send_control(
                "error", {"ref": None, "data": {"code": ErrorCode.INVALID_JSON, "detail": detail}}
            )
            return True
        if self._over_budget(frame.get("op") if isinstance(frame, dict) else None):
            return self._refuse_over_budget()
        if not isinstance(frame, dict):
            self.send_control(
                "error",
                {
                    "ref": None,
                    "data": {
                        "code": ErrorCode.VALIDATION_ERROR,
                        "detail": "frame must be a JSON object",
                    },
                },
            )
            return True
        ref = frame.get("ref")
        if ref is not None and (
            isinstance(ref, bool) or not isinstance(ref, str | int) or len(str(ref)) > _MAX_REF_LEN
        ):
            ref = None
        op = frame.get("op")
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            m.OPS.labels("unknown", "error").inc()
            self.send_control(
                "error",
                {"ref": ref, "data": {"code": ErrorCode.UNKNOWN_OP, "detail": "unknown op"}},
            )
            return True
        try:
            result = await handler(self, frame)
        except RelaylineError as exc:
            m.OPS.labels(op, exc.code).inc()
            self.send_control(
                "error", {"ref": ref, "data": {"code": exc.code, "detail": exc.detail}}
            )
            return True
        m.OPS.labels(op, "ok").inc()
        if ref is not None:
            self.send_control("ack", {"ref": ref, "data": result})
        elif op == Op.PING:
            self.send_control("pong", {})
        return True

    def _topic(self, frame: dict[str, Any]) -> str:
        topic = _text(frame, "topic", max_len=80)
        assert topic is not None
        Topic.parse(topic)
        return topic

    def _still_open(self) -> None:
        """Before an op changes anything: a connection the relay closed meanwhile (its
        credential revoked while the op awaited the store, say) does nothing more."""
        if self.outbox.closed:
            raise Unauthorized("connection closed")

    def _chat_of(self, topic: str) -> str:
        parsed = Topic.parse(topic)
        if parsed.kind != "chat" or parsed.id is None:
            raise ValidationFailed("topic: a chat topic is required")
        return parsed.id

    # Ops

    async def op_subscribe(self, frame: dict[str, Any]) -> dict[str, Any]:
        topic = self._topic(frame)
        epoch = _text(frame, "epoch", required=False, max_len=64)
        after_seq = _int(frame, "after_seq")
        if topic not in self.topics and len(self.topics) >= self.settings.ws_max_subscriptions:
            raise ValidationFailed(f"at most {self.settings.ws_max_subscriptions} subscriptions")
        await self.acl.check(self.who, topic)
        result = await self.hub.subscribe(self.outbox, "ws", topic, epoch, after_seq)
        self.topics.add(topic)
        if topic.startswith("term:") and self.terminals is not None:
            # A terminal's snapshot comes on its topic: the screen as it is now, then live.
            self.terminals.redraw(topic[5:])
        return result.as_dict()

    async def op_unsubscribe(self, frame: dict[str, Any]) -> dict[str, Any]:
        topic = self._topic(frame)
        self.topics.discard(topic)
        return {"topic": topic, "unsubscribed": self.hub.unsubscribe(self.outbox, "ws", topic)}

    async def op_send(self, frame: dict[str, Any]) -> dict[str, Any]:
        topic = self._topic(frame)
        chat_id = self._chat_of(topic)
        content = frame.get("content")
        if not isinstance(content, str):
            raise ValidationFailed("content: a string is required")
        client_msg_id = _text(frame, "client_msg_id", required=False, max_len=128)
        # The op's request id (its own, when it brings a well-formed one) becomes the turn's
        # correlation id, as a REST post's X-Request-ID does.
        given = frame.get("request_id")
        request_id = given if isinstance(given, str) and valid_request_id(given) else new_id()
        await self.acl.check(self.who, topic)
        self._still_open()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            posted = await self.chats.post_message(
                self.who, chat_id, content, client_msg_id, request_id
            )
        return {
            "message": message_dict(posted.message),
            "turn_id": posted.turn.id if posted.turn else None,
            "duplicate": not posted.created,
        }

    async def op_cancel(self, frame: dict[str, Any]) -> dict[str, Any]:
        topic = self._topic(frame)
        chat_id = self._chat_of(topic)
        await self.acl.check(self.who, topic)
        self._still_open()
        turn = await self.chats.cancel(self.who, chat_id)
        return {"cancelled": turn is not None, "turn_id": turn.id if turn else None}

    async def op_approve(self, frame: dict[str, Any]) -> dict[str, Any]:
        topic = self._topic(frame)
        chat_id = self._chat_of(topic)
        approval_id = _text(frame, "approval_id", max_len=64)
        decision = frame.get("decision")
        if decision not in ("approve", "deny"):
            raise ValidationFailed("decision: 'approve' or 'deny'")
        assert approval_id is not None
        await self.acl.check(self.who, topic)
        self._still_open()
        if not await self.chats.approve(self.who, chat_id, approval_id, decision == "approve"):
            raise NotFound("no pending approval with this id")
        return {"approval_id": approval_id, "decision": decision}

    async def op_ping(self, frame: dict[str, Any]) -> dict[str, Any]:
        return {"ts": int(time.time() * 1000)}

    def _terminal_of(self, topic: str) -> tuple[TerminalService, str]:
        parsed = Topic.parse(topic)
        if parsed.kind != "term" or parsed.id is None:
            raise ValidationFailed("topic: a terminal topic (term:<id>) is required")
        if self.terminals is None:
            raise Unavailable("this relay runs no terminals")
        return self.terminals, parsed.id

    async def op_term_input(self, frame: dict[str, Any]) -> dict[str, Any]:
        terminals, session_id = self._terminal_of(self._topic(frame))
        self._still_open()
        await terminals.input(self.who, session_id, frame.get("data"))
        return {}

    async def op_term_resize(self, frame: dict[str, Any]) -> dict[str, Any]:
        terminals, session_id = self._terminal_of(self._topic(frame))
        self._still_open()
        await terminals.resize(self.who, session_id, frame.get("cols"), frame.get("rows"))
        return {}

    def closed_by_peer(self) -> None:
        self.hub.drop(self.outbox, "ws", self.topics)
        self.topics.clear()

    ops: ClassVar[dict[str, OpHandler]] = {
        Op.SUBSCRIBE: op_subscribe,
        Op.UNSUBSCRIBE: op_unsubscribe,
        Op.SEND: op_send,
        Op.CANCEL: op_cancel,
        Op.PING: op_ping,
        Op.APPROVE: op_approve,
        Op.TERM_INPUT: op_term_input,
        Op.TERM_RESIZE: op_term_resize,
    }
