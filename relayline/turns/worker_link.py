"""One connected worker as the relay sees it: credit, in-flight turns, state, outbound frames.

Frames to a worker go through a bounded queue and a writer task, so the dispatcher never waits
on a worker's socket; a worker that cannot keep up with its own control frames is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine
from typing import Any

MAX_QUEUED_FRAMES = 10_000
MAX_MODELS = 64
MAX_MODEL_CHARS = 200


def announced_models(value: object) -> tuple[str, ...]:
    """The models a worker's ``hello`` announces (malformed entries dropped, bounded)."""
    if not isinstance(value, list):
        return ()
    names = [v for v in value if isinstance(v, str) and 0 < len(v) <= MAX_MODEL_CHARS]
    return tuple(dict.fromkeys(names))[:MAX_MODELS]


class WorkerLink:
    def __init__(
        self,
        worker_id: str,
        key_id: str,
        capacity: int,
        send: Callable[[str], Coroutine[Any, Any, None]],
        close: Callable[[int, str], Coroutine[Any, Any, None]],
        models: tuple[str, ...] = (),
        coalesces: bool = False,
    ) -> None:
        self.worker_id = worker_id
        self.key_id = key_id
        self.capacity = capacity
        # The models it answers (its hello's ``models``): completions naming one come to it.
        self.models = models
        # It coalesces answers' texts itself, by each turn.assigned's coalesce_ms (its hello's
        # ``coalesces``): its frames are published as they come (see turns.streaming).
        self.coalesces = coalesces
        self.inflight: set[str] = set()
        # Claims running for it: each holds one credit until its turn joins ``inflight`` (or
        # the store had none), so claims running side by side never exceed its capacity.
        self.claiming = 0
        self.state: dict[str, Any] = {
            "status": "ready",
            "breaker": "closed",
            "last_error": None,
            "detail": None,
        }
        self.draining = False
        self._send = send
        self._close = close
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self._writer: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def free(self) -> int:
        if self.draining or self.closed:
            return 0
        return self.capacity - len(self.inflight) - self.claiming

    @property
    def load(self) -> float:
        return (len(self.inflight) + self.claiming) / self.capacity if self.capacity else 1.0

    def describe(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "key_id": self.key_id,
            "capacity": self.capacity,
            "inflight": len(self.inflight),
            "draining": self.draining,
            "models": list(self.models),
            **self.state,
        }

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(json.dumps(frame, separators=(",", ":"), ensure_ascii=False))
        except asyncio.QueueFull:
            self.closed = True
            asyncio.get_running_loop().create_task(self._close(4009, "worker too slow"))

    async def _write(self) -> None:
        while True:
            text = await self._queue.get()
            if text is None:
                return
            try:
                await self._send(text)
            except Exception:  # the socket is gone; the reader side notices and detaches us
                return

    async def close(self, code: int, reason: str) -> None:
        """Close the socket (the reader side then sees it end, and the link is detached)."""
        self.closed = True
        with contextlib.suppress(Exception):
            await self._close(code, reason)

    async def stop(self) -> None:
        self.closed = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
