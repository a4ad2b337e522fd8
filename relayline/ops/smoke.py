"""A smoke test of a running relay, as a deploy runs it: ready, a WebSocket opened with a
token, a ``ping`` answered, a ``subscribe`` acknowledged. The first step that fails ends it,
named, with what went wrong."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

STEP_TIMEOUT_S = 10.0


class SmokeFailed(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"smoke step {step!r} failed: {detail}")
        self.step = step
        self.detail = detail


@dataclass
class SmokeReport:
    url: str
    steps: list[dict[str, Any]] = field(default_factory=list)


def _ws_url(url: str) -> str:
    parts = urlsplit(url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path + "/v1/ws", "", ""))


async def _acked(ws: ClientConnection, ref: str) -> dict[str, Any]:
    """Frames until the answer to ``ref``; an error answer fails the step."""
    while True:
        frame = json.loads(await ws.recv())
        if not isinstance(frame, dict) or frame.get("ref") != ref:
            continue  # an event or a server ping
        if frame.get("type") == "error":
            data = frame.get("data") or {}
            raise RuntimeError(f"{data.get('code')}: {data.get('detail')}")
        return frame


async def smoke(
    url: str, token: str, *, topic: str = "admin", timeout_s: float = STEP_TIMEOUT_S
) -> SmokeReport:
    """Run the steps against the relay at ``url``, each within ``timeout_s``; SmokeFailed
    names the first that fails."""
    report = SmokeReport(url)

    async def step(name: str, action: Callable[[], Awaitable[str]]) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                detail = await action()
        except TimeoutError:
            raise SmokeFailed(name, f"no answer within {timeout_s:g} s") from None
        except SmokeFailed:
            raise
        except (OSError, httpx.HTTPError, WebSocketException, RuntimeError, ValueError) as exc:
            raise SmokeFailed(name, f"{type(exc).__name__}: {exc}") from None
        report.steps.append(
            {"step": name, "ms": round((time.perf_counter() - started) * 1000, 1), "ok": detail}
        )

    async def ready() -> str:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            r = await http.get(url.rstrip("/") + "/health/ready")
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        return "ready"

    await step("ready", ready)
    ws: ClientConnection | None = None

    async def open_socket() -> str:
        nonlocal ws
        try:
            ws = await connect(
                _ws_url(url),
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=timeout_s,
            )
        except InvalidStatus as exc:
            raise RuntimeError(f"handshake refused: HTTP {exc.response.status_code}") from None
        return "connected"

    await step("connect", open_socket)
    assert ws is not None
    try:

        async def ping() -> str:
            assert ws is not None
            try:
                await ws.send(json.dumps({"op": "ping", "ref": "smoke-ping"}))
                await _acked(ws, "smoke-ping")
            except ConnectionClosed as exc:
                # The relay accepts a refused handshake and closes it at once, with the reason
                # as the close code (4401 a bad token, 4403 an origin, 4429 too many).
                closed = exc.rcvd
                why = f"{closed.code} {closed.reason}" if closed is not None else "no close frame"
                raise SmokeFailed("connect", f"closed by the relay: {why}") from None
            return "pong"

        async def subscribe() -> str:
            assert ws is not None
            await ws.send(json.dumps({"op": "subscribe", "topic": topic, "ref": "smoke-sub"}))
            await _acked(ws, "smoke-sub")
            return f"subscribed to {topic}"

        await step("ping", ping)
        await step("subscribe", subscribe)
    finally:
        await ws.close()
    return report
