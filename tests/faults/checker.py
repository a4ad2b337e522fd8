"""What a client rendered against what the store holds, after a fault.

A client renders a chat from the events it received (and the snapshots it reloaded): each
answer is the text of its ``message.delta`` events placed at their offsets (a new attempt of a
retried turn starts again at offset 0, replacing the old text), and the whole content once
``message.completed`` arrives. The check: every message the store holds was rendered once,
with the same text; nothing rendered is missing from the store; every turn has ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from relayline.store.database import Database
from relayline.store.models import Message, Turn

ENDED = ("completed", "failed", "cancelled")


@dataclass
class Rendered:
    """One client's view of a chat."""

    texts: dict[str, str] = field(default_factory=dict)  # message id -> text shown
    complete: set[str] = field(default_factory=set)
    created: list[str] = field(default_factory=list)  # user messages, in arrival order

    def take(self, type: str, data: dict[str, Any]) -> None:
        if type == "message.created":
            message = data["message"]
            self.created.append(message["id"])
            self.texts[message["id"]] = message["content"]
        elif type == "message.delta":
            shown = self.texts.get(data["message_id"], "")
            self.texts[data["message_id"]] = shown[: data["offset"]] + data["text"]
        elif type == "message.completed":
            self.texts[data["message_id"]] = data["content"]
            self.complete.add(data["message_id"])

    def take_snapshot(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self.texts[message["id"]] = message["content"]
            if message["role"] == "user" and message["id"] not in self.created:
                self.created.append(message["id"])
            if message["status"] == "complete" and message["role"] == "assistant":
                self.complete.add(message["id"])


@dataclass
class Verdict:
    lost: list[str]  # stored, never rendered (or rendered with other text)
    duplicated: list[str]  # rendered more than once as a new message
    stuck: list[str]  # turns not ended
    stored: int

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.stuck)


async def check(db: Database, chat_id: str, rendered: Rendered) -> Verdict:
    async with db.read() as session:
        messages = (
            await session.scalars(
                select(Message).where(Message.chat_id == chat_id).order_by(Message.seq)
            )
        ).all()
        turns = (await session.scalars(select(Turn).where(Turn.chat_id == chat_id))).all()
    lost = [
        f"{m.role} {m.id}: stored {m.content!r}, shown {rendered.texts.get(m.id)!r}"
        for m in messages
        if rendered.texts.get(m.id) != m.content
        or (m.role == "assistant" and m.status == "complete" and m.id not in rendered.complete)
    ]
    duplicated = sorted({i for i in rendered.created if rendered.created.count(i) > 1})
    stuck = [f"{t.id}: {t.state}" for t in turns if t.state not in ENDED]
    return Verdict(lost, duplicated, stuck, len(messages))
