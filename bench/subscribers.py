"""The load generator's clients: subscribers that check every event they get, and the
publisher that drives bursts through the server's publish endpoint.

Every event carries ``data.t``, the publisher's send time in microseconds on this process's
monotonic clock, so a subscriber computes publish-to-receive latency without clock skew. Each
subscriber checks that its topic's ``seq`` goes up by one each time (no gap, no duplicate):
byte for byte against the topic's stream as first received (:class:`TopicStream`), so the
check costs a ``memcmp`` per chunk rather than a parse per event.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wsclient import HttpClient, WsClient, open_socket

PATHS = {"relay": "/v1/ws", "sio": "/socket.io/?EIO=4&transport=websocket"}
CONNECT_CONCURRENCY = 100


@dataclass
class Spec:
    dialect: str  # "relay" or "sio"
    scenario: str  # "burst", "idle" or "slow"
    host: str
    port: int
    server_pid: int
    token: str  # subscribers' credential
    publish_token: str
    publish_path: str
    topic: str
    clients: int = 100
    messages: int = 100
    chunk: int = 1000
    repeats: int = 1
    payload: int = 100
    rate: float = 0.0  # slow scenario: messages per second
    slow_fraction: float = 0.1
    slow_rcvbuf: int = 4096
    metrics_token: str = ""
    timeout_s: float = 120.0
    # Several relay instances: subscribers go round robin over ``ports`` (publishing stays on
    # ``port``) and the servers' CPU is the sum over ``server_pids``; ``redis_pid`` is watched
    # too when set.
    ports: list[int] = field(default_factory=list)
    server_pids: list[int] = field(default_factory=list)
    redis_pid: int = 0
    # burst: with quiet_runs, stop repeating once that many runs had at most quiet_limit of a
    # core of other work on the two cores (``repeats`` is then the most runs there will be).
    quiet_runs: int = 0
    quiet_limit: float = 0.3
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sub_ports(self) -> list[int]:
        return self.ports or [self.port]

    @property
    def pids(self) -> list[int]:
        return self.server_pids or [self.server_pid]


class TopicStream:
    """A topic's frames in seq order, byte for byte, shared by all its subscribers.

    A server sends every subscriber the same frames (framed once, or at least encoded the same
    way), so a subscriber need not parse what arrives: comparing it with the stream (one C
    ``memcmp``) proves it is exactly the next frames, in order, with nothing missing or
    repeated. Only the first subscriber to receive a frame parses it (its ``seq`` and send
    time) and appends it here. Anything else (a gap, a duplicate, a control frame between the
    events) fails the comparison, and that chunk is parsed frame by frame and counted exactly.
    """

    __slots__ = ("data", "ends", "first_seq", "stamps")

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends: array[int] = array("q")  # where each frame ends in ``data``
        self.stamps: array[int] = array("q")  # each frame's publish time (µs)
        self.first_seq = -1

    @property
    def next_seq(self) -> int:
        return self.first_seq + len(self.ends)

    def start_of(self, seq: int) -> int:
        """Where frame ``seq`` starts in ``data`` (its end if it is the next one), or -1."""
        index = seq - self.first_seq
        if self.first_seq < 0 or index < 0 or index > len(self.ends):
            return -1
        return self.ends[index - 1] if index else 0

    def append(self, frame: bytes | bytearray, seq: int, stamp: int) -> None:
        if self.first_seq < 0:
            self.first_seq = seq
        elif seq != self.next_seq:
            return
        self.data += frame
        self.ends.append(len(self.data))
        self.stamps.append(stamp)


class Subscriber(WsClient):
    """Counts one topic's events; ``lat`` collects latencies (µs) unless it is None."""

    def __init__(
        self, spec: Spec, base: float, lat: array[int] | None, stream: TopicStream, port: int
    ) -> None:
        super().__init__(spec.host, port, PATHS[spec.dialect], self.protocols(spec), base)
        self.spec = spec
        self.port = port
        self.lat = lat
        self.stream = stream
        self.subscribed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.expect = 0
        self.count = 0
        self.gaps = 0
        self.dups = 0
        self.target = -1
        self.reached_at = 0
        self.on_target: Callable[[], None] | None = None

    @staticmethod
    def protocols(spec: Spec) -> list[str]:
        return ["relayline.v1", f"bearer.{spec.token}"] if spec.dialect == "relay" else []

    def take(self, buf: bytes | bytearray, now: int) -> None:
        stream = self.stream
        at = stream.start_of(self.expect)
        if at < 0:
            self.keep(buf, self.walk(buf, 0, now))
            return
        known, size = stream.data, len(buf)
        avail = len(known) - at
        same = known.startswith(buf, at) if size <= avail else buf.startswith(known[at:])
        if not same:
            self.keep(buf, self.walk(buf, 0, now))
            return
        first = self.expect - stream.first_seq
        last = bisect_right(stream.ends, at + min(size, avail), first)
        used = 0
        if last > first:
            self.delivered(last - first, stream.stamps[first:last], now)
            used = stream.ends[last - 1] - at
        # Past what the stream holds: new frames (parsed, and appended to it) or a partial one.
        self.keep(buf, self.walk(buf, used, now))

    def delivered(self, count: int, stamps: array[int], now: int) -> None:
        self.expect += count
        self.count += count
        if self.lat is not None:
            self.lat.extend(map(now.__sub__, stamps))
        if self.count >= self.target > self.count - count:
            self.reached_at = now
            if self.on_target is not None:
                self.on_target()

    def on_text(self, buf: bytes | bytearray, begin: int, start: int, end: int, now: int) -> None:
        # bytes.find and int() rather than json.loads: int() also skips the space json.dumps
        # puts after a colon.
        at = buf.find(b'"seq":', start, end)
        comma = buf.find(b",", at, end)
        stamp = buf.find(b'"t":', comma, end)
        if at < 0 or comma < 0 or stamp < 0:  # not an event: an ack, a ping, ...
            self.on_control(bytes(buf[start:end]))
            return
        seq = int(buf[at + 6 : comma])
        sent = int(buf[stamp + 4 : buf.find(b",", stamp, end)])
        if seq != self.expect:
            if seq < self.expect:
                self.dups += 1
                return
            self.gaps += seq - self.expect
            self.expect = seq
        if seq == self.stream.next_seq or self.stream.first_seq < 0:
            self.stream.append(buf[begin:end], seq, sent)
        self.delivered(1, array("q", (sent,)), now)

    def on_open(self) -> None:
        if self.spec.dialect == "relay":
            self.send_text(json.dumps({"op": "subscribe", "topic": self.spec.topic, "ref": 1}))

    def on_control(self, payload: bytes) -> None:
        if self.spec.dialect == "relay":
            frame = json.loads(payload)
            if frame.get("ref") == 1 and not self.subscribed.done():
                if frame["type"] == "ack":
                    self.subscribed.set_result(frame["data"]["seq"])
                else:
                    self.subscribed.set_exception(RuntimeError(str(frame)))
            return
        # Engine.IO / Socket.IO v4 packets: open, connect, ack, ping.
        if payload == b"2":
            self.send_text("3")
        elif payload.startswith(b"0{"):
            self.send_text("40" + json.dumps({"token": self.spec.token}))
        elif payload.startswith(b"40"):
            self.send_text("421" + json.dumps(["subscribe", self.spec.topic]))
        elif payload.startswith(b"431["):
            ack = json.loads(payload[3:])[0]
            if not self.subscribed.done():
                self.subscribed.set_result(ack["seq"])
        elif payload.startswith(b"44") and not self.subscribed.done():
            self.subscribed.set_exception(RuntimeError(payload.decode()))


async def connect_all(
    spec: Spec,
    count: int,
    base: float,
    lat: Callable[[int], array[int] | None],
    stream: TopicStream,
    rcvbuf: int = 0,
) -> list[Subscriber]:
    """Open and subscribe ``count`` clients, at most CONNECT_CONCURRENCY at a time, round robin
    over the spec's subscriber ports."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    ports = spec.sub_ports

    async def one(index: int) -> Subscriber:
        port = ports[index % len(ports)]
        async with gate:
            sock = await open_socket(spec.host, port, rcvbuf)
            _, client = await loop.create_connection(
                lambda: Subscriber(spec, base, lat(index), stream, port), sock=sock
            )
            async with asyncio.timeout(30):
                await client.opened
                client.expect = await client.subscribed + 1
            return client

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def close_all(clients: list[Subscriber]) -> None:
    for client in clients:
        client.close()
    if clients:
        await asyncio.wait([c.done for c in clients], timeout=10)
    for client in clients:
        client.abort()


class Publisher:
    def __init__(self, spec: Spec, http: HttpClient, base: float) -> None:
        self.spec = spec
        self.http = http
        self.base = base
        self.clock = time.monotonic
        pad = max(1, spec.payload - 30)
        self.event = b'{"type":"custom.bench","data":{"t":%d,"p":"' + b"x" * pad + b'"}}'
        self.head = b'{"topic":"' + spec.topic.encode() + b'","events":['
        self.headers = {
            "Authorization": f"Bearer {spec.publish_token}",
            "Content-Type": "application/json",
        }

    async def publish(self, count: int) -> None:
        """POST ``count`` events (one call); every event carries this moment as ``t``."""
        stamp = int((self.clock() - self.base) * 1_000_000)
        one = self.event % stamp
        body = self.head + b",".join([one] * count) + b"]}"
        status, text = await self.http.request("POST", self.spec.publish_path, body, self.headers)
        if status != 202:
            raise RuntimeError(f"publish answered {status}: {text[:200]!r}")
