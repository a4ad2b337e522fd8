"""Coalescing a running answer's deltas into ``message.delta`` events.

The first text of an answer is published at once; after it, a worker's ``turn.delta`` text is
buffered and published once ``delta_coalesce_chars`` are pending or ``delta_coalesce_ms`` after
the first pending delta, whichever comes first.
Guarantees: events carry consecutive, gap-free ``offset``s (flushes of one attempt never
interleave); :attr:`Running.published_text` is exactly what subscribers were sent; with a
shared coordinator, that text is stored as the chat's partial answer before it is published,
so a snapshot from any instance is never behind the events.
"""

from __future__ import annotations

import asyncio
import time

from relayline.turns.context import TurnContext
from relayline.turns.running import Running


class DeltaStream:
    def __init__(self, ctx: TurnContext) -> None:
        self.ctx = ctx

    async def on_delta(self, running: Running, text: str) -> None:
        if not text:
            return
        first = running.first_token is None
        if first:
            running.first_token = time.monotonic()
        running.pending.append(text)
        running.pending_chars += len(text)
        # The first text of an answer leaves at once (the wait for a first token is what people
        # notice); coalescing is for the deltas after it.
        if first or running.pending_chars >= self.ctx.settings.delta_coalesce_chars:
            await self.flush(running)
        elif running.flush_handle is None:
            delay = self.ctx.settings.delta_coalesce_ms / 1000
            running.flush_handle = asyncio.get_running_loop().call_later(
                delay, lambda: self.ctx.spawn(self.flush(running))
            )

    async def flush(self, running: Running) -> None:
        """Publish whatever is pending now (nothing when nothing is)."""
        async with running.lock:
            self.cancel_timer(running)
            if not running.pending:
                return
            text = "".join(running.pending)
            running.pending.clear()
            running.pending_chars = 0
            offset = running.published_chars
            running.published.append(text)
            running.published_chars += len(text)
            if self.ctx.coordinator.shared:
                # Only the new text travels; the whole is sent only to repair a lost append.
                await self.ctx.coordinator.append_partial(
                    running.chat_id,
                    running.message_id,
                    running.attempt,
                    offset,
                    text,
                    lambda: running.published_text,
                )
            await self.ctx.events.message_delta(
                running.chat_id, running.message_id, running.turn_id, offset, text
            )

    @staticmethod
    def cancel_timer(running: Running) -> None:
        """Drop a scheduled flush: what is pending then stays unpublished."""
        if running.flush_handle is not None:
            running.flush_handle.cancel()
            running.flush_handle = None
