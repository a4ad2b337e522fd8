"""``RelayClient``: the client half of the relay's protocol for Python programs.

async with RelayClient("http://127.0.0.1:8080", token=key) as client:
    chat = await client.create_chat("hello")
    answer = await chat.send("What is relayline?")
    async for delta in answer:
        print(delta.text, end="", flush=True)
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Self

import httpx

from relayline.client.backoff import Backoff
from relayline.client.chat import Chat
from relayline.client.connection import Connection, TokenCallback
from relayline.client.events import OpError, Snapshot
from relayline.client.subscription import Subscription


class _Bearer(httpx.Auth):
    """The connection's current credential on every HTTP request."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.connection.token}"
        yield request


class RelayClient:
    """A connection to one relay with a tenant API key or a browser session token.

    ``on_new_token`` is awaited when the relay refuses the credential (WebSocket close 4401,
    HTTP 401) and returns a new one; the client then carries on with it. Without it the client
    stops with :class:`~relayline.client.events.ConnectionStopped`. ``origin`` is sent on the
    WebSocket handshake (for relays whose origin allowlist applies to this client)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        on_new_token: TokenCallback | None = None,
        origin: str | None = None,
        backoff: Backoff | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        ws_url = "ws" + self.base_url[4:] + "/v1/ws"
        self.connection = Connection(
            ws_url,
            token,
            on_new_token=on_new_token,
            origin=origin,
            backoff=backoff,
            ack_timeout_s=timeout_s,
            open_timeout_s=timeout_s,
        )
        self.http = httpx.AsyncClient(
            base_url=self.base_url, auth=_Bearer(self.connection), timeout=timeout_s
        )

    async def connect(self) -> None:
        """Open the WebSocket; raise ``ConnectionStopped`` if the relay refuses for good."""
        await self.connection.start()

    async def close(self) -> None:
        await self.connection.close()
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # HTTP

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """A REST call with the current credential; a 401 asks ``on_new_token`` once. Returns
        the JSON body; raises :class:`OpError` with the relay's error ``code``."""
        response = await self.http.request(method, path, **kwargs)
        callback = self.connection.on_new_token
        if response.status_code == 401 and callback is not None:
            fresh = await callback()
            if fresh and fresh != self.connection.token:
                self.connection.token = fresh
                response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                code, detail = str(err["code"]), str(err["detail"])
            except (ValueError, KeyError, TypeError):
                code, detail = "http_error", response.text[:200]
            raise OpError(code, detail, response.status_code)
        return response.json() if response.content else None

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await self.request("GET", path, **kwargs)

    # Chats

    def chat(self, chat_id: str) -> Chat:
        """A chat the credential may use (no request is made)."""
        return Chat(self, chat_id)

    async def create_chat(self, title: str | None = None) -> Chat:
        """``POST /v1/chats`` (a tenant key, or a session token allowed to create chats)."""
        body = await self.request("POST", "/v1/chats", json={"title": title} if title else {})
        return Chat(self, str(body["id"]))

    async def snapshot(self, chat_id: str) -> Snapshot:
        """``GET /v1/chats/{id}``: the chat, its turn in progress and the topic position."""
        return Snapshot.of(await self.get(f"/v1/chats/{chat_id}"))

    # Topics

    async def subscribe(self, topic: str) -> Subscription:
        """Follow ``topic`` (``chat:<id>``, ``tenant:<id>``, …) from now on; see
        :class:`Subscription`. A chat's ``events.missed`` comes as a ``Reset`` carrying the
        reloaded chat snapshot."""
        subscription = Subscription(self.connection, topic, self._snapshot_of_topic)
        try:
            await self.connection.subscribe(topic)
        except BaseException:
            await subscription.aclose()
            raise
        return subscription

    async def _snapshot_of_topic(self, topic: str) -> Snapshot | None:
        kind, _, ident = topic.partition(":")
        return await self.snapshot(ident) if kind == "chat" and ident else None
