"""Decoding of OpenAI-style ``text/event-stream`` bodies into :class:`StreamChunk` values.

Everything is bounded (line length, tool arguments, error excerpts): an upstream is not trusted
to keep them small.
"""

from __future__ import annotations

import codecs
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


async def sse_data_lines(body: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Yield the payload of each ``data:`` line; comments, other fields and blanks are skipped.

    Every OpenAI-compatible server sends one JSON event per ``data:`` line, so each line is
    dispatched on its own instead of joining multi-line events; that also tolerates servers
    that forget the blank line between events.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    async for raw in body:
        pending += decoder.decode(raw)
        *lines, pending = pending.split("\n")
        for line in lines:
            data = _data_of(line)
            if data is not None:
                yield data
        if len(pending) > MAX_LINE_CHARS:
            raise LLMError("upstream_5xx", "upstream sent an oversized stream line")
    pending += decoder.decode(b"", final=True)
    data = _data_of(pending)
    if data is not None:
        yield data


def _data_of(line: str) -> str | None:
    line = line.rstrip("\r")
    if not line.startswith("data:"):
        return None
    value = line[5:]
    return value[1:] if value.startswith(" ") else value


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


def _decode_event(data: str, calls: ToolCallAssembler) -> _Decoded:
    """One ``data:`` payload; any shape other than the documented one is ``upstream_5xx``."""
    out = _Decoded()
    try:
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


async def parse_chat_stream(response: httpx.Response) -> AsyncGenerator[StreamChunk, None]:
    """Turn an SSE body into chunks, translating transport errors into ``LLMError``.

    The answer is complete only when the stream said so twice: a choice's ``finish_reason`` and
    then ``[DONE]``. A stream that ends without either (cleanly or not) is an ``incomplete``
    answer; a connection lost or a stall before the ``finish_reason`` is ``upstream_5xx`` or
    ``timeout``.
    """
    calls = ToolCallAssembler()
    usage: Usage | None = None
    finish_reason: str | None = None
    done = False
    try:
        async for data in sse_data_lines(response.aiter_bytes()):
            if data == "[DONE]":
                done = True
                break
            decoded = _decode_event(data, calls)
            usage = decoded.usage or usage
            finish_reason = finish_reason or decoded.finish_reason
            for chunk in decoded.chunks:
                yield chunk
    except httpx.TimeoutException as exc:
        # A server that finished the answer but never closes the stream cost us nothing.
        if finish_reason is None:
            raise LLMError("timeout", "upstream stopped sending data") from exc
    except httpx.TransportError as exc:
        if finish_reason is None:
            raise LLMError("upstream_5xx", "connection to upstream lost") from exc
    except httpx.DecodingError as exc:
        raise LLMError("upstream_5xx", "upstream sent an undecodable body") from exc
    if not done or finish_reason is None:
        # Both or it is not an answer: llama.cpp's server, for one, ends a stream it interrupts
        # (another request came in) with [DONE] and no finish_reason.
        missing = "a finish_reason" if finish_reason is None else "[DONE]"
        raise LLMError("incomplete", f"the model server ended the answer without {missing}")
    for call in calls.drain():
        yield StreamChunk(tool_call=call)
    yield StreamChunk(finish_reason=finish_reason)
    if usage is not None:
        yield StreamChunk(usage=usage)
