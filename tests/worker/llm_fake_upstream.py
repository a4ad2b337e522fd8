"""A scriptable OpenAI-compatible upstream on 127.0.0.1: real sockets, real HTTP/1.1 chunking.

Each request takes the next behaviour from ``script`` (the last one repeats), so a test can
say "500, 500, then answer" and count ``hits`` afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Behaviour = Callable[["Exchange"], Awaitable[None]]

_REASONS = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error"}


class Exchange:
    """One request being answered."""

    def __init__(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        self.writer = writer
        self.body = body

    async def head(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        all_headers = {
            "Content-Type": "text/event-stream",
            "Transfer-Encoding": "chunked",
            "Connection": "close",
            **(headers or {}),
        }
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def event(self, payload: dict[str, Any] | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        await self.chunk(f"data: {text}\n\n".encode())

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


def text_event(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def answer(
    texts: Sequence[str] = ("Hel", "lo"),
    usage: tuple[int, int] | None = (7, 2),
    *,
    delay: float = 0.0,
) -> Behaviour:
    async def run(ex: Exchange) -> None:
        await ex.head()
        await ex.event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        for text in texts:
            await asyncio.sleep(delay)
            await ex.event(text_event(text))
        await ex.event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if usage:
            await ex.event(
                {"choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}
            )
        await ex.event("[DONE]")
        await ex.end()

    return run


def tool_calls(calls: Sequence[tuple[str, str, str]]) -> Behaviour:
    """Stream ``(id, name, arguments)`` calls, arguments split into three fragments each."""

    async def run(ex: Exchange) -> None:
        await ex.head()
        for index, (call_id, name, arguments) in enumerate(calls):
            third = max(1, len(arguments) // 3)
            pieces = [arguments[:third], arguments[third : 2 * third], arguments[2 * third :]]
            first = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            await ex.event({"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]})
            for piece in pieces:
                frag = {"index": index, "function": {"arguments": piece}}
                await ex.event({"choices": [{"index": 0, "delta": {"tool_calls": [frag]}}]})
        await ex.event({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        await ex.event("[DONE]")
        await ex.end()

    return run


def status(code: int, message: str = "nope", headers: dict[str, str] | None = None) -> Behaviour:
    async def run(ex: Exchange) -> None:
        body = json.dumps({"error": {"message": message}}).encode()
        await ex.head(code, {"Content-Type": "application/json", **(headers or {})})
        await ex.chunk(body)
        await ex.end()

    return run


def stall_before_first(seconds: float = 30.0) -> Behaviour:
    async def run(ex: Exchange) -> None:
        await ex.head()
        await asyncio.sleep(seconds)

    return run


def stall_after_first(seconds: float = 30.0) -> Behaviour:
    async def run(ex: Exchange) -> None:
        await ex.head()
        await ex.event(text_event("partial"))
        await asyncio.sleep(seconds)

    return run


def drop_after_first() -> Behaviour:
    async def run(ex: Exchange) -> None:
        await ex.head()
        await ex.event(text_event("partial"))
        ex.writer.transport.abort()

    return run


def drop_before_response() -> Behaviour:
    async def run(ex: Exchange) -> None:
        ex.writer.transport.abort()

    return run


def raw_events(*events: str) -> Behaviour:
    async def run(ex: Exchange) -> None:
        await ex.head()
        for event in events:
            await ex.event(event)
        await ex.end()

    return run


class FakeUpstream:
    def __init__(self) -> None:
        self.script: list[Behaviour] = [answer()]
        self.hits = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.active = 0
        self.max_active = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.base_url = ""

    def play(self, *behaviours: Behaviour) -> None:
        self.script = list(behaviours)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        method, _, rest = lines[0].partition(" ")
        if method != "POST" or not rest.split(" ")[0].endswith("/chat/completions"):
            # Not a chat completion (a worker's probe of the server, say): not found, not counted.
            writer.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        self.hits += 1
        self.headers.append(headers)
        self.requests.append(json.loads(body or b"{}"))
        behaviour = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await behaviour(Exchange(writer, self.requests[-1]))
        finally:
            self.active -= 1
