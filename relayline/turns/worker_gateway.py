"""``/v1/worker/ws``: workers connect out to the relay, authenticated by a signed handshake.

A refused handshake is answered with HTTP 401 and the error shape, whose ``code`` names the
failed check. After ``hello`` (worker id and capacity) the socket carries the worker protocol
of the design: ``state``, ``turn.delta``, ``turn.done``, ``turn.failed``, ``turn.released``
and ``tool.approval_request`` from the worker; ``turn.assigned``, ``turn.cancel`` and
``tool.approval`` to it. Frames for an attempt the worker no longer holds are refused. Frames of a
protocol extension (terminal sessions' ``term.*``) go to the observer that claims their type
(:mod:`relayline.turns.link_observer`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Sequence
from typing import Any

import structlog
from starlette.types import Receive, Scope, Send

from relayline.bus.base import Bus
from relayline.config import Settings
from relayline.errors import Unauthorized
from relayline.ids import new_id
from relayline.protocol import jsoncodec
from relayline.protocol.jsoncodec import JsonTooDeep
from relayline.protocol.names import ErrorCode, WorkerFrame
from relayline.turns.dispatcher import TurnDispatcher
from relayline.turns.link_observer import LinkObserver
from relayline.turns.signing import SignatureVerifier
from relayline.turns.worker_link import WorkerLink, announced_models

log = structlog.get_logger("relayline.workers")

# The longest one worker link's frames run without letting the rest of the relay in.
FRAME_SLICE_S = 0.0005

HELLO_TIMEOUT_S = 10.0

# The frame loop names these for every frame: an enum member costs a lookup through the enum's
# class each time it is named (~130 ns on Python 3.11), a module constant a dictionary read.
_STATE = WorkerFrame.STATE
_TURN_DELTA = WorkerFrame.TURN_DELTA
_TURN_DONE = WorkerFrame.TURN_DONE
_TURN_FAILED = WorkerFrame.TURN_FAILED
_TURN_RELEASED = WorkerFrame.TURN_RELEASED
_TURN_FRAMES = frozenset(
    {_TURN_DELTA, _TURN_DONE, _TURN_FAILED, _TURN_RELEASED, WorkerFrame.TOOL_APPROVAL_REQUEST}
)
_STATE_FIELDS = {"status": 32, "detail": 200, "breaker": 16, "last_error": 32}


class WorkerGateway:
    def __init__(
        self,
        settings: Settings,
        dispatcher: TurnDispatcher,
        verifier: SignatureVerifier,
        bus: Bus,
        observers: Sequence[LinkObserver] = (),
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.verifier = verifier
        self.bus = bus
        self.observers = tuple(observers)
        self._claimed = {kind: o for o in self.observers for kind in o.frame_types}
        self._raw = tuple((o.raw_prefix, o) for o in self.observers if o.raw_prefix)

    async def authenticate(self, scope: Scope) -> str:
        headers: dict[str, str] = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())
        }
        mode = self.settings.worker_auth
        auth = headers.get("authorization", "")
        if mode in ("token", "both") and auth[:7].lower() == "bearer ":
            token_id, _, secret = auth[7:].strip().partition(":")
            known = self.verifier.keys.get(token_id)
            if known is None:
                raise Unauthorized("unknown key id", code="unknown_key")
            if not hmac.compare_digest(known.encode(), secret.encode()):
                raise Unauthorized("invalid worker token", code="signature_invalid")
            return token_id
        if mode == "token":
            raise Unauthorized("worker token required")
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope["path"] + (f"?{query}" if query else "")
        key_id: str = await self.verifier.verify(headers, "GET", path, b"")
        return key_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            key_id = await self.authenticate(scope)
        except Unauthorized as exc:
            # This path skips the HTTP middleware, so the refusal gets its own request id.
            request_id = scope.get("state", {}).get("request_id") or new_id()
            log.warning("worker_refused", code=exc.code, request_id=request_id)
            body = json.dumps(
                {"error": {"code": exc.code, "detail": exc.detail, "request_id": request_id}}
            )
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body.encode()})
            return
        await send({"type": "websocket.accept"})
        hello = await self._hello(key_id, receive, send)
        if hello is None:
            return
        link, hello_frame = hello
        link.start()
        self.dispatcher.attach(link)
        for observer in self.observers:
            observer.attached(link, hello_frame)
        link.send(
            {
                "type": WorkerFrame.WELCOME,
                "worker_id": link.worker_id,
                "lease_s": self.settings.turn_lease_s,
                "capacity": link.capacity,
            }
        )
        await self._publish_state(link)
        log.info("worker_connected", worker_id=link.worker_id, capacity=link.capacity)
        try:
            await self._serve(link, receive)
        finally:
            await self.dispatcher.detach(link)
            await link.stop()
            for observer in self.observers:
                await observer.detached(link)
            link.state["status"] = "offline"
            await self._publish_state(link)
            log.info("worker_disconnected", worker_id=link.worker_id)

    async def _hello(
        self, key_id: str, receive: Receive, send: Send
    ) -> tuple[WorkerLink, dict[str, Any]] | None:
        async def send_text(text: str) -> None:
            await send({"type": "websocket.send", "text": text})

        async def close(code: int, reason: str) -> None:
            await send({"type": "websocket.close", "code": code, "reason": reason})

        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                message = await receive()
            frame = jsoncodec.loads(message.get("text") or "null")
        except (TimeoutError, ValueError):
            frame = None
        if not isinstance(frame, dict) or frame.get("type") != "hello":
            await close(4400, "expected hello")
            return None
        capacity = frame.get("capacity")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            await close(4400, "capacity must be a positive integer")
            return None
        if capacity > self.settings.max_worker_capacity:
            # Not a reason to refuse (the worker would only reconnect, forever): the relay
            # assigns at most its own maximum, and says so in the welcome.
            log.warning(
                "worker_capacity_capped",
                announced=capacity,
                capacity=self.settings.max_worker_capacity,
            )
            capacity = self.settings.max_worker_capacity
        raw_id = frame.get("worker_id")
        worker_id = raw_id[:64] if isinstance(raw_id, str) and raw_id else new_id()
        if worker_id in self.dispatcher.workers:
            worker_id = f"{worker_id}-{new_id()[-6:]}"
        link = WorkerLink(
            worker_id,
            key_id,
            capacity,
            send_text,
            close,
            announced_models(frame.get("models")),
            coalesces=frame.get("coalesces") is True,
        )
        return link, frame

    def _raw_reader(self, text: str) -> LinkObserver | None:
        """The observer that reads ``text`` before it is decoded, if any."""
        for prefix, observer in self._raw:
            if text.startswith(prefix):
                return observer
        return None

    async def _serve(self, link: WorkerLink, receive: Receive) -> None:
        dispatcher = self.dispatcher
        loop = asyncio.get_running_loop()
        slice_ends = loop.time() + FRAME_SLICE_S
        while True:
            # ``receive`` returns without suspending while frames wait in the link's inbox: a
            # worker flooding terminal output would hold the event loop for its whole inbox,
            # and every other link's frames (another worker's chat deltas) would wait behind
            # it. After a slice of work, the others get their turn.
            if loop.time() >= slice_ends:
                await asyncio.sleep(0)
                slice_ends = loop.time() + FRAME_SLICE_S
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text") or "null"
            # Checked without a coroutine: every turn delta passes here.
            reader = self._raw_reader(text) if self._raw else None
            if reader is not None and await reader.raw_frame(link, text):
                continue
            try:
                frame: Any = jsoncodec.loads(text)
            except ValueError as exc:
                detail = str(exc) if isinstance(exc, JsonTooDeep) else "frame is not JSON"
                link.send(
                    {"type": WorkerFrame.ERROR, "code": ErrorCode.INVALID_JSON, "detail": detail}
                )
                continue
            if not isinstance(frame, dict):
                continue
            kind = frame.get("type")
            if kind == _STATE:
                self._update_state(link, frame)
                dispatcher.renew(link)
                for observer in self.observers:
                    observer.state(link, frame)
                await self._publish_state(link)
                continue
            claimed = self._claimed.get(kind) if isinstance(kind, str) else None
            if claimed is not None:
                await claimed.frame(link, frame)
                continue
            if not isinstance(kind, str) or kind not in _TURN_FRAMES:
                link.send(
                    {
                        "type": WorkerFrame.ERROR,
                        "code": ErrorCode.UNKNOWN_TYPE,
                        "detail": "unknown frame type",
                    }
                )
                continue
            running = dispatcher.owned(link, frame)
            if running is None:
                link.send(
                    {
                        "type": WorkerFrame.ERROR,
                        "code": ErrorCode.STALE_ATTEMPT,
                        "turn_id": frame.get("turn_id"),
                        "detail": "this attempt no longer owns the turn",
                    }
                )
                continue
            if kind == _TURN_DELTA:
                text = frame.get("text")
                await dispatcher.on_delta(running, text if isinstance(text, str) else "")
                calls = frame.get("tool_calls")
                if calls is not None and dispatcher.turns.holds(running):
                    await dispatcher.on_tool_calls(running, calls)
            elif kind == _TURN_DONE:
                usage = frame.get("usage")
                await dispatcher.on_done(
                    running,
                    usage if isinstance(usage, dict) else {},
                    frame.get("finish_reason"),
                )
            elif kind == _TURN_FAILED:
                await dispatcher.on_failed(
                    running,
                    str(frame.get("category", "internal")),
                    str(frame.get("detail", ""))[:1000],
                )
                link.state["last_error"] = str(frame.get("category", "internal"))[:32]
            elif kind == _TURN_RELEASED:
                await dispatcher.on_released(running)
            else:
                await dispatcher.on_approval_request(running, frame)

    def _update_state(self, link: WorkerLink, frame: dict[str, Any]) -> None:
        for name, max_len in _STATE_FIELDS.items():
            value = frame.get(name)
            if value is None or isinstance(value, str):
                link.state[name] = value[:max_len] if value else value
        link.draining = frame.get("status") == "draining"

    async def _publish_state(self, link: WorkerLink) -> None:
        data = link.describe()
        tenants = {r.tenant_id for r in self.dispatcher.running.values() if r.worker is link}
        topics = ["admin", *(f"tenant:{t}" for t in sorted(tenants))]
        await self.dispatcher.ctx.events.worker_state(topics, data)
