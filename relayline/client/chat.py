"""A chat as a client sees it: send a message and stream its answer, cancel, answer tool
approvals, follow its events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from relayline.client.events import (
    Delta,
    Event,
    Reset,
    Snapshot,
    TurnCancelled,
    TurnFailed,
)
from relayline.client.subscription import Subscription
from relayline.protocol.names import EventType, Op

if TYPE_CHECKING:
    from relayline.client.client import RelayClient


class Answer:
    """The answer to one sent message: an async iterator of its :class:`Delta` pieces, in
    order and never repeated (across reconnects and ``events.missed`` alike), that ends when
    the answer completes and raises :class:`TurnFailed` or :class:`TurnCancelled` otherwise.

    ``message`` is the stored user message; ``duplicate`` says the relay had it already (a
    resend of the same ``client_msg_id``)."""

    def __init__(
        self,
        chat: Chat,
        events: Subscription,
        message: dict[str, Any],
        turn_id: str | None,
        duplicate: bool,
    ) -> None:
        self.chat = chat
        self.message = message
        self.turn_id = turn_id
        self.duplicate = duplicate
        self.content = ""  # the answer so far
        self.message_id: str | None = None
        self._events = events
        self._done = turn_id is None

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._deltas()

    async def text(self) -> str:
        """Wait for the whole answer; return its text."""
        async for _ in self._deltas():
            pass
        return self.content

    def _piece(self, message_id: str, offset: int, text: str) -> Delta | None:
        """The part of ``text`` (starting at ``offset`` of the answer) not delivered yet."""
        self.message_id = message_id
        end = offset + len(text)
        if end <= len(self.content) or offset > len(self.content):
            return None
        new = text[len(self.content) - offset :]
        self.content += new
        assert self.turn_id is not None
        return Delta(message_id, self.turn_id, new)

    async def _deltas(self) -> AsyncIterator[Delta]:
        try:
            async for item in self._events:
                if self._done:
                    return
                if isinstance(item, Reset):
                    async for delta in self._catch_up():
                        yield delta
                    if self._done:
                        return
                    continue
                piece = self._on_event(item)
                if piece is not None:
                    yield piece
                if self._done:
                    return
        finally:
            await self._events.aclose()

    def _on_event(self, event: Event) -> Delta | None:
        data = event.data
        if data.get("turn_id") != self.turn_id:
            return None
        if event.type == EventType.MESSAGE_DELTA:
            return self._piece(
                str(data["message_id"]), int(data.get("offset", 0)), str(data.get("text", ""))
            )
        if event.type == EventType.MESSAGE_COMPLETED:
            self._done = True
            return self._piece(str(data["message_id"]), 0, str(data.get("content", "")))
        if event.type == EventType.TURN_FAILED:
            self._done = True
            raise TurnFailed(
                str(self.turn_id), str(data.get("category")), str(data.get("detail", ""))
            )
        if event.type == EventType.TURN_CANCELLED:
            self._done = True
            raise TurnCancelled(str(self.turn_id))
        return None

    async def _catch_up(self) -> AsyncIterator[Delta]:
        """After ``events.missed``: what the stored chat says of this answer."""
        snapshot = await self.chat.snapshot()
        turn = snapshot.turn
        if turn is not None and turn.get("id") == self.turn_id:
            if snapshot.partial_message_id and snapshot.partial_text:
                piece = self._piece(snapshot.partial_message_id, 0, snapshot.partial_text)
                if piece is not None:
                    yield piece
            return
        # The turn is no longer in progress: its answer is stored (or it ended without one).
        for message in await self.chat.messages():
            if message.get("role") == "assistant" and message.get("turn_id") == self.turn_id:
                if message.get("status") == "failed":
                    self._done = True
                    raise TurnFailed(str(self.turn_id), "unknown", "the answer failed")
                piece = self._piece(str(message["id"]), 0, str(message.get("content") or ""))
                self._done = True
                if piece is not None:
                    yield piece
                return
        if turn is None:
            self._done = True
            raise TurnCancelled(str(self.turn_id))


class Chat:
    """One chat of the client's tenant. Get it with :meth:`RelayClient.chat` or
    :meth:`RelayClient.create_chat`."""

    def __init__(self, client: RelayClient, chat_id: str) -> None:
        self.client = client
        self.id = chat_id
        self.topic = f"chat:{chat_id}"

    async def send(self, text: str, *, client_msg_id: str | None = None) -> Answer:
        """Post a user message (over the WebSocket) and return its :class:`Answer`. The message
        carries ``client_msg_id`` (a fresh one by default): if the link drops before the relay
        acknowledges it, the client sends it again with the same id once it is back, and the
        relay stores it once."""
        events = await self.events()
        try:
            data = await self.client.connection.call(
                Op.SEND,
                topic=self.topic,
                content=text,
                client_msg_id=client_msg_id or uuid.uuid4().hex,
            )
        except BaseException:
            await events.aclose()
            raise
        turn_id = data.get("turn_id")
        return Answer(
            self,
            events,
            dict(data.get("message") or {}),
            str(turn_id) if turn_id else None,
            bool(data.get("duplicate")),
        )

    async def cancel(self) -> str | None:
        """Stop the turn in progress; return its id (``None``: nothing was running)."""
        data = await self.client.connection.call(Op.CANCEL, topic=self.topic)
        turn_id = data.get("turn_id")
        return str(turn_id) if turn_id else None

    async def approve(self, approval_id: str, approve: bool = True) -> None:
        """Answer a ``tool.approval_requested`` event (``approve=False`` denies the call).
        Raises :class:`OpError` (``not_found``) when nothing awaits that approval any more."""
        await self.client.connection.call(
            Op.APPROVE,
            topic=self.topic,
            approval_id=approval_id,
            decision="approve" if approve else "deny",
        )

    async def events(self) -> Subscription:
        """This chat's events from now on (see :meth:`RelayClient.subscribe`)."""
        return await self.client.subscribe(self.topic)

    async def snapshot(self) -> Snapshot:
        """The chat as stored now (:class:`~relayline.client.events.Snapshot`)."""
        return await self.client.snapshot(self.id)

    async def messages(self, *, after: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The chat's messages in order (one page)."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        body = await self.client.get(f"/v1/chats/{self.id}/messages", params=params)
        items: list[dict[str, Any]] = body["items"]
        return items
