"""The worker's side of ``/v1/worker/ws``: connect out, announce capacity, run what is
assigned, stream it back, and reconnect with exponential backoff and full jitter.

Turns run as tasks; a lost connection cancels them (the relay re-queues them after the
lease), a ``turn.cancel`` cancels one, and a graceful stop finishes what it can within the
grace period and hands the rest back with ``turn.released``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import secrets
import time
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import urlsplit

import structlog
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from relayline.protocol import jsoncodec
from relayline.protocol.generation import Generation, policy_for
from relayline.protocol.names import TermExitReason, WorkerFrame
from relayline.protocol.signing import signed_headers
from relayline.worker import metrics
from relayline.worker.agent import AgentRunner
from relayline.worker.coalescing import DeltaCoalescer
from relayline.worker.cork import cork
from relayline.worker.llm.base import REQUEST_ID, ChatMessage, LLMError, ToolCall, ToolSpec
from relayline.worker.settings import WorkerSettings
from relayline.worker.terminals.host import TerminalHost

log = structlog.get_logger("relayline.worker")

PATH = "/v1/worker/ws"
BreakerState = Callable[[], str]


FRAME_TEXT_CHARS = 8192
"""Text per frame: at most 6 bytes per character once JSON-encoded (``\u001f``), so a frame
stays well within the relay's default 64 KiB frame limit."""


def _encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def shown_arguments(arguments: dict[str, Any]) -> dict[str, Any] | str:
    """What a person deciding on a tool call is shown: the arguments, or when they would not
    fit in one frame, the start of their JSON text ending in ``…`` (the tool still runs with
    all of them)."""
    text = json.dumps(arguments, ensure_ascii=False)
    return arguments if len(text) <= FRAME_TEXT_CHARS else text[:FRAME_TEXT_CHARS] + "…"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0, ceiling)


class RelayConnection:
    def __init__(
        self,
        settings: WorkerSettings,
        runner: AgentRunner,
        breaker_state: BreakerState = lambda: "closed",
        terminals: TerminalHost | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.breaker_state = breaker_state
        self.terminals = terminals
        self.worker_id = settings.worker_id or f"worker-{secrets.token_hex(4)}"
        self.turns: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self.approvals: dict[str, asyncio.Future[bool]] = {}
        self.ws: ClientConnection | None = None
        self.last_error: str | None = None
        self.draining = False
        self.connected = asyncio.Event()
        self._relay_index = 0

    @property
    def relay(self) -> str:
        """The relay this connection uses (or tries) now."""
        return self.settings.relay_urls[self._relay_index]

    def _url(self) -> str:
        parts = urlsplit(self.relay)
        scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
        return f"{scheme}://{parts.netloc}{PATH}"

    def _next_relay(self) -> None:
        self._relay_index = (self._relay_index + 1) % len(self.settings.relay_urls)

    def _headers(self) -> dict[str, str]:
        key_id = self.settings.worker_key_id
        secret = self.settings.worker_secret.get_secret_value()
        if self.settings.worker_token_auth:
            return {"Authorization": f"Bearer {key_id}:{secret}"}
        return signed_headers(key_id, secret, "GET", PATH)

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set; then drain and return. However it returns
        (stopped, cancelled, failed), every terminal session has ended by then."""
        try:
            await self._run(stop)
        finally:
            if self.terminals is not None:
                await self.terminals.aclose()

    async def _run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._session(stop)
            except InvalidStatus as exc:
                log.error(
                    "relay_refused",
                    status=exc.response.status_code,
                    body=exc.response.body[:200].decode("utf-8", "replace"),
                )
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                # InvalidHandshake: the relay hung up or answered garbage mid-handshake (it
                # is restarting, or a proxy is); retried like a lost connection.
                log.warning("relay_connection_lost", error=type(exc).__name__)
            finally:
                self.connected.clear()
                await self._abandon_turns()
            if stop.is_set():
                break
            self._next_relay()
            failures = 0 if time.monotonic() - started > 30 else failures + 1
            delay = backoff_delay(
                failures, self.settings.reconnect_base_s, self.settings.reconnect_max_s
            )
            log.info("relay_reconnect", in_s=round(delay, 2), relay=self.relay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> None:
        async with connect(
            self._url(),
            additional_headers=self._headers(),
            open_timeout=10,
            ping_interval=self.settings.relay_ping_s,
            ping_timeout=self.settings.relay_ping_s,
            max_size=16 * 1024 * 1024,
            compression=None,
        ) as ws:
            cork(ws)  # the frames of one event-loop pass leave in one write
            self.ws = ws
            self.draining = False
            hello: dict[str, Any] = {
                "type": WorkerFrame.HELLO,
                "worker_id": self.worker_id,
                "capacity": self.settings.worker_capacity,
                "models": [self.settings.model],
                # Answers' texts are coalesced here, as each turn.assigned's coalesce_ms says.
                "coalesces": True,
            }
            if self.terminals is not None:
                hello["terminals"] = self.terminals.announce()
            await self._send(hello)
            welcome = jsoncodec.loads(await asyncio.wait_for(ws.recv(), 10))
            self.worker_id = welcome.get("worker_id", self.worker_id)
            granted = welcome.get("capacity")
            if isinstance(granted, int) and granted < self.settings.worker_capacity:
                log.warning(
                    "capacity_capped_by_relay", asked=self.settings.worker_capacity, granted=granted
                )
            self.connected.set()
            log.info("relay_connected", worker_id=self.worker_id, relay=self.relay)
            if self.terminals is not None:
                # Terminal frames come as str or as UTF-8 bytes: text frames either way.
                self.terminals.link_up(functools.partial(ws.send, text=True))
            ticker = asyncio.create_task(self._tick())
            stopper = asyncio.create_task(self._stop_when(stop))
            try:
                async for raw in ws:
                    await self._on_frame(jsoncodec.loads(raw))
            finally:
                ticker.cancel()
                stopper.cancel()
                self.ws = None
                if self.terminals is not None:
                    self.terminals.link_down()

    async def _stop_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.draining = True
        await self._send_state()
        if self.terminals is not None:
            # Terminals end first (within their own grace), their last frames sent.
            await self.terminals.close_all(TermExitReason.SHUTDOWN)
            await self.terminals.outbox.drained(2.0)
        grace = self.settings.shutdown_grace_s
        tasks = [task for _, task in self.turns.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for turn_id, (attempt, task) in list(self.turns.items()):
            task.cancel()
            await self._send(
                {"type": WorkerFrame.TURN_RELEASED, "turn_id": turn_id, "attempt": attempt}
            )
        if self.ws is not None:
            await self.ws.close()

    async def _tick(self) -> None:
        while True:
            await self._send_state()
            await asyncio.sleep(self.settings.state_interval_s)

    async def _send_state(self) -> None:
        state: dict[str, Any] = {
            "type": WorkerFrame.STATE,
            "status": "draining" if self.draining else "ready",
            "inflight": len(self.turns),
            "capacity": self.settings.worker_capacity,
            "breaker": self.breaker_state(),
            "last_error": self.last_error,
            "detail": None,
        }
        if self.terminals is not None:
            state["terminals"] = self.terminals.announce()
        await self._send(state)

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._send_text(_encode(frame))

    async def _send_text(self, text: str) -> None:
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(text)

    async def _abandon_turns(self) -> None:
        for _, task in self.turns.values():
            task.cancel()
        for _, task in list(self.turns.values()):
            with contextlib.suppress(BaseException):
                await task
        self.turns.clear()
        for future in self.approvals.values():
            if not future.done():
                future.set_result(False)
        self.approvals.clear()

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == WorkerFrame.TURN_ASSIGNED:
            turn_id = str(frame["turn_id"])
            attempt = int(frame["attempt"])
            if self.draining or len(self.turns) >= self.settings.worker_capacity:
                await self._send(
                    {"type": WorkerFrame.TURN_RELEASED, "turn_id": turn_id, "attempt": attempt}
                )
                return
            task = asyncio.create_task(self._run_counted(frame))
            self.turns[turn_id] = (attempt, task)
        elif kind == WorkerFrame.TURN_CANCEL:
            held = self.turns.get(str(frame.get("turn_id")))
            if held is not None and held[0] == frame.get("attempt"):
                held[1].cancel()
        elif kind == WorkerFrame.TOOL_APPROVAL:
            future = self.approvals.pop(str(frame.get("approval_id")), None)
            if future is not None and not future.done():
                future.set_result(frame.get("decision") == "approve")
        elif isinstance(kind, str) and kind.startswith("term.") and self.terminals is not None:
            self.terminals.handle(frame)
        elif kind == WorkerFrame.ERROR:
            log.warning("relay_error", code=frame.get("code"), detail=frame.get("detail"))

    async def _run_counted(self, frame: dict[str, Any]) -> None:
        """Run one turn, counted: in flight until it ends, then done, failed or cancelled."""
        count = metrics.TurnCount()
        try:
            await self._run_turn(frame, count)
        except asyncio.CancelledError:
            count.end("cancelled")
            raise
        finally:
            count.end("failed")  # only if nothing above counted it, e.g. a bug

    async def _run_turn(self, frame: dict[str, Any], count: metrics.TurnCount) -> None:
        turn_id = str(frame["turn_id"])
        attempt = int(frame["attempt"])
        base = {"turn_id": turn_id, "attempt": attempt}
        # This task's own context: every log line about the turn (the agent's, the tools', the
        # model client's) carries its correlation id, and the model server gets it too.
        correlation_id = frame.get("correlation_id")
        correlation_id = str(correlation_id)[:128] if correlation_id else None
        structlog.contextvars.bind_contextvars(
            turn_id=turn_id, attempt=attempt, correlation_id=correlation_id
        )
        REQUEST_ID.set(correlation_id)
        try:
            messages = [ChatMessage.from_dict(m) for m in frame.get("messages", [])]
        except (ValueError, TypeError, AttributeError):
            count.end("failed")
            await self._send(
                {
                    "type": WorkerFrame.TURN_FAILED,
                    **base,
                    "category": "internal",
                    "detail": "malformed turn history",
                }
            )
            self.turns.pop(turn_id, None)
            return
        model = str(frame.get("model") or self.runner.model)
        try:
            asked = Generation.model_validate(frame.get("generation") or {})
        except ValidationError:
            count.end("failed")
            await self._send(
                {
                    "type": WorkerFrame.TURN_FAILED,
                    **base,
                    "category": "internal",
                    "detail": "malformed generation settings",
                }
            )
            self.turns.pop(turn_id, None)
            return
        options = policy_for(self.settings.generation, model).apply(asked)
        if frame.get("system_prompt"):
            messages.insert(0, ChatMessage(role="system", content=str(frame["system_prompt"])))
        deadline_ms = frame.get("deadline")
        timeout = (
            max(1.0, deadline_ms / 1000 - time.time()) if isinstance(deadline_ms, int) else None
        )

        # A delta's frame is this head, the text as a JSON string, and "}": the same text as
        # _send would make of {"type", **base, "text"}, without encoding the rest every time.
        delta_head = _encode({"type": WorkerFrame.TURN_DELTA, **base, "text": ""})[:-3]

        async def send_delta(text: str) -> None:
            if len(text) <= FRAME_TEXT_CHARS:
                await self._send_text(delta_head + encode_basestring(text) + "}")
                return
            # The relay caps frames (64 KiB by default): a long chunk goes out in pieces.
            for start in range(0, len(text), FRAME_TEXT_CHARS):
                piece = text[start : start + FRAME_TEXT_CHARS]
                await self._send_text(delta_head + encode_basestring(piece) + "}")

        completion = frame.get("completion")
        # The relay's coalescing window for this answer (none for a completion, whose reader
        # waits on each chunk): the texts are merged here, one frame per event the relay sends.
        coalesce_ms = frame.get("coalesce_ms")
        coalesce_chars = frame.get("coalesce_chars")
        max_chars = (
            min(coalesce_chars, FRAME_TEXT_CHARS)
            if type(coalesce_chars) is int and coalesce_chars > 0
            else FRAME_TEXT_CHARS
        )
        coalescer = (
            DeltaCoalescer(coalesce_ms / 1000, max_chars, send_delta)
            if type(coalesce_ms) is int and coalesce_ms > 0 and not isinstance(completion, dict)
            else None
        )
        on_delta = send_delta if coalescer is None else coalescer.add

        async def request_approval(tool: str, arguments: dict[str, Any]) -> bool:
            if coalescer is not None:
                await coalescer.flush()  # the text before the request reaches the relay first
            approval_id = secrets.token_urlsafe(12)
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self.approvals[approval_id] = future
            deadline = time.time() + self.settings.approval_timeout_s
            await self._send(
                {
                    "type": WorkerFrame.TOOL_APPROVAL_REQUEST,
                    **base,
                    "approval_id": approval_id,
                    "tool": tool,
                    "arguments": shown_arguments(arguments),
                    "deadline": int(deadline * 1000),
                }
            )
            log.info("approval_requested", approval_id=approval_id, tool=tool)
            try:
                approved = await asyncio.wait_for(future, self.settings.approval_timeout_s)
            except TimeoutError:
                log.info("approval_timed_out", approval_id=approval_id, tool=tool)
                return False  # no answer in time means denied
            finally:
                self.approvals.pop(approval_id, None)
            log.info("approval_decided", approval_id=approval_id, tool=tool, approved=approved)
            return approved

        log.info(
            "turn_started",
            model=model,
            generation=options.wire(),
            upstream_request_id=self.runner.upstream_request_id(correlation_id),
        )

        async def on_tool_call(index: int, call: ToolCall) -> None:
            await self._send(
                {
                    "type": WorkerFrame.TURN_DELTA,
                    **base,
                    "text": "",
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                    ],
                }
            )

        final: dict[str, Any]
        try:
            if isinstance(completion, dict):
                # A completion of the relay's OpenAI-compatible gateway: one model call with
                # the client's tools, whose calls go back to the client instead of running.
                result = await self.runner.complete(
                    messages,
                    tools=offered_tools(completion.get("tools")),
                    tool_choice=completion.get("tool_choice"),
                    timeout_s=timeout,
                    on_delta=on_delta,
                    on_tool_call=on_tool_call,
                    turn_id=turn_id,
                    model=model,
                    options=options,
                )
            else:
                result = await self.runner.run(
                    messages,
                    tools=frame.get("tools") or (),
                    timeout_s=timeout,
                    on_delta=on_delta,
                    request_approval=request_approval,
                    turn_id=turn_id,
                    model=model,
                    options=options,
                )
        except LLMError as exc:
            self.last_error = exc.category
            final = {
                "type": WorkerFrame.TURN_FAILED,
                **base,
                "category": exc.category,
                "detail": exc.detail[:500],
            }
        except asyncio.CancelledError:
            if coalescer is not None:
                coalescer.discard()
            raise
        except Exception as exc:  # a bug must fail the turn, not leave it hanging
            log.exception("turn_crashed", turn_id=turn_id)
            self.last_error = "internal"
            final = {
                "type": WorkerFrame.TURN_FAILED,
                **base,
                "category": "internal",
                "detail": type(exc).__name__,
            }
        else:
            final = {
                "type": WorkerFrame.TURN_DONE,
                **base,
                "usage": {
                    "tokens_in": result.tokens_in,
                    "tokens_out": result.tokens_out,
                    "source": result.usage_source,
                },
                "finish_reason": result.finish_reason,
            }
        finally:
            # Free the slot before the relay hears the turn is over: it may send the next
            # turn at once, and that one must not be refused for lack of room.
            held = self.turns.get(turn_id)
            if held is not None and held[0] == attempt:
                del self.turns[turn_id]
        if coalescer is not None:
            await coalescer.flush()  # the answer's last text before its ending
        count.end("failed" if final["type"] == WorkerFrame.TURN_FAILED else "done")
        if final["type"] == WorkerFrame.TURN_FAILED:
            log.warning("turn_failed", category=final["category"], detail=final["detail"])
        else:
            log.info(
                "turn_done",
                finish_reason=final["finish_reason"],
                usage=final["usage"],
            )
        await self._send(final)
        if final["type"] == WorkerFrame.TURN_FAILED:
            # The failure (and a breaker it may have opened) shows in the workers view now,
            # not at the next periodic report.
            await self._send_state()


def offered_tools(value: object) -> list[ToolSpec]:
    """A completion's tools (OpenAI's ``[{"type": "function", "function": {...}}]``, checked by
    the relay) as the model client offers them."""
    specs: list[ToolSpec] = []
    for tool in value if isinstance(value, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            specs.append(
                ToolSpec(
                    name=function["name"],
                    description=str(function.get("description") or ""),
                    parameters=parameters if isinstance(parameters, dict) else {},
                )
            )
    return specs
