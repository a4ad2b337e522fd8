"""What the parts of the turn dispatcher share: settings, the store, the bus, the coordinator.

Publishing to a chat is best effort: the store is the truth and clients recover from the
snapshot, so a failed publish is logged and never raised. A coordinator call that nobody
waits on runs as a task kept referenced until it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

from relayline.bus.base import Bus
from relayline.config import Settings
from relayline.store.database import Database
from relayline.turns.coordination import Coordinator

log = structlog.get_logger("relayline.turns")


class TurnContext:
    def __init__(
        self, settings: Settings, db: Database, bus: Bus, coordinator: Coordinator
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.coordinator = coordinator
        self._background: set[asyncio.Task[None]] = set()

    @property
    def lease_ms(self) -> int:
        """How long a claimed or renewed turn stays this instance's in the store."""
        return int(self.settings.turn_lease_s * 1000)

    async def publish(self, chat_id: str, type: str, data: dict[str, Any]) -> None:
        """Publish an event on the chat's topic; never raises."""
        try:
            await self.bus.publish(f"chat:{chat_id}", type, data)
        except Exception:  # the store is the truth; clients recover from the snapshot
            log.warning("publish_failed", chat_id=chat_id, type=type)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` without waiting on it (kept referenced until it ends)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
