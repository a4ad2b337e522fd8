"""What the parts of the turn dispatcher share: settings, the store, the bus, the coordinator,
and the one publisher of a chat's events (:class:`~relayline.turns.events.ChatEvents`: best
effort, the store is the truth). A coordinator call that nobody waits on runs as a task kept
referenced until it ends.
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
from relayline.turns.events import ChatEvents

log = structlog.get_logger("relayline.turns")


class TurnContext:
    def __init__(
        self, settings: Settings, db: Database, bus: Bus, coordinator: Coordinator
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.coordinator = coordinator
        # The only way the turn machinery announces anything (see relayline.turns.events).
        self.events = ChatEvents(bus)
        self._background: set[asyncio.Task[None]] = set()

    @property
    def lease_ms(self) -> int:
        """How long a claimed or renewed turn stays this instance's in the store."""
        return int(self.settings.turn_lease_s * 1000)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` without waiting on it (kept referenced until it ends)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
