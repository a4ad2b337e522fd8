"""The HTTP side of a WebSocket upgrade (RFC 6455 §4.2): read the request, write the answer.

uvicorn's HTTP protocol has already parsed the request once; it hands the WebSocket protocol a
re-serialized copy (request line, ``name: value`` lines with lower-case names, blank line), so
this parser only has to be strict about what RFC 6455 requires, not about HTTP in general.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from relayline.ids import new_id

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

MAX_REQUEST_BYTES = 64 * 1024


class HandshakeError(Exception):
    """The request is not a WebSocket upgrade we can accept; answer ``status`` and close."""

    def __init__(self, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers

    def __repr__(self) -> str:
        return f"HandshakeError({self.status}, {self.detail!r})"


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What the ASGI scope needs from a valid upgrade request (and the key for the answer)."""

    target: bytes
    headers: list[tuple[bytes, bytes]]
    subprotocols: list[str]
    key: bytes

    def scope(self, transport: asyncio.Transport, root_path: str, asgi: str) -> dict[str, Any]:
        """The ASGI scope of this request, less ``state`` and ``extensions``."""
        raw_path, _, query = self.target.partition(b"?")
        return {
            "type": "websocket",
            "asgi": {"version": asgi, "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(transport) else "ws",
            "server": get_local_addr(transport),
            "client": get_remote_addr(transport),
            "root_path": root_path,
            "path": root_path + unquote(raw_path.decode("latin-1")),
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": query,
            "headers": self.headers,
            "subprotocols": self.subprotocols,
        }


def _tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")}


def parse_upgrade(head: bytes) -> Upgrade:
    """Parse the request head (without the blank line); raise :class:`HandshakeError`."""
    request_line, _, rest = head.partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        raise HandshakeError(400, "a WebSocket upgrade is GET … HTTP/1.1")
    headers: list[tuple[bytes, bytes]] = []
    for line in rest.split(b"\r\n") if rest else ():
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(400, "malformed header line")
        headers.append((name.lower(), value.strip()))
    found: dict[bytes, bytes] = {}
    protocols: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            protocols += [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
        elif name in (b"upgrade", b"connection") and name in found:
            found[name] += b"," + value
        else:
            found.setdefault(name, value)
    if b"websocket" not in _tokens(found.get(b"upgrade", b"")):
        raise HandshakeError(400, "missing 'Upgrade: websocket'")
    if b"upgrade" not in _tokens(found.get(b"connection", b"")):
        raise HandshakeError(400, "missing 'Connection: Upgrade'")
    if found.get(b"sec-websocket-version") != b"13":
        raise HandshakeError(
            426, "only WebSocket version 13 is supported", ((b"sec-websocket-version", b"13"),)
        )
    key = found.get(b"sec-websocket-key", b"")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid_key = False
    if not valid_key:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    return Upgrade(parts[1], headers, protocols, key)


def accept_response(key: bytes, subprotocol: str | None, extra: list[tuple[bytes, bytes]]) -> bytes:
    """The ``101 Switching Protocols`` answer to a request carrying ``key``."""
    digest = hashlib.sha1(key + _GUID).digest()  # noqa: S324 - RFC 6455 mandates SHA-1 here
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + base64.b64encode(digest),
    ]
    if subprotocol:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1"))
    lines += [name + b": " + value for name, value in extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def http_response(status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> bytes:
    """An HTTP/1.1 response that ends the connection (an upgrade refused, or the app's own
    denial response); ``Content-Length`` and ``Connection: close`` are added when missing."""
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    lines = [b"HTTP/1.1 %d %s" % (status, phrase)]
    names = set()
    for name, value in headers:
        lines.append(name + b": " + value)
        names.add(name.lower())
    if b"content-length" not in names:
        lines.append(b"Content-Length: %d" % len(body))
    if b"connection" not in names:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Denial:
    """An app's own answer to an upgrade (ASGI's ``websocket.http.response`` extension)."""

    __slots__ = ("chunks", "headers", "status")

    def __init__(self, start: dict[str, Any]) -> None:
        self.status: int = start["status"]
        self.headers: list[tuple[bytes, bytes]] = list(start.get("headers") or ())
        self.chunks: list[bytes] = []

    def body(self, message: dict[str, Any]) -> bytes | None:
        """Take a body message; the whole response once the last one arrived."""
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        return http_response(self.status, self.headers, b"".join(self.chunks))


# The stable ``code`` of each status the server itself answers before the app sees a request.
_CODES = {
    400: "bad_request",
    403: "forbidden",
    408: "request_timeout",
    426: "upgrade_required",
    431: "headers_too_large",
    500: "internal",
    503: "unavailable",
}


def json_error_response(
    status: int, code: str, detail: str, extra: Iterable[tuple[bytes, bytes]] = ()
) -> bytes:
    """An HTTP error in the relay's error shape, with a fresh request id, ending the
    connection."""
    request_id = new_id()
    body = json.dumps(
        {"error": {"code": code, "detail": detail, "request_id": request_id}},
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"Content-Type", b"application/json"),
        (b"X-Request-ID", request_id.encode()),
        *extra,
    ]
    return http_response(status, headers, body)


def error_response(
    status: int, detail: str = "", extra: Iterable[tuple[bytes, bytes]] = ()
) -> bytes:
    """A refused upgrade, in the relay's error shape (``code`` from the status)."""
    try:
        text = detail or HTTPStatus(status).phrase
    except ValueError:
        text = str(status)
    return json_error_response(status, _CODES.get(status, "bad_request"), text, extra)
