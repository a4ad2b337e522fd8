"""``WsHarness``: a WebSocket client for tests of relayline and of applications built on it.

    async with WsHarness(server_or_url, token=token, topics=["chat:abc"]) as ws:
        await ws.send_op("send", topic="chat:abc", content="hi", client_msg_id="m1")
        pkt = await ws.expect("message.created", timeout=1)
        ws.assert_in_order("chat:abc")

Every frame received is kept in ``frames`` (in arrival order), so tests can assert order and
the absence of duplicates after the fact. ``server_or_url`` is a ``ws://`` URL, an
``http://`` base URL, a :class:`~relayline.testing.server.RelayServer`, or a
:class:`~relayline.config.Settings` (a relay is then started for the harness and stopped
after it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relayline.config import Settings
from relayline.testing.server import RelayServer

Frame = dict[str, Any]


class OpError(Exception):
    """The relay answered an op with an error frame."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class WsHarness:
    def __init__(
        self,
        target: str | RelayServer | Settings,
        *,
        token: str | None = None,
        topics: Sequence[str] = (),
        origin: str | None = None,
        auth: str = "subprotocol",
        max_size: int | None = 16 * 1024 * 1024,
    ) -> None:
        self._target = target
        self._own_server: RelayServer | None = None
        self.token = token
        self.topics = list(topics)
        self.origin = origin
        self.auth = auth
        self.max_size = max_size
        self.frames: list[Frame] = []
        self.positions: dict[str, tuple[str, int]] = {}
        self._unread: asyncio.Queue[Frame] = asyncio.Queue()
        self._acks: dict[Any, asyncio.Future[Frame]] = {}
        self._refs = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self.ws: ClientConnection | None = None
        self.close_code: int | None = None
        self.closed = asyncio.Event()

    def _url(self) -> str:
        target = self._target
        if isinstance(target, RelayServer):
            return target.ws_url
        assert isinstance(target, str)
        if target.startswith("http"):
            return "ws" + target[4:].rstrip("/") + "/v1/ws"
        return target

    async def __aenter__(self) -> Self:
        if isinstance(self._target, Settings):
            self._own_server = RelayServer(self._target)
            await self._own_server.start()
            self._target = self._own_server
        await self.connect()
        for topic in self.topics:
            await self.subscribe(topic)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if self._own_server is not None:
            await self._own_server.stop()

    async def connect(self) -> None:
        subprotocols = ["relayline.v1"]
        headers: dict[str, str] = {}
        if self.token and self.auth == "subprotocol":
            subprotocols.append(f"bearer.{self.token}")
        elif self.token and self.auth == "header":
            headers["Authorization"] = f"Bearer {self.token}"
        self.ws = await connect(
            self._url(),
            subprotocols=subprotocols,  # type: ignore[arg-type]
            additional_headers=headers,
            origin=self.origin,  # type: ignore[arg-type]
            max_size=self.max_size,
            ping_interval=None,
            open_timeout=5,
            compression=None,
        )
        if self.token and self.auth == "first_frame":
            await self.ws.send(json.dumps({"op": "auth", "token": self.token}))
        self.closed.clear()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                frame: Frame = json.loads(raw)
                self.frames.append(frame)
                ref = frame.get("ref")
                if frame.get("type") in ("ack", "error") and ref in self._acks:
                    future = self._acks.pop(ref)
                    if not future.done():
                        future.set_result(frame)
                    continue
                if "topic" in frame and "seq" in frame:
                    epoch = (
                        frame["data"].get("epoch") if frame.get("type") == "events.missed" else None
                    )
                    old = self.positions.get(frame["topic"], ("", 0))
                    self.positions[frame["topic"]] = (epoch or old[0], frame["seq"])
                await self._unread.put(frame)
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else 1006
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"closed with {self.close_code}"))
            self.closed.set()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader

    # Ops

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    async def send_op(self, op: str, *, timeout: float = 5.0, **fields: Any) -> Frame:
        """Send an op with a fresh ``ref`` and return the ack's ``data``; raise ``OpError``."""
        assert self.ws is not None
        ref = next(self._refs)
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._acks[ref] = future
        await self.ws.send(json.dumps({"op": op, "ref": ref, **fields}))
        async with asyncio.timeout(timeout):
            frame = await future
        if frame["type"] == "error":
            raise OpError(frame["data"]["code"], frame["data"]["detail"])
        data: Frame = frame.get("data") or {}
        return data

    async def subscribe(
        self, topic: str, epoch: str | None = None, after_seq: int | None = None
    ) -> Frame:
        fields: dict[str, Any] = {"topic": topic}
        if epoch is not None:
            fields.update(epoch=epoch, after_seq=after_seq or 0)
        data = await self.send_op("subscribe", **fields)
        self.positions[topic] = (data["epoch"], data["seq"])
        return data

    # Expectations

    async def recv(self, timeout: float = 1.0) -> Frame:
        """The next frame that is not an ack of this harness's ops."""
        async with asyncio.timeout(timeout):
            return await self._unread.get()

    async def expect(self, type: str, timeout: float = 1.0, *, topic: str | None = None) -> Frame:
        """Skip frames until one of ``type`` (and ``topic``) arrives; raise TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self._unread.get()
                if frame.get("type") == type and (topic is None or frame.get("topic") == topic):
                    return frame

    async def expect_closed(self, timeout: float = 5.0) -> int:
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        assert self.close_code is not None
        return self.close_code

    async def assert_silent(self, duration: float = 0.2, type: str | None = None) -> None:
        """Nothing (of ``type``) arrives for ``duration`` seconds."""
        try:
            frame = await self.expect(type, duration) if type else await self.recv(duration)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")

    def events(self, topic: str | None = None, type: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.frames
            if "seq" in f
            and f.get("type") != "events.missed"
            and (topic is None or f.get("topic") == topic)
            and (type is None or f.get("type") == type)
        ]

    def assert_in_order(self, topic: str) -> None:
        """Event seqs of ``topic`` strictly increase and have no gap."""
        seqs = [f["seq"] for f in self.events(topic)]
        if seqs:
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs

    def assert_no_duplicates(self, topic: str | None = None) -> None:
        ids = [f["id"] for f in self.events(topic)]
        assert len(ids) == len(set(ids)), "duplicate events received"
