"""Coalescing a running answer's deltas into ``message.delta`` events.

An answer publishes at most one ``message.delta`` event per ``delta_coalesce_ms`` (besides the
ones ``delta_coalesce_chars`` of pending text force), and no text waits longer than that: a
worker's ``turn.delta`` text leaves at once when the answer's last event is at least a window
old (the first text of an answer always does), and otherwise waits, with whatever else comes
meanwhile, until the next text that finds the last event a window old, or a window after its
own arrival, whichever is first. So a slow stream's texts wait not at all; a steady one whose
texts come between half a window and a window apart goes out two texts an event, the first
waiting for the second (30 words a second in a 40 ms window: half the events of waiting out the
last event's window, which held nearly every word and sent it alone); a faster one goes out an
event a window. A worker that coalesces the texts itself by the same rule (its ``hello`` says
``coalesces``; each ``turn.assigned`` carries the window as ``coalesce_ms``) sends frames a
window apart already: for its answers the window here is half, slack for the network's jitter,
and a text closer than that waits only for the rest of it. So its frames are published as they
come, and a flood from it is still bounded.
A completion of the OpenAI-compatible gateway has a single reader waiting on each chunk: its
deltas are published as they come (:attr:`Running.immediate`), and its tool calls right after
the text before them.
Guarantees: events carry consecutive, gap-free ``offset``s (flushes of one attempt never
interleave); :attr:`Running.published_text` is exactly what subscribers were sent; with a
shared coordinator, that text is stored as the chat's partial answer before it is published,
so a snapshot from any instance is never behind the events.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

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
        if (
            first
            or running.immediate
            or running.pending_chars >= self.ctx.settings.delta_coalesce_chars
        ):
            await self.flush(running)
        else:
            loop = asyncio.get_running_loop()
            window = self.ctx.settings.delta_coalesce_ms / 1000
            since = loop.time() - running.last_flush
            if running.worker_coalesces:
                # Its frames were a window apart where they left: only the network's jitter
                # brings them closer. One that comes less than half a window after the last
                # event waits out the rest of that half, no more (it has waited on the worker).
                window /= 2
                wait = window - since
            else:
                wait = window
            if since >= window:
                # The answer's last event is a window old: out now, with whatever waited.
                if self.ctx.coordinator.shared:
                    # A flush awaits the shared store and bus: not on this worker's frame
                    # loop, which other answers' deltas wait on. Counted as sent now, so that
                    # the deltas coming before it runs join it instead of spawning more.
                    running.last_flush = loop.time()
                    self.ctx.spawn(self.flush(running))
                else:
                    await self.flush(running)
            elif running.flush_handle is None:
                # Otherwise it waits. From a worker that does not coalesce, a whole window from
                # its own arrival, not the rest of the last event's: a steady stream a little
                # slower than one text a window goes out two texts an event (the first leaving
                # when the second comes), where waiting out the rest of the last event's window
                # sent one an event, each of them held.
                running.flush_handle = loop.call_later(
                    wait, lambda: self.ctx.spawn(self.flush(running))
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
            running.last_flush = asyncio.get_running_loop().time()
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

    async def on_tool_calls(self, running: Running, calls: list[dict[str, Any]]) -> None:
        """A completion's tool calls (already checked): the text before them goes out first,
        then they do, at once, at the answer's current offset."""
        if running.first_token is None:
            running.first_token = time.monotonic()
        await self.flush(running)
        async with running.lock:
            merge_tool_calls(running.tool_calls, calls)
            await self.ctx.events.message_delta(
                running.chat_id,
                running.message_id,
                running.turn_id,
                running.published_chars,
                "",
                calls,
            )

    @staticmethod
    def cancel_timer(running: Running) -> None:
        """Drop a scheduled flush: what is pending then stays unpublished."""
        if running.flush_handle is not None:
            running.flush_handle.cancel()
            running.flush_handle = None


MAX_TOOL_CALLS = 128
MAX_NAME_CHARS = 200


def checked_tool_calls(value: object) -> list[dict[str, Any]] | None:
    """A worker's ``tool_calls`` in OpenAI's streamed form, reduced to the fields clients read
    (``index``, ``id``, ``type``, ``function.name``, ``function.arguments``); None when
    malformed."""
    if not isinstance(value, list) or not value or len(value) > MAX_TOOL_CALLS:
        return None
    calls: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, dict):
            return None
        index = item.get("index")
        function = item.get("function") or {}
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < MAX_TOOL_CALLS
            or not isinstance(function, dict)
        ):
            return None
        call: dict[str, Any] = {"index": index}
        fn: dict[str, str] = {}
        for key, source, limit in (
            ("id", item, MAX_NAME_CHARS),
            ("name", function, MAX_NAME_CHARS),
            ("arguments", function, None),
        ):
            part = source.get(key)
            if part is None:
                continue
            if not isinstance(part, str) or (limit is not None and len(part) > limit):
                return None
            if key == "id":
                call["id"] = part
                call["type"] = "function"
            else:
                fn[key] = part
        if fn:
            call["function"] = fn
        calls.append(call)
    return calls


def merge_tool_calls(whole: list[dict[str, Any]], pieces: list[dict[str, Any]]) -> None:
    """Add streamed pieces to the whole calls, by index (names and arguments are appended)."""
    for piece in pieces:
        index = piece["index"]
        while len(whole) <= index:
            whole.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call = whole[index]
        if "id" in piece:
            call["id"] = piece["id"]
        function = piece.get("function") or {}
        call["function"]["name"] += function.get("name", "")
        call["function"]["arguments"] += function.get("arguments", "")


def tool_call_chars(calls: list[dict[str, Any]]) -> int:
    return sum(len((c.get("function") or {}).get("arguments", "")) for c in calls)
