"""One logical WebSocket connection to the relay's ``/v1/ws`` that survives reconnects.

It authenticates with the subprotocol ``bearer.<token>``, answers the close-code catalogue
(:mod:`relayline.protocol.close_codes`) as the design says, resubscribes every topic after a
reconnect from its position ``(epoch, seq)`` (the relay replays what was missed, or says
``events.missed``), drops events it already delivered, and retries ops whose answer was lost
with the link once it is back (``send`` carries a ``client_msg_id``, so the relay stores it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from relayline.client.backoff import Backoff
from relayline.client.events import ConnectionStopped, Event, OpError
from relayline.protocol.close_codes import ACTIONS, DEFAULT_ACTION, ClientAction, Close
from relayline.protocol.names import EventType, Op, Reply

log = logging.getLogger("relayline.client")

SUBPROTOCOL = "relayline.v1"
DROPPED = 1006  # no close frame: the link broke
# What a refusal of the upgrade itself means, as the close code a relay would have sent.
_HTTP_TO_CLOSE = {401: Close.UNAUTHENTICATED, 403: Close.FORBIDDEN, 429: Close.RATE_LIMITED}

TokenCallback = Callable[[], Awaitable[str]]
Frame = dict[str, Any]


class _Disconnected(ConnectionError):
    """The link went away before the op was answered; the op may be tried again."""


class Connection:
    """See the module docstring. ``on_new_token`` is awaited after a 4401 close (or an HTTP 401
    at the upgrade) and returns the credential to reconnect with; without it, or when it returns
    the refused token again, the connection stops with :class:`ConnectionStopped`.

    Guarantees: events of a topic reach its listeners in ``seq`` order and at most once per
    ``(epoch, seq)``; an ``events.missed`` event is delivered as is (the caller reloads its
    state); listener queues are unbounded (a listener that never reads holds memory)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        on_new_token: TokenCallback | None = None,
        origin: str | None = None,
        backoff: Backoff | None = None,
        ack_timeout_s: float = 10.0,
        open_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.token = token
        self.on_new_token = on_new_token
        self.origin = origin
        self.backoff = backoff or Backoff()
        self.ack_timeout_s = ack_timeout_s
        self.open_timeout_s = open_timeout_s
        self.positions: dict[str, tuple[str | None, int | None]] = {}
        self.stopped: ConnectionStopped | None = None
        self._listeners: dict[str, list[asyncio.Queue[Event | None]]] = {}
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._refs = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._online = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # Life

    async def start(self) -> None:
        """Connect; return once the relay answered, raise :class:`ConnectionStopped` if it
        refused for good."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        await self.wait_online()

    async def close(self) -> None:
        """Stop for good: pending ops and listeners end with :class:`ConnectionStopped`."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stop(None, "closed")

    @property
    def online(self) -> bool:
        return self._online

    async def wait_online(self) -> None:
        while True:
            if self.stopped is not None:
                raise self.stopped
            if self._online:
                return
            changed = self._changed
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _stop(self, code: int | None, reason: str) -> None:
        if self.stopped is None:
            self.stopped = ConnectionStopped(code, reason)
        self._online = False
        for queues in self._listeners.values():
            for queue in queues:
                queue.put_nowait(None)
        self._notify()

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            token = self.token
            code, reason, worked = await self._session(token)
            if self._closing:
                return
            if worked:
                attempt = 0
            action = ACTIONS.get(code, DEFAULT_ACTION)  # type: ignore[call-overload]
            log.info("disconnected with %s; next: %s", code, action)
            if action == ClientAction.STOP:
                self._stop(code, reason or "refused")
                return
            if action == ClientAction.NEW_TOKEN:
                if self.on_new_token is None:
                    self._stop(code, "unauthenticated and no token callback")
                    return
                try:
                    fresh = await self.on_new_token()
                except Exception as exc:
                    self._stop(code, f"the token callback failed: {exc!r}")
                    return
                if not fresh or fresh == token:
                    self._stop(code, "unauthenticated; the token callback gave no new token")
                    return
                self.token = fresh
                attempt = 0
                continue
            await asyncio.sleep(self.backoff.delay(action, attempt))
            attempt += 1

    async def _session(self, token: str) -> tuple[int, str, bool]:
        """One link, from upgrade to close: (close code, reason, whether the relay answered)."""
        try:
            ws = await connect(
                self.url,
                subprotocols=[SUBPROTOCOL, f"bearer.{token}"],  # type: ignore[list-item]
                origin=self.origin,  # type: ignore[arg-type]
                open_timeout=self.open_timeout_s,
                compression=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            return int(_HTTP_TO_CLOSE.get(status, DROPPED)), f"HTTP {status}", False
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return DROPPED, str(exc), False
        self._ws = ws
        reader = asyncio.get_running_loop().create_task(self._read(ws))
        worked = False
        try:
            await self._resume()
            worked = True
            if not reader.done():
                self._online = True
                self._notify()
        except (_Disconnected, TimeoutError):
            await ws.close()
        await reader
        self._ws = None
        self._online = False
        self._notify()
        rcvd = ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason, worked) if rcvd is not None else (DROPPED, "", worked)

    def _down(self, ws: ClientConnection) -> None:
        """``ws`` is broken: ops wait for the next link instead of trying this one again."""
        if self._ws is ws and self._online:
            self._online = False
            self._notify()

    async def _resume(self) -> None:
        """Resubscribe every topic from its position (or ping, with none): the first answer
        proves the credential was taken."""
        topics = list(self.positions)
        if not topics:
            await self._request(Op.PING, {})
        for topic in topics:
            try:
                await self._subscribe_now(topic)
            except OpError as exc:
                # Refused now (the new token does not cover it, say): the others carry on.
                log.warning("subscription to %s refused: %s", topic, exc.code)

    async def _subscribe_now(self, topic: str) -> None:
        epoch, seq = self.positions.get(topic, (None, None))
        fields: Frame = {"topic": topic}
        if epoch is not None:
            fields.update(epoch=epoch, after_seq=seq or 0)
        data = await self._request(Op.SUBSCRIBE, fields)
        epoch_now, seq_now = self.positions.get(topic, (None, None))
        if epoch_now is None:
            # A fresh subscription: live events follow the position the relay answered with.
            seq_ack = int(data.get("seq", 0))
            self.positions[topic] = (data.get("epoch"), max(seq_now or 0, seq_ack))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self._on_frame(ws, json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self._down(ws)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(_Disconnected("link closed"))
            self._pending.clear()

    def _on_frame(self, ws: ClientConnection, frame: Frame) -> None:
        kind = frame.get("type")
        if kind in (Reply.ACK, Reply.ERROR):
            future = self._pending.pop(frame.get("ref"), None)  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(frame)
            elif kind == Reply.ERROR:
                log.warning("error frame: %s", frame.get("data"))
            return
        if "topic" not in frame or "seq" not in frame:
            return
        event = Event.of(frame)
        epoch, seq = self.positions.get(event.topic, (None, None))
        if event.type == EventType.EVENTS_MISSED:
            self.positions[event.topic] = (event.data.get("epoch"), event.seq)
        elif seq is not None and event.seq <= seq:
            return  # already delivered (a replay overlapping what arrived live)
        else:
            self.positions[event.topic] = (epoch, event.seq)
        for queue in self._listeners.get(event.topic, ()):
            queue.put_nowait(event)

    # Ops

    async def _request(self, op: str, fields: Frame) -> Frame:
        ws = self._ws
        if ws is None:
            raise _Disconnected("not connected")
        ref = next(self._refs)
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await ws.send(json.dumps({"op": op, "ref": ref, **fields}))
        except ConnectionClosed as exc:
            self._pending.pop(ref, None)
            self._down(ws)
            raise _Disconnected("link closed") from exc
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                frame = await future
        except TimeoutError:
            # No answer in time: treat the link as broken; the op is retried on the next one.
            self._pending.pop(ref, None)
            self._down(ws)
            await ws.close()
            raise _Disconnected("no answer") from None
        if frame.get("type") == Reply.ERROR:
            err = frame.get("data") or {}
            raise OpError(str(err.get("code")), str(err.get("detail")))
        data: Frame = frame.get("data") or {}
        return data

    async def call(self, op: str, **fields: Any) -> Frame:
        """Send an op and return its ack's data; raise :class:`OpError` when refused. An op
        whose answer the link lost is sent again (same fields) once the connection is back, so
        only idempotent ops go through here (``send`` is, by its ``client_msg_id``)."""
        while True:
            await self.wait_online()
            try:
                return await self._request(op, fields)
            except _Disconnected:
                continue

    # Topics

    async def subscribe(self, topic: str) -> None:
        """Follow ``topic`` from now on, across reconnects (idempotent). Raises
        :class:`OpError` when the relay refuses it (``forbidden``: the credential does not
        cover that topic)."""
        if topic in self.positions:
            return
        self.positions[topic] = (None, None)
        try:
            while True:
                await self.wait_online()
                try:
                    await self._subscribe_now(topic)
                    return
                except _Disconnected:
                    if self.positions.get(topic, (None, None))[0] is not None:
                        return  # the reconnect resubscribed it
        except BaseException:
            self.positions.pop(topic, None)
            raise

    def listen(self, topic: str) -> asyncio.Queue[Event | None]:
        """A queue of ``topic``'s events from now on; ``None`` means the connection stopped."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._listeners.setdefault(topic, []).append(queue)
        if self.stopped is not None:
            queue.put_nowait(None)
        return queue

    def unlisten(self, topic: str, queue: asyncio.Queue[Event | None]) -> None:
        queues = self._listeners.get(topic, [])
        if queue in queues:
            queues.remove(queue)
