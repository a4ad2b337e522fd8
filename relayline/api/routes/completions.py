"""The OpenAI-compatible gateway: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Authenticated by a tenant key with the ``chats`` scope, or a session token minted with
``completions``;
rate limited per IP and per identity like every route, plus the tenant's cap on completions in
progress. Errors carry OpenAI's fields (``message``, ``type``, ``param``) and relayline's
(``code``, ``detail``, ``request_id``) in one object, so the ``openai`` package raises the
right exception and an operator still finds the request in the logs.

The response waits for the completion's first piece before it picks a status: a completion
that fails before any text (no worker, the model server refused, every attempt lost) answers
with an error status, not with a 200 stream holding an error. Once streaming, a failure is sent
as an ``error`` event, as OpenAI does. Whichever the mode, a client that disconnects cancels the
completion on its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from relayline.api.deps import State, TenantCompletions
from relayline.api.errors import error_response, request_id_of
from relayline.completions import wire
from relayline.completions.service import (
    RETRY_AFTER_S,
    Completion,
    Done,
    Failed,
    Piece,
    Text,
    ToolCalls,
)

router = APIRouter(tags=["openai"])

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ModelOut(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "relayline"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelOut]


@router.get("/v1/models")
async def list_models(who: TenantCompletions, st: State) -> ModelList:
    """The models the connected workers announce (those a completion can name)."""
    return ModelList(data=[ModelOut(id=m) for m in await st.completions.models()])


@router.post("/v1/chat/completions", response_model=None)
async def create_completion(
    body: wire.ChatCompletionIn, request: Request, who: TenantCompletions, st: State
) -> CompletionResponse:
    """A chat completion from a worker serving ``model``: streamed as OpenAI's
    ``chat.completion.chunk`` events ending with ``data: [DONE]``, or whole."""
    request_id = request_id_of(request.scope)
    completion = await st.completions.start(who.require_tenant(), body, request_id)
    return CompletionResponse(completion, body.stream, body.include_usage())


class CompletionResponse(Response):
    """An ASGI response that runs a completion while it listens for the client going away."""

    def __init__(self, completion: Completion, stream: bool, include_usage: bool) -> None:
        # Not Response.__init__: the status and headers are known only once the first piece
        # of the answer is.
        self.background = None
        self.status_code = 200
        self.completion = completion
        self.stream = stream
        self.include_usage = include_usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completion = self.completion
        respond = asyncio.ensure_future(self._respond(scope, send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((respond, gone), return_when=asyncio.FIRST_COMPLETED)
            if not respond.done():
                respond.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await respond
                await completion.disconnected()
            else:
                respond.result()
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            await completion.close()

    async def _respond(self, scope: Scope, send: Send) -> None:
        pieces = self.completion.pieces()
        try:
            if self.stream:
                await self._stream(scope, send, pieces)
            else:
                await self._whole(scope, send, pieces)
        finally:
            await pieces.aclose()

    async def _error(self, scope: Scope, send: Send, failed: Failed) -> None:
        await self.completion.close()
        headers = {"Retry-After": str(RETRY_AFTER_S)} if failed.status == 503 else None
        response = error_response(
            failed.status,
            failed.code,
            failed.detail or failed.code,
            request_id_of(scope),
            headers,
            path=scope.get("path"),
        )
        await response(scope, _no_receive, send)

    async def _whole(self, scope: Scope, send: Send, pieces: AsyncIterator[Piece]) -> None:
        c = self.completion
        text: list[str] = []
        async for piece in pieces:
            if isinstance(piece, Text):
                text.append(piece.text)
            elif isinstance(piece, Failed):
                await self._error(scope, send, piece)
                return
            elif isinstance(piece, Done):
                # The slot is free before the client has the answer: its next request, sent
                # the moment it does, must not find it taken.
                await c.close()
                body = wire.response(
                    c.id,
                    c.model,
                    c.created,
                    "".join(text),
                    _whole_calls(piece.tool_calls),
                    piece.finish_reason,
                    piece.usage,
                )
                payload = json.dumps(body, separators=(",", ":")).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": payload})
                return

    async def _stream(self, scope: Scope, send: Send, pieces: AsyncIterator[Piece]) -> None:
        c = self.completion
        usage = self.include_usage
        texts = wire.TextChunks(c.id, c.model, c.created, with_usage=usage)
        started = False
        async for piece in pieces:
            if isinstance(piece, Failed) and not started:
                await self._error(scope, send, piece)
                return
            if not started:
                started = True
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                role = wire.chunk(
                    c.id, c.model, c.created, {"role": "assistant", "content": ""}, with_usage=usage
                )
                await _body(send, wire.sse(role))
            if isinstance(piece, Text):
                await _body(send, texts.text(piece.text))
            elif isinstance(piece, ToolCalls):
                chunk = wire.chunk(
                    c.id, c.model, c.created, {"tool_calls": piece.calls}, with_usage=usage
                )
                await _body(send, wire.sse(chunk))
            elif isinstance(piece, Failed):
                await c.close()
                error = wire.error_body(
                    piece.status, piece.code, piece.detail or piece.code, request_id_of(scope)
                )
                await _body(send, wire.sse(error))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            else:
                last = wire.chunk(
                    c.id, c.model, c.created, {}, piece.finish_reason, with_usage=usage
                )
                tail = wire.sse(last)
                await c.close()  # before the client reads [DONE] (see _whole)
                if usage:
                    tail += wire.sse(wire.usage_chunk(c.id, c.model, c.created, piece.usage))
                await _body(send, tail + b"data: [DONE]\n\n")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return


def _whole_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls as a whole message carries them (no ``index``)."""
    return [
        {"id": call.get("id", ""), "type": "function", "function": call.get("function", {})}
        for call in calls
    ]


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
