"""The clients bench/terminal.py drives: one terminal session through relayline (REST to open
it, the page's WebSocket ops and events) or through terminado (its JSON-array wire format),
each as a page would, every wait bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
from servers import HOST
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relayline.protocol.close_codes import Close

STEP_TIMEOUT_S = 60.0
COLS, ROWS = 120, 40


class RelayTerminal:
    """One terminal session through the relay, as the page drives it."""

    def __init__(self, url: str, key: str, program: str) -> None:
        self.url = url
        self.key = key
        self.program = program
        self.ws: ClientConnection | None = None
        self.topic = ""
        self.id = ""
        self.ref = 0

    async def __aenter__(self) -> RelayTerminal:
        auth = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            r = await client.post(
                "/v1/terminals",
                json={"program": self.program, "cols": COLS, "rows": ROWS},
                headers=auth,
            )
            r.raise_for_status()
            self.id, self.topic = r.json()["id"], r.json()["topic"]
        ws_url = self.url.replace("http://", "ws://") + "/v1/ws"
        self.ws = await connect(
            ws_url,
            subprotocols=["relayline.v1", f"bearer.{self.key}"],  # type: ignore[list-item]
            max_size=None,
            origin=None,
        )
        await self.op("subscribe", topic=self.topic)
        # The screen as it is now comes first; output is live from there on.
        await self.until(lambda frame: bool(frame.get("data", {}).get("snapshot")))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            await client.delete(
                f"/v1/terminals/{self.id}", headers={"Authorization": f"Bearer {self.key}"}
            )

    async def op(self, op: str, **fields: Any) -> None:
        """Send an op and wait for its ack (events that come first are skipped)."""
        assert self.ws is not None
        self.ref += 1
        ref = str(self.ref)
        await self.ws.send(json.dumps({"op": op, "ref": ref, **fields}))
        frame = await self.until(lambda f: f.get("ref") == ref)
        if frame.get("type") != "ack":
            raise RuntimeError(f"{op} refused: {frame}")

    async def send_input(self, data: str) -> None:
        """term.input without waiting for its ack (a page does not wait either)."""
        assert self.ws is not None
        self.ref += 1
        await self.ws.send(
            json.dumps(
                {"op": "term.input", "ref": str(self.ref), "topic": self.topic, "data": data}
            )
        )

    async def until(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        assert self.ws is not None
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                try:
                    raw = await self.ws.recv()
                except ConnectionClosed as exc:
                    if exc.rcvd is not None and exc.rcvd.code == Close.SLOW:
                        raise RuntimeError(
                            "the relay closed this viewer as too slow (4009): it fell more "
                            "than RELAYLINE_WS_QUEUE_MAX_BYTES behind (see --relay-env)"
                        ) from None
                    raise
                frame = json.loads(raw)
                if match(frame):
                    return frame  # type: ignore[no-any-return]

    async def output(self) -> str:
        """The next term.output's text (acks and other events skipped)."""
        frame = await self.until(lambda f: f.get("type") in ("term.output", "term.exited"))
        if frame["type"] == "term.exited":
            raise RuntimeError(f"the program ended: {frame.get('data')}")
        text: str = frame["data"]["data"]
        return text


class TerminadoTerminal:
    def __init__(self, port: int, path: str) -> None:
        self.url = f"ws://{HOST}:{port}{path}"
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> TerminadoTerminal:
        self.ws = await connect(self.url, max_size=None)
        await self.ws.send(json.dumps(["set_size", ROWS, COLS]))
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while json.loads(await self.ws.recv())[0] != "setup":
                pass
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def send_input(self, data: str) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(["stdin", data]))

    async def output(self) -> str:
        assert self.ws is not None
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                message = json.loads(await self.ws.recv())
                if message[0] == "stdout":
                    text: str = message[1]
                    return text
                if message[0] == "disconnect":
                    raise RuntimeError("the program ended")


Terminal = RelayTerminal | TerminadoTerminal
