"""Terminal sessions held by other relay instances: what this one tells them, and what it does
when told.

The holder of a session is the instance its worker is connected to. Another instance that must
act on the session (a client of it typed, resized, subscribed, closed, or opened a session on
a worker it does not hold) broadcasts through the coordinator; the holder acts, other
instances ignore the message. Delivery is best effort, at most once, like a turn's cancel: a
lost keystroke is the client's to retry, a lost open times out (503). Nothing here trusts a
message beyond its shape: the holder acts only on sessions it holds, with frames of the kinds
a client may cause.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from relayline.bus.base import Bus
from relayline.envelope import Event
from relayline.errors import Unavailable
from relayline.protocol.names import ErrorCode, EventType, TermExitReason, WorkerFrame
from relayline.terminals.registry import TerminalRecord
from relayline.terminals.sessions import LocalSessions

CONTROL_KIND = "terminal"  # the coordinator's broadcasts about terminal sessions
Broadcast = Callable[[dict[str, Any]], Awaitable[None]]
_DELIVERABLE = (WorkerFrame.TERM_INPUT, WorkerFrame.TERM_RESIZE, WorkerFrame.TERM_REDRAW)


class OtherInstances:
    def __init__(self, local: LocalSessions, bus: Bus, broadcast: Broadcast | None) -> None:
        self.local = local
        self.bus = bus
        self._broadcast = broadcast

    async def tell(self, message: dict[str, Any]) -> None:
        if self._broadcast is None:
            raise Unavailable("the terminal runs on another relay instance, out of reach")
        await self._broadcast({"kind": CONTROL_KIND, **message})

    async def deliver(self, session_id: str, frame: dict[str, Any]) -> None:
        await self.tell({"action": "deliver", "id": session_id, "frame": frame})

    async def close(self, session_id: str) -> None:
        await self.tell({"action": "close", "id": session_id})

    async def open(
        self, record: TerminalRecord, frame: dict[str, Any], timeout_s: float
    ) -> dict[str, Any] | None:
        """Have the holder of the picked worker start the session; learn the outcome from the
        session's topic: None once running, else term.exited's data. Raises Unavailable when
        nothing comes within ``timeout_s`` (and asks the holder to close it)."""
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()

        def listen(event: Event) -> None:
            if future.done():
                return
            if event.type == EventType.TERM_STATE and event.data.get("state") == "running":
                future.set_result(None)
            elif event.type == EventType.TERM_EXITED:
                future.set_result(dict(event.data))

        subscription = await self.bus.subscribe(record.topic, listen)
        try:
            await self.tell({"action": "open", "record": record.as_json(), "frame": frame})
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            await self.close(record.id)
            raise Unavailable("the worker did not start the terminal in time") from None
        finally:
            subscription.close()

    # Told by another instance

    async def on_control(
        self, message: dict[str, Any], close_here: Callable[[TerminalRecord], Awaitable[None]]
    ) -> None:
        action = message.get("action")
        if action == "open":
            await self._open_here(message)
            return
        session_id = message.get("id")
        record = self.local.registry.get(session_id) if isinstance(session_id, str) else None
        if record is None or not record.live:
            return  # not held here (or over): another instance's, or nobody's
        frame = message.get("frame")
        if action == "deliver" and isinstance(frame, dict) and frame.get("id") == record.id:
            link = self.local.link_of(record)
            if link is not None and frame.get("type") in _DELIVERABLE:
                link.send(frame)
        elif action == "close":
            await close_here(record)

    async def _open_here(self, message: dict[str, Any]) -> None:
        raw, frame = message.get("record"), message.get("frame")
        if not isinstance(raw, dict) or not isinstance(frame, dict):
            return
        with contextlib.suppress(TypeError):
            record = TerminalRecord(**raw)
            if record.instance != self.local.instance_id or frame.get("id") != record.id:
                return
            if frame.get("type") != WorkerFrame.TERM_OPEN:
                return
            host = self.local.hosts.get(record.worker_id)
            self.local.registry.add(record)
            if host is None or not host.usable:
                error = {"code": ErrorCode.UNAVAILABLE, "detail": "the worker went away"}
                await self.local.ended(record, {"reason": TermExitReason.FAILED, "error": error})
                return
            # Findable by the opener's instance before the worker can say it runs.
            await self.local.stored(record)
            host.link.send(frame)
