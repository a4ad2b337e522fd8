"""The relay's WebSocket protocol for uvicorn: a lean RFC 6455 server that is also the
:class:`~relayline.hub.wire.Wire` the hub writes through.

uvicorn takes the class through ``ws=`` (see :mod:`relayline.server`). Idle sockets are what
most of a relay's memory goes to, so an instance keeps only what an open connection needs, in
``__slots__``: no asyncio.Queue or Events (a future exists only while the app waits, a list
only while messages are pending), no handshake request or response after the upgrade, no
parser object, no keepalive timer (the gateway's one sweeper pings every socket).

To the app it is plain ASGI: ``receive`` gives ``websocket.connect``, ``websocket.receive``
(text or bytes), then ``websocket.disconnect`` with the close code (repeated on later calls);
``send`` takes ``websocket.accept`` (with a subprotocol), ``websocket.send`` and
``websocket.close``. The wire is ``scope["extensions"]["relayline.wire"]``.

Writes: frames written during one turn of the event loop leave together at its end, one
``writelines`` (one system call) per socket, so a burst costs a system call per socket rather
than per event. Pending frames are flushed early once they reach the high-water mark, so
back-pressure (``paused``) is never hidden for long.

Closing follows RFC 6455: send the close frame, keep reading until the peer answers, then close
TCP. A peer that has not finished within :data:`CLOSE_GRACE_S` (because it stopped reading,
say) is reset with SO_LINGER 0, so the kernel frees what it still held for it. uvicorn's
``shutdown()`` closes open sockets with 1012. Frame-level rules are in
:mod:`relayline.hub.framing`, the HTTP upgrade in :mod:`relayline.hub.handshake`.

The constructor arguments, ``server_state.connections`` / ``tasks`` / ``default_headers`` and
``shutdown()`` are uvicorn internals, hence the 0.54.x pin; tests/hub/test_ws_protocol.py
covers each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any, ClassVar

import structlog
from uvicorn.protocols.utils import ClientDisconnected

from relayline.hub import handshake as http
from relayline.hub import wire
from relayline.hub.framing import CLOSED, CLOSING, CONNECTING, OPEN, FrameReader
from relayline.protocol.close_codes import Close

log = structlog.get_logger("relayline.ws")

CLOSE_GRACE_S = 2.0
INBOX_LIMIT = 16  # client messages held for the app before reading pauses

_LINGER_RESET = struct.pack("ii", 1, 0)


class RelayWebSocketProtocol(FrameReader):
    """One client WebSocket under uvicorn; see the module docstring."""

    send_buffer: ClassVar[int] = 0  # SO_SNDBUF; 0 keeps the OS default
    high_water: ClassVar[int] = 64 * 1024

    __slots__ = (
        *("_app_state", "_batch", "_config", "_cork", "_cork_size", "_denial", "_drained"),
        *("_final", "_inbox", "_key", "_read_paused", "_server_state", "_timer", "_waiter"),
        *("last_seen", "loop", "on_drain", "paused", "transport"),
    )

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        super().__init__(config.ws_max_size)
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self.loop = _loop or asyncio.get_running_loop()
        self._batch = wire.write_batch(self.loop)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._buf = bytearray()  # the request head until the upgrade
        self._key: bytes | None = None
        self._denial: http.Denial | None = None
        self._inbox: list[dict[str, Any]] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._final: dict[str, Any] | None = None
        self._read_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._cork: list[bytes] | None = None
        self._cork_size = 0
        self.paused = False
        self.last_seen = self.loop.time()
        self.on_drain: Callable[[], None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._server_state.connections.add(self)
        self.transport.set_write_buffer_limits(high=self.high_water)
        if self.send_buffer:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # A small kernel buffer makes a peer that stopped reading visible in
                # milliseconds instead of after megabytes.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = CLOSED
        self._server_state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._disconnected(1006, "")
        self.paused = False
        self.on_drain = None
        self._buf = self._cork = None
        self._reset_message()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # a half-closed peer is gone: close our side too

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self.on_drain is not None:
            self.on_drain()

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        if self._state in (OPEN, CLOSING):
            self._feed(data)
        elif self._state == CONNECTING:
            self._handshake(data)

    def shutdown(self) -> None:
        """uvicorn's hook on server exit."""
        if self._state == OPEN:
            self.close(Close.RESTARTING, "relay restarting")
        elif self._state == CONNECTING:
            self._refuse(503, "relay restarting")

    # Wire

    @property
    def closed(self) -> bool:
        return self._state != OPEN

    def write(self, frame: bytes) -> None:
        if self._state != OPEN:
            return
        cork = self._cork
        if cork is None:
            self._cork = [frame]
            self._cork_size = len(frame)
            self._batch.add(self)
        else:
            cork.append(frame)
            self._cork_size += len(frame)
            if self._cork_size >= self.high_water:
                self.flush()

    def writelines(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.write(frame)

    def ping(self) -> None:
        self.write(wire.PING_FRAME)

    def close(self, code: int, reason: str = "") -> None:
        if self._state != OPEN:
            return
        self._disconnected(code, reason)
        self._send_close(code, reason)
        if self._read_paused:
            # The peer's answer has to be read for the handshake to finish.
            self._read_paused = False
            self.transport.resume_reading()

    def flush(self) -> None:
        """Write the frames collected this turn (the batch calls this at the turn's end)."""
        cork = self._cork
        if cork is None:
            return
        self._cork = None
        if self._state != OPEN or self.transport.is_closing():
            return
        if len(cork) == 1:
            self.transport.write(cork[0])
        else:
            self.transport.writelines(cork)

    # ASGI

    async def receive(self) -> dict[str, Any]:
        while True:
            inbox = self._inbox
            if inbox:
                message = inbox.pop(0)
                if not inbox:
                    self._inbox = None
                if self._read_paused:
                    self._refill()
                return message
            if self._final is not None:
                return self._final
            # The message itself stays in the inbox, so a receive cancelled just as it was
            # woken loses nothing.
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            while self.paused and self._state == OPEN:
                if self._drained is None or self._drained.done():
                    self._drained = self.loop.create_future()
                await self._drained
            if self._state != OPEN:
                raise ClientDisconnected()
            text = message.get("text")
            if text is not None:
                self.write(wire.text_frame(text.encode()))
            else:
                self.write(wire.binary_frame(message["bytes"]))
        elif kind == "websocket.accept":
            if self._state == CONNECTING:
                self._accept(message)
            elif self._state == OPEN:
                raise RuntimeError("websocket.accept sent twice")
        elif kind == "websocket.close":
            if self._state == CONNECTING:
                self._refuse(403, "")
            else:
                self.close(message.get("code", 1000), message.get("reason") or "")
        elif kind == "websocket.http.response.start":
            # The denial-response extension: the app answers the upgrade with plain HTTP.
            if self._state != CONNECTING or self._denial is not None:
                raise RuntimeError("websocket.http.response.start after the handshake")
            self._denial = http.Denial(message)
        elif kind == "websocket.http.response.body":
            if self._denial is None:
                raise RuntimeError("websocket.http.response.body before its start")
            response = self._denial.body(message)
            if response is not None:
                self._end_http(response)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a WebSocket")

    # Handshake

    def _handshake(self, data: bytes) -> None:
        buf = self._buf
        assert buf is not None
        buf += data
        if len(buf) > http.MAX_REQUEST_BYTES:
            self._refuse(431 if self._key is None else 400, "too much data before the upgrade")
            return
        if self._key is not None:
            return  # frames sent before our 101 (a client should wait): kept for later
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            upgrade = http.parse_upgrade(bytes(buf[:end]))
        except http.HandshakeError as exc:
            self._refuse(exc.status, exc.detail, exc.headers)
            return
        del buf[: end + 4]
        self._key = upgrade.key
        scope = upgrade.scope(self.transport, self._config.root_path, self._config.asgi_version)
        scope["state"] = self._app_state.copy()
        scope["extensions"] = {"websocket.http.response": {}, wire.WIRE_EXTENSION: self}
        self._inbox = [{"type": "websocket.connect"}]
        # The app's own coroutine is the task (no wrapper frame kept alive per socket); its
        # outcome is handled by the done callback.
        task = asyncio.ensure_future(
            self._config.loaded_app(scope, self.receive, self.send), loop=self.loop
        )
        self._server_state.tasks.add(task)
        task.add_done_callback(self._app_done)

    def _accept(self, message: dict[str, Any]) -> None:
        key, self._key = self._key, None
        assert key is not None
        extra = list(self._server_state.default_headers) + list(message.get("headers") or ())
        self.transport.write(http.accept_response(key, message.get("subprotocol"), extra))
        self._state = OPEN
        early, self._buf = self._buf, None
        if early:
            self._parse(early)

    def _refuse(self, status: int, detail: str, headers: Any = ()) -> None:
        """Answer the upgrade request with an HTTP error and close."""
        self._end_http(http.error_response(status, detail, headers))

    def _end_http(self, response: bytes) -> None:
        self._state = CLOSED  # nothing the peer sends now is read
        self._key = self._buf = self._denial = None
        self._disconnected(1006, "")
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()
            self._timer = self.loop.call_later(CLOSE_GRACE_S, self._expire)

    def _app_done(self, task: asyncio.Future[None]) -> None:
        self._server_state.tasks.discard(task)
        code = Close.NORMAL
        if not task.cancelled():
            exc = task.exception()
            if exc is not None and not isinstance(exc, ClientDisconnected):
                code = Close.INTERNAL
                log.error("ws_app_failed", exc_info=exc)
        if self._state == CONNECTING:
            self._refuse(500, "")
        elif self._state == OPEN:
            self.close(code)

    # FrameReader hooks

    def _hold(self) -> bool:
        inbox = self._inbox
        if inbox is None or len(inbox) < INBOX_LIMIT or self._state != OPEN:
            return False
        if not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        return True

    def _on_message(self, text: str | None, data: bytes) -> None:
        if text is not None:
            self._post({"type": "websocket.receive", "text": text})
        else:
            self._post({"type": "websocket.receive", "bytes": data})

    def _on_ping(self, payload: bytes) -> None:
        self.write(wire.pong_frame(payload))

    def _on_close_frame(self, code: int, reason: str) -> None:
        if self._state == CLOSING:
            self.transport.close()  # our close was answered: the handshake is complete
            return
        self._disconnected(code, reason)
        self.flush()
        self.transport.write(wire.close_frame(None if code == 1005 else code))
        self._closing()
        self.transport.close()

    def _fail(self, code: int, reason: str, *, final: bool = False) -> None:
        if self._state != OPEN:
            self.transport.close()
            return
        self._disconnected(code, reason)
        self._send_close(code, reason)
        if final or code == Close.PROTOCOL_ERROR:
            # What follows cannot be parsed, or the peer's close frame came already: no
            # answer will be seen.
            self.transport.close()

    # Closing

    def _send_close(self, code: int, reason: str) -> None:
        self.flush()
        self.transport.write(wire.close_frame(code, reason))
        self._closing()

    def _closing(self) -> None:
        self._state = CLOSING
        self._reset_message()
        if self._timer is None:
            self._timer = self.loop.call_later(CLOSE_GRACE_S, self._expire)

    def _expire(self) -> None:
        """The peer did not finish the close in time: reset the connection (connection_lost
        cancels this timer, so it only fires for a connection still open)."""
        self._timer = None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # A reset frees what the kernel still buffers for a peer that stopped reading.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.transport.abort()

    # The app's inbox

    def _post(self, message: dict[str, Any]) -> None:
        if self._inbox is None:
            self._inbox = [message]
        else:
            self._inbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _disconnected(self, code: int, reason: str) -> None:
        """Tell the app the connection ended (once; later receives repeat it)."""
        if self._final is None:
            self._final = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._post(self._final)

    def _refill(self) -> None:
        """The app caught up: parse what was held back, then read again."""
        held, self._buf = self._buf, None
        if held:
            self._parse(held)
        if self._read_paused and not self._hold():
            self._read_paused = False
            if self._state != CLOSED:
                self.transport.resume_reading()


def protocol_class(send_buffer: int, high_water: int) -> type[RelayWebSocketProtocol]:
    """A protocol class carrying this process's socket settings (uvicorn instantiates it)."""
    return type(
        "ConfiguredRelayWebSocketProtocol",
        (RelayWebSocketProtocol,),
        {"__slots__": (), "send_buffer": send_buffer, "high_water": high_water},
    )
