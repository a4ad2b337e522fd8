"""The relay's HTTP/1.1 protocol for uvicorn: uvicorn's httptools protocol with four additions.

- **A deadline on the request head.** uvicorn reads a head for as long as the client takes, so
  a client sending a byte at a time (or nothing at all after connecting) holds a socket and its
  buffers forever. Here a head must be complete within ``RELAYLINE_REQUEST_HEAD_TIMEOUT_S`` of
  the connection opening, or, on a kept-alive connection, of the first byte after the previous
  request (stray line breaks included: the parser skips them without starting a request, and
  each would otherwise put off uvicorn's keep-alive timeout); otherwise the relay answers 408
  ``request_timeout`` and closes. A pipelined head that misses its deadline while the response
  before it is still being written is answered as soon as that response is complete. A
  WebSocket handshake is an HTTP head too, so the same deadline bounds it (the upgrade is
  handed to the WebSocket protocol only once the head is complete).
- **A deadline on the request body.** Nor does uvicorn bound the time a body takes: a client
  declaring a ``Content-Length`` (or sending chunks) and then a byte now and then holds its
  request, and the handler reading it, forever. Here a body must be complete within
  ``RELAYLINE_REQUEST_BODY_TIMEOUT_S`` of its head; otherwise the relay answers 408
  ``request_timeout`` (the handler's wait for the body ends as a disconnect) and closes, or,
  when an answer has already gone out (a handler that answers without reading the body), just
  closes, after it.
- **A size bound on the request head.** The parser buffers an unfinished header line whole
  (and re-copies it on every read), so a head still incomplete after :data:`MAX_HEAD_BYTES` is
  answered 431 ``headers_too_large`` and the connection closed.
- **Errors in the relay's shape.** The parser's 400 (a malformed request line, header or
  chunk) is ``{"error": {"code": "bad_request", "detail", "request_id"}}`` like every other
  error, with an ``X-Request-ID``.

It relies on uvicorn internals (the constructor, ``connection_made``, ``data_received``,
``on_message_begin``, ``on_headers_complete``, ``on_message_complete``,
``on_response_complete``, ``handle_websocket_upgrade``, ``send_400_response``, ``cycle`` and
its ``disconnected``, ``message_event`` and ``response_started``,
``server_state.default_headers``), hence the 0.54.x pin; tests/api/test_server_limits.py fails
loudly when they change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relayline.hub.handshake import MAX_REQUEST_BYTES, json_error_response

# The same bound as a WebSocket handshake's, which is a request head too.
MAX_HEAD_BYTES = MAX_REQUEST_BYTES


LINGER_S = 2.0
"""How long a refused connection is read (and dropped) after the answer, before it is closed."""


class RelayHttpProtocol(HttpToolsProtocol):
    """See the module docstring; ``head_timeout_s`` is set by :func:`http_protocol_class`."""

    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        # True from the end of one request (or the connection's start) until the next head is
        # complete: what arrives meanwhile belongs to that head and is under its bounds.
        self._head_pending = True
        self._head_bytes = 0
        self._head_late = False  # the deadline passed while a response was being written
        self._lingering: asyncio.TimerHandle | None = None  # refused: reading until closed
        # True from a complete head until its body is: what arrives meanwhile is that body.
        self._body_pending = False
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # the first head: from the connection opening

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            return  # what a refused client still sends is read and dropped (see _send_error)
        if self._head_pending:
            if self._head_timer is None and not self._head_late:
                self._arm_head_timer()  # the first byte after a request
            self._head_bytes += len(data)
        super().data_received(data)
        # Counted before parsing, judged after: a read that completes the head (and carries
        # the start of its body) is not held against it.
        if self._head_pending and self._head_bytes > MAX_HEAD_BYTES:
            self._cancel_head_timer()
            self._send_error(
                431, "headers_too_large", f"request head larger than {MAX_HEAD_BYTES} bytes"
            )
        elif self._body_pending and self._body_timer is None and not self.transport.is_closing():
            # Armed only when a read ends inside a body: a request whose body came with its
            # head (most of them) costs no timer.
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_pending and self._head_timer is None and not self._head_late:
            self._arm_head_timer()  # a pipelined head, begun in the read that ended the last

    def on_headers_complete(self) -> None:
        self._head_pending = self._head_late = False
        self._head_bytes = 0
        self._cancel_head_timer()
        self._body_pending = True  # until the message completes (or turns into an upgrade)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._cancel_body_timer()
        # The rest of this read is not counted against the next head: an undercount of at most
        # one read, where counting it would refuse a small head behind a large body.
        self._head_pending = True
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_late and self._head_pending:
            self._head_late = False
            self._send_head_timeout()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        self._head_pending = False  # the parser ended the message just before the upgrade
        self._body_pending = False
        self._cancel_head_timer()
        self._cancel_body_timer()
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
        if not self._head_pending or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A second response cannot be written into the first: answer once it is complete.
            self._head_late = True
            return
        self._send_head_timeout()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._body_pending or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            # The handler answered without the body: no second answer fits; the connection ends.
            if cycle.response_complete:
                self._end_after_answer()  # the answer is whole: a FIN behind it, no reset
            else:
                self.transport.close()  # connection_lost tells the handler, as for any client gone
            return
        if cycle is not None:
            # The handler waiting for the body gets a disconnect; whatever it would still
            # answer is dropped (uvicorn sends nothing for a disconnected cycle).
            cycle.disconnected = True
            cycle.message_event.set()
        self._send_error(
            408, "request_timeout", f"request body not received within {self.body_timeout_s:g} s"
        )

    def _send_head_timeout(self) -> None:
        self._send_error(
            408, "request_timeout", f"request head not received within {self.head_timeout_s:g} s"
        )

    def _send_error(self, status: int, code: str, detail: str) -> None:
        """Answer and end the connection. A client may still be sending (a head dribbled a
        byte at a time): closing at once, with its bytes unread, makes the kernel reset the
        connection, and a reset can destroy the answer before the client reads it. So the
        relay half-closes (its FIN follows the answer), reads and drops what still comes for
        up to ``LINGER_S``, then closes."""
        if self.transport.is_closing() or self._lingering is not None:
            return
        self.transport.write(
            json_error_response(status, code, detail, self.server_state.default_headers)
        )
        self._end_after_answer()

    def _end_after_answer(self) -> None:
        """Half-close, then read and drop for up to ``LINGER_S`` before closing (see
        :meth:`_send_error`)."""
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = self.loop.call_later(LINGER_S, self.transport.close)


def http_protocol_class(
    head_timeout_s: float, body_timeout_s: float = RelayHttpProtocol.body_timeout_s
) -> type[RelayHttpProtocol]:
    """A protocol class carrying this process's head and body deadlines (uvicorn instantiates
    it)."""
    return type(
        "ConfiguredRelayHttpProtocol",
        (RelayHttpProtocol,),
        {"head_timeout_s": head_timeout_s, "body_timeout_s": body_timeout_s},
    )
