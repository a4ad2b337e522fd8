"""The ``/v1/ws`` endpoint: handshake checks, authentication, caps, the op loop, heartbeats.

It is a plain ASGI callable (the relay's dispatcher routes ``/v1/ws`` here before FastAPI), so
an idle connection costs one small coroutine and no framework machinery.
"""

from __future__ import annotations

import asyncio
import time
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import unquote_plus

import structlog
from starlette.types import Receive, Scope, Send

from relayline.auth import KEY_IN_URL, SESSION_COOKIE, URL_CREDENTIAL, Authenticator, Principal
from relayline.chat_service import ChatService
from relayline.config import Settings
from relayline.errors import Unauthorized
from relayline.hub.acl import TopicAcl
from relayline.hub.client import ClientConnection
from relayline.hub.hub import Hub
from relayline.hub.wire import WIRE_EXTENSION, Wire
from relayline.limits import ClientIpResolver, ConnectionCaps
from relayline.live_credentials import LiveCredentials
from relayline.observability import hub_metrics as m
from relayline.observability.metrics import RATE_LIMITED
from relayline.protocol import jsoncodec
from relayline.protocol.close_codes import Close
from relayline.protocol.names import ErrorCode
from relayline.tasks import cancel_and_wait
from relayline.terminals.service import TerminalService

log = structlog.get_logger("relayline.ws")

SUBPROTOCOL = "relayline.v1"
_URL_CREDENTIAL_B = URL_CREDENTIAL.encode()
BEARER_PREFIX = "bearer."


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name: value for name, value in scope.get("headers", ())}


def credential_from(scope: Scope, headers: dict[bytes, bytes]) -> str | None:
    """A bearer credential from the subprotocol list, an Authorization header or a cookie."""
    for proto in scope.get("subprotocols", ()):
        if proto.startswith(BEARER_PREFIX) and len(proto) > len(BEARER_PREFIX):
            return str(proto[len(BEARER_PREFIX) :])
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    cookie = headers.get(b"cookie")
    if cookie:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookie.decode("latin-1"))
        except Exception:  # a malformed cookie header is simply no credential
            return None
        morsel = jar.get(SESSION_COOKIE)
        if morsel is not None and morsel.value:
            return morsel.value
    return None


def url_credential(scope: Scope) -> str | None:
    """A session token in the query string (``?access_token=``), for clients that can set
    neither a header nor a subprotocol; keys found there are refused by the caller."""
    query: bytes = scope.get("query_string", b"")
    if not query or _URL_CREDENTIAL_B not in query:
        return None
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == _URL_CREDENTIAL_B and value:
            return unquote_plus(value.decode("latin-1"))
    return None


class Gateway:
    """Owns the live client connections of this process."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        auth: Authenticator,
        acl: TopicAcl,
        chats: ChatService,
        resolver: ClientIpResolver,
        caps: ConnectionCaps,
        credentials: LiveCredentials,
        terminals: TerminalService | None = None,
    ) -> None:
        self.settings = settings
        self.terminals = terminals
        self.hub = hub
        self.auth = auth
        self.acl = acl
        self.chats = chats
        self.resolver = resolver
        self.caps = caps
        self.credentials = credentials
        self.clients: set[ClientConnection] = set()
        self._allowed = frozenset(settings.allowed_origins)
        self._sweeper: asyncio.Task[None] | None = None

    # Lifecycle

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper)
        self._sweeper = None
        for client in list(self.clients):
            client.close(Close.RESTARTING, "relay restarting")

    async def _sweep(self) -> None:
        """One timer for every socket: ping the quiet ones, close the silent ones (4408)."""
        interval = self.settings.heartbeat_interval_s
        timeout = self.settings.heartbeat_timeout_s
        loop = asyncio.get_running_loop()
        # The same walk ends sockets whose session token expired, within the bound promised
        # for revocations (RELAYLINE_AUTH_REVALIDATE_S).
        tick = min(min(interval, timeout) / 4, self.settings.auth_revalidate_s)
        expired = self.credentials.expired
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            wall = time.time()
            for client in list(self.clients):
                wire = client.wire
                if client.who.expires_at is not None and expired(client, wall):
                    continue
                if now - wire.last_seen > timeout:
                    client.close(Close.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                elif now - max(wire.last_seen, client.last_ping) >= interval:
                    client.last_ping = now
                    wire.ping()

    # The endpoint

    def _origin_allowed(self, headers: dict[bytes, bytes]) -> bool:
        origin = headers.get(b"origin")
        if origin is None:
            return True  # not a browser: nothing for the origin rule to protect
        return "*" in self._allowed or origin.decode("latin-1") in self._allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        wire: Wire | None = scope.get("extensions", {}).get(WIRE_EXTENSION)
        if wire is None:
            log.error("ws_unsupported_server", detail="run the relay with `relayline serve`")
            await send({"type": "websocket.close", "code": Close.INTERNAL})
            return
        headers = _headers(scope)
        credential = credential_from(scope, headers)
        in_url = url_credential(scope)
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in scope.get("subprotocols", ()) else None
        origin_ok = self._origin_allowed(headers)
        _, ip_key = self.resolver.resolve(scope)
        # Nothing after this point needs the handshake headers (nor the credential, which
        # may travel as a subprotocol); let them go instead of keeping them per socket.
        scope["headers"] = []
        scope["subprotocols"] = []
        headers.clear()
        who: Principal | None = None
        failure: tuple[int, str] | None = None
        if not origin_ok:
            failure = (Close.FORBIDDEN, "origin not allowed")
        elif in_url is not None and self.auth.is_long_lived(in_url):
            failure = (Close.UNAUTHENTICATED, KEY_IN_URL)
        elif credential is not None or in_url is not None:
            credential = credential if credential is not None else in_url
            try:
                who = await self.auth.authenticate(credential)
            except Unauthorized:
                failure = (Close.UNAUTHENTICATED, "unauthenticated")
        credential = in_url = None
        # Accept even a refused handshake, then close: the close code is how a browser learns
        # why (a rejected upgrade only says 'failed'). The op loop never starts for it.
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        if failure is not None:
            self._refuse(wire, *failure)
            return
        if who is None:
            who = await self._authenticate(wire, receive)
            if who is None:
                return
        identity = who.rate_key
        if not await self.caps.acquire("ws_identity", identity, self.settings.max_ws_per_identity):
            RATE_LIMITED.labels("ws_connections").inc()
            self._refuse(wire, Close.RATE_LIMITED, "too many connections for this identity")
            return
        try:
            if not await self.caps.acquire("ws_ip", ip_key, self.settings.max_ws_per_ip):
                RATE_LIMITED.labels("ws_connections").inc()
                self._refuse(wire, Close.RATE_LIMITED, "too many connections from this address")
                return
            try:
                await self._serve(wire, receive, who)
            finally:
                await self.caps.release("ws_ip", ip_key)
        finally:
            await self.caps.release("ws_identity", identity)

    def _refuse(self, wire: Wire, code: int, reason: str) -> None:
        m.CLOSE_CODES.labels(str(code)).inc()
        wire.close(code, reason)

    async def _authenticate(self, wire: Wire, receive: Receive) -> Principal | None:
        """First-frame authentication, for clients that cannot set a header or subprotocol."""
        credential = await self._first_frame_token(receive)
        try:
            return await self.auth.authenticate(credential)
        except Unauthorized:
            self._refuse(wire, Close.UNAUTHENTICATED, "unauthenticated")
            return None

    async def _first_frame_token(self, receive: Receive) -> str | None:
        """The ``{"op": "auth", "token": …}`` frame, within the auth deadline."""
        try:
            async with asyncio.timeout(self.settings.ws_auth_timeout_s):
                message = await receive()
        except TimeoutError:
            return None
        text = message.get("text") if message["type"] == "websocket.receive" else None
        if not text:
            return None
        try:
            frame: Any = jsoncodec.loads(text)
        except ValueError:  # invalid, or nested too deep: not an auth frame either way
            return None
        if isinstance(frame, dict) and frame.get("op") == "auth":
            token = frame.get("token")
            return token if isinstance(token, str) and 0 < len(token) <= 4096 else None
        return None

    async def _serve(self, wire: Wire, receive: Receive, who: Principal) -> None:
        client = ClientConnection(
            who=who,
            wire=wire,
            hub=self.hub,
            acl=self.acl,
            chats=self.chats,
            settings=self.settings,
            terminals=self.terminals,
        )
        self.clients.add(client)
        self.credentials.watch(client)
        m.CONNECTIONS.labels("ws").inc()
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.disconnect" or client.outbox.closed:
                    # Closed by the relay (a revoked credential, say): frames that were still
                    # on their way are not acted on.
                    break
                text = message.get("text")
                if text is None:
                    client.send_control(
                        "error",
                        {
                            "ref": None,
                            "data": {
                                "code": ErrorCode.VALIDATION_ERROR,
                                "detail": "binary frames are not accepted",
                            },
                        },
                    )
                    continue
                if not await client.handle_text(text):
                    break
        finally:
            self.credentials.unwatch(client)
            self.clients.discard(client)
            client.closed_by_peer()
            m.CONNECTIONS.labels("ws").dec()
