"""Decoding of OpenAI-style ``text/event-stream`` bodies into :class:`StreamChunk` values.

Everything is bounded (line length, tool arguments, error excerpts): an upstream is not trusted
to keep them small.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from relayline.protocol import jsoncodec
from relayline.worker.llm.base import LLMError, StreamChunk, ToolCall, Usage

MAX_LINE_CHARS = 1024 * 1024
MAX_TOOL_ARGUMENT_CHARS = 1024 * 1024
_SNIPPET_BYTES = 2048
_SNIPPET_CHARS = 200


class DataLines:
    """Splits a ``text/event-stream`` body, fed as it arrives, into the payloads of its
    ``data:`` lines (bytes); comments, other fields and blank lines are skipped.

    Every OpenAI-compatible server sends one JSON event per ``data:`` line, so each line is
    dispatched on its own instead of joining multi-line events; that also tolerates servers
    that forget the blank line between events. Lines end in LF or CRLF. The body is split as
    bytes (a UTF-8 character is never cut, since LF is never part of one) and only payloads are
    decoded, by their reader.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, raw: bytes) -> list[bytes]:
        """The payloads of the lines that ``raw`` completes, in order."""
        pending = self._pending + raw if self._pending else raw
        if b"\n" not in raw:
            self._pending = pending
            if len(pending) > MAX_LINE_CHARS:
                raise LLMError("upstream_5xx", "upstream sent an oversized stream line")
            return []
        *lines, pending = pending.split(b"\n")
        self._pending = pending
        if len(pending) > MAX_LINE_CHARS:
            raise LLMError("upstream_5xx", "upstream sent an oversized stream line")
        out = []
        for line in lines:
            if line.startswith(b"data:"):
                out.append(_payload(line))
        return out

    def end(self) -> list[bytes]:
        """The payload of a last line that had no line end, if it is a ``data:`` line."""
        line, self._pending = self._pending, b""
        return [_payload(line)] if line.startswith(b"data:") else []


def _payload(line: bytes) -> bytes:
    if line.endswith(b"\r"):
        line = line[:-1]
    return line[6:] if line.startswith(b"data: ") else line[5:]


async def sse_data_lines(body: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Yield the payload of each ``data:`` line of ``body`` as text (see :class:`DataLines`)."""
    lines = DataLines()
    async for raw in body:
        for data in lines.feed(raw):
            yield data.decode("utf-8", "replace")
    for data in lines.end():
        yield data.decode("utf-8", "replace")


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    size: int = 0


class ToolCallAssembler:
    """Collects streamed ``delta.tool_calls`` fragments into complete :class:`ToolCall` s.

    Fragments are keyed by their ``index`` (position in the delta when a server omits it);
    ``id`` and ``name`` are taken from the first fragment that has them, because some servers
    repeat them on every fragment; ``arguments`` pieces are concatenated in arrival order.
    """

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def add(self, fragment: Mapping[str, Any], position: int) -> None:
        if not isinstance(fragment, Mapping):
            raise LLMError("upstream_5xx", "malformed tool call in upstream stream")
        index = fragment.get("index", position)
        if not isinstance(index, int):
            raise LLMError("upstream_5xx", "malformed tool call index in upstream stream")
        call = self._calls.setdefault(index, _PartialCall())
        if fragment.get("id") and not call.id:
            call.id = str(fragment["id"])
        function = fragment.get("function") or {}
        if function.get("name") and not call.name:
            call.name = str(function["name"])
        piece = function.get("arguments")
        if piece:
            # Some servers send the arguments as an object rather than as JSON text.
            text = piece if isinstance(piece, str) else json.dumps(piece, separators=(",", ":"))
            call.size += len(text)
            if call.size > MAX_TOOL_ARGUMENT_CHARS:
                raise LLMError("upstream_5xx", "upstream sent oversized tool arguments")
            call.arguments.append(text)

    def drain(self) -> Iterator[ToolCall]:
        """Yield and forget every call collected so far, in index order; nameless ones dropped."""
        calls, self._calls = self._calls, {}
        for index in sorted(calls):
            call = calls[index]
            if call.name:
                yield ToolCall(
                    id=call.id or f"call_{index}",
                    name=call.name,
                    arguments="".join(call.arguments) or "{}",
                )


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()[:_SNIPPET_CHARS]


async def error_snippet(response: httpx.Response) -> str:
    """A short, printable excerpt of an error body; never more than a few KiB is read."""
    raw = b""
    with contextlib.suppress(httpx.HTTPError):
        async for piece in response.aiter_bytes():
            raw += piece
            if len(raw) >= _SNIPPET_BYTES:
                break
    text = raw[:_SNIPPET_BYTES].decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
        error = jsoncodec.loads(text)["error"]
        text = error["message"] if isinstance(error, dict) else str(error)
    return _printable(text)


@dataclass(slots=True)
class _Decoded:
    chunks: list[StreamChunk] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None


def _decode_event(data: str | bytes, calls: ToolCallAssembler) -> _Decoded:
    """One ``data:`` payload; any shape other than the documented one is ``upstream_5xx``."""
    out = _Decoded()
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        event = jsoncodec.loads(data)  # a nesting bound, as for every JSON from a peer
        if event.get("error"):
            error = event["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise LLMError("upstream_5xx", f"upstream error: {_printable(str(message))}")
        if event.get("usage"):
            out.usage = Usage(
                prompt_tokens=int(event["usage"].get("prompt_tokens") or 0),
                completion_tokens=int(event["usage"].get("completion_tokens") or 0),
            )
        for choice in list(event.get("choices") or ())[:1]:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.chunks.append(StreamChunk(text=text))
            for position, fragment in enumerate(delta.get("tool_calls") or ()):
                calls.add(fragment, position)
            reason = choice.get("finish_reason")
            if reason:
                out.finish_reason = str(reason)[:32]
                out.chunks.extend(StreamChunk(tool_call=call) for call in calls.drain())
    except (ValueError, TypeError, AttributeError, KeyError):
        raise LLMError("upstream_5xx", "malformed event in upstream stream") from None
    return out


class ChatEvents:
    """The state of one answer's stream: its events, decoded a batch at a time.

    :meth:`take` turns the payloads of one read into chunks; the texts of neighbouring events
    are joined into one chunk (what was already received goes on as one delta; the text, its
    order and what follows it are unchanged).
    """

    __slots__ = ("calls", "done", "error", "finish_reason", "usage")

    def __init__(self) -> None:
        self.calls = ToolCallAssembler()
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.done = False
        self.error: LLMError | None = None

    def take(self, batch: list[bytes]) -> list[StreamChunk]:
        """The chunks of ``batch``; an event that fails stops it, the chunks of the events
        before it are returned and the failure is left in :attr:`error`."""
        out: list[StreamChunk] = []
        text: list[str] = []
        for data in batch:
            if data == b"[DONE]":
                self.done = True
                break
            try:
                decoded = _decode_event(data, self.calls)
            except LLMError as exc:
                self.error = exc
                break
            self.usage = decoded.usage or self.usage
            self.finish_reason = self.finish_reason or decoded.finish_reason
            for chunk in decoded.chunks:
                if chunk.text is not None:
                    text.append(chunk.text)
                    continue
                if text:
                    out.append(StreamChunk(text="".join(text)))
                    text = []
                out.append(chunk)
        if text:
            out.append(StreamChunk(text=text[0] if len(text) == 1 else "".join(text)))
        return out

    def ending(self) -> list[StreamChunk]:
        """What follows the last event: the rest of the tool calls, the finish_reason, usage.

        The answer is complete only when the stream said so twice: a choice's
        ``finish_reason`` and then ``[DONE]``; otherwise ``incomplete``.
        """
        if not self.done or self.finish_reason is None:
            # Both or it is not an answer: llama.cpp's server, for one, ends a stream it
            # interrupts (another request came in) with [DONE] and no finish_reason.
            missing = "a finish_reason" if self.finish_reason is None else "[DONE]"
            raise LLMError("incomplete", f"the model server ended the answer without {missing}")
        out = [StreamChunk(tool_call=call) for call in self.calls.drain()]
        out.append(StreamChunk(finish_reason=self.finish_reason))
        if self.usage is not None:
            out.append(StreamChunk(usage=self.usage))
        return out


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as received when it has no content encoding (as event streams are sent):
    httpx's decoding layer is skipped; otherwise the decoded body."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    return response.aiter_raw() if encoding in ("", "identity") else response.aiter_bytes()


async def parse_chat_stream(response: httpx.Response) -> AsyncGenerator[StreamChunk, None]:
    """Turn an SSE body into chunks, translating transport errors into ``LLMError``.

    The answer is complete only when the stream said so twice (see :meth:`ChatEvents.ending`):
    a stream that ends without either (cleanly or not) is an ``incomplete`` answer; a
    connection lost or a stall before the ``finish_reason`` is ``upstream_5xx`` or ``timeout``.
    Each read of the body is split and decoded at once, and goes on as few chunks as it
    allows (see :meth:`ChatEvents.take`).
    """
    events = ChatEvents()
    lines = DataLines()
    try:
        async for raw in _body(response):
            batch = lines.feed(raw)
            if batch:
                for chunk in events.take(batch):
                    yield chunk
                if events.error is not None:
                    raise events.error
                if events.done:
                    break
        else:
            for chunk in events.take(lines.end()):
                yield chunk
            if events.error is not None:
                raise events.error
    except httpx.TimeoutException as exc:
        # A server that finished the answer but never closes the stream cost us nothing.
        if events.finish_reason is None:
            raise LLMError("timeout", "upstream stopped sending data") from exc
    except httpx.TransportError as exc:
        if events.finish_reason is None:
            raise LLMError("upstream_5xx", "connection to upstream lost") from exc
    except httpx.DecodingError as exc:
        raise LLMError("upstream_5xx", "upstream sent an undecodable body") from exc
    for chunk in events.ending():
        yield chunk
