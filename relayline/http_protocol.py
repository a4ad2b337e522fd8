"""The relay's HTTP/1.1 protocol for uvicorn: uvicorn's httptools protocol with two additions.

- **A deadline on the request head.** uvicorn reads a head for as long as the client takes, so
  a client sending a byte at a time (or nothing at all after connecting) holds a socket and its
  buffers forever. Here the head of every request — the first on a connection, and each later
  one on a kept-alive connection, from its first byte — must be complete within
  ``RELAYLINE_REQUEST_HEAD_TIMEOUT_S``; otherwise the relay answers 408 ``request_timeout``
  and closes. A WebSocket handshake is an HTTP head too, so the same deadline bounds it (the
  upgrade is handed to the WebSocket protocol only once the head is complete).
- **Errors in the relay's shape.** The parser's 400 (a malformed request line, header or
  chunk) is ``{"error": {"code": "bad_request", "detail", "request_id"}}`` like every other
  error, with an ``X-Request-ID``.

It relies on uvicorn internals (the constructor, ``connection_made``, ``on_message_begin``,
``on_headers_complete``, ``handle_websocket_upgrade``, ``send_400_response``,
``server_state.default_headers``), hence the 0.54.x pin; tests/api/test_server_limits.py fails
loudly when they change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relayline.hub.handshake import json_error_response


class RelayHttpProtocol(HttpToolsProtocol):
    """See the module docstring; ``head_timeout_s`` is set by :func:`http_protocol_class`."""

    head_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_done = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # until the first head is complete (or its first byte arrives)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_done = False
        if self._head_timer is None:
            self._arm_head_timer()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._cancel_head_timer()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        self._cancel_head_timer()
        # The connection belongs to the WebSocket protocol now. The parser refers back to this
        # object; left in place, that cycle keeps it (scope, headers, parser state) until a full
        # garbage collection, which idle sockets pay for in memory (measured: ~0.3 KB each).
        self.parser = None  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        self._send_error(400, "bad_request", "invalid HTTP request")

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_done or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is on its way (a pipelined head waits behind it)
        self._send_error(
            408, "request_timeout", f"request head not received within {self.head_timeout_s:g} s"
        )

    def _send_error(self, status: int, code: str, detail: str) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(
            json_error_response(status, code, detail, self.server_state.default_headers)
        )
        self.transport.close()


def http_protocol_class(head_timeout_s: float) -> type[RelayHttpProtocol]:
    """A protocol class carrying this process's head deadline (uvicorn instantiates it)."""
    return type(
        "ConfiguredRelayHttpProtocol", (RelayHttpProtocol,), {"head_timeout_s": head_timeout_s}
    )
