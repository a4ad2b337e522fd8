"""Request body cap, enforced while reading (chunked bodies too) → 413 ``payload_too_large``;
JSON nested deeper than :data:`~relayline.protocol.jsoncodec.MAX_JSON_DEPTH` → 422
``validation_error`` (the decoder would otherwise recurse once per level).

The body is read into memory here, up to the cap, before the application sees it: every
endpoint takes a JSON document it would buffer anyway, and refusing early means an oversized
upload never reaches a handler or a database session.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relayline.api.errors import error_response, request_id_of
from relayline.protocol.jsoncodec import MAX_JSON_DEPTH, depth_within


def _json_depth_ok(scope: Scope, body: bytes) -> bool:
    """Whether a body the app would parse as JSON nests within the bound (FastAPI parses a
    body without a content type as JSON too); anything else is the app's to judge."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            if media != b"application/json" and not media.endswith(b"+json"):
                return True
            break
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return True
    # The app's decoder takes UTF-16 and UTF-32 too (json.loads on bytes): judged as UTF-8,
    # such a body could hide its brackets in what look like strings.
    encoding = json.detect_encoding(body)
    if encoding.startswith("utf-8"):
        return depth_within(body)
    try:
        return depth_within(body.decode(encoding, "surrogatepass"))
    except UnicodeDecodeError:
        return True  # the app's decoder fails on it the same way, before parsing anything


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"request body exceeds {self.max_bytes} bytes",
            request_id_of(scope),
            {"Connection": "close"},
            path=scope.get("path"),
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = b"".join(chunks)
        if whole and not _json_depth_ok(scope, whole):
            response = error_response(
                422,
                "validation_error",
                f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels",
                request_id_of(scope),
                path=scope.get("path"),
            )
            await response(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
