"""A minimal WebSocket and HTTP/1.1 client on raw asyncio sockets, for the load generator.

One core has to receive hundreds of thousands of small frames a second here, so nothing on the
receive path allocates more than it must: frames are found in place in each chunk the transport
hands over, and a subclass may take a whole chunk at once (:meth:`WsClient.take`) instead of
frame by frame.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
import time
from typing import Any, cast

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
_HEAD = struct.Struct("!BBH")  # first byte, second byte, 16-bit extended length if any


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 requires clients to mask)."""
    size = len(payload)
    key = os.urandom(4)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    if not size:
        return head + key
    keys = (key * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(size, "big")
    return head + key + masked


async def open_socket(host: str, port: int, rcvbuf: int = 0) -> socket.socket:
    """A connected non-blocking TCP socket; ``rcvbuf`` set before connecting (so the window
    the peer sees is small from the first byte)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class WsClient(asyncio.Protocol):
    """One client WebSocket. Subclasses override :meth:`on_text` (hot) and may override
    :meth:`on_open`. ``opened`` resolves after the 101 response, ``done`` with the close code
    (1006 when the connection ended without a close frame). ``base`` is the ``time.monotonic()``
    that arrival stamps count from."""

    def __init__(
        self, host: str, port: int, path: str, subprotocols: list[str], base: float = 0.0
    ) -> None:
        loop = asyncio.get_running_loop()
        # Not loop.time(): uvloop's clock has millisecond resolution.
        self.clock = time.monotonic
        self.base = base
        self.request_head = self._request(host, port, path, subprotocols)
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[int] = loop.create_future()
        self.buf: bytearray | None = None
        self.head = bytearray()
        self.close_code: int | None = None

    def _request(self, host: str, port: int, path: str, subprotocols: list[str]) -> bytes:
        self.key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request_head)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        if not self.done.done():
            self.done.set_result(self.close_code if self.close_code is not None else 1006)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            data = self._handshake(data)
            if not data:
                return
        buf: bytes | bytearray = data
        if self.buf is not None:
            self.buf += data
            buf, self.buf = self.buf, None
        self.take(buf, int((self.clock() - self.base) * 1_000_000))

    def take(self, buf: bytes | bytearray, now: int) -> None:
        """Consume what arrived (``now``: its arrival in µs since ``base``); subclasses may
        take a faster way through it than frame by frame."""
        self.keep(buf, self.walk(buf, 0, now))

    def keep(self, buf: bytes | bytearray, used: int) -> None:
        """Hold ``buf[used:]`` (an incomplete frame) until more arrives."""
        if used < len(buf):
            self.buf = bytearray(buf[used:])

    def walk(self, buf: bytes | bytearray, pos: int, now: int) -> int:
        """Hand every complete frame from ``buf[pos:]`` to :meth:`on_text` or the control
        handling; returns where the first incomplete frame starts."""
        n = len(buf)
        unpack = _HEAD.unpack_from
        while n - pos >= 2:
            if n - pos >= 4:
                first, second, extended = unpack(buf, pos)
            else:
                first, second, extended = buf[pos], buf[pos + 1], -1
            size = second & 0x7F
            if size < 126:
                start = pos + 2
            elif size == 126 and extended >= 0:
                size = extended
                start = pos + 4
            elif size == 127 and n - pos >= 10:
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            else:
                break
            end = start + size
            if end > n:
                break
            if first == 0x81:
                self.on_text(buf, pos, start, end, now)
            else:
                self._control(first, bytes(buf[start:end]))
            pos = end
        return pos

    def eof_received(self) -> bool | None:
        return None

    # Handshake and control frames

    def _handshake(self, data: bytes) -> bytes:
        self.head += data
        end = self.head.find(_HEAD_END)
        if end < 0:
            if len(self.head) > _MAX_HEAD:
                self.abort()
            return b""
        head, rest = bytes(self.head[:end]), bytes(self.head[end + 4 :])
        self.head = bytearray()
        status = head.split(b"\r\n", 1)[0]
        want = base64.b64encode(hashlib.sha1(self.key + _GUID).digest())
        if not status.startswith(b"HTTP/1.1 101") or want not in head:
            self.opened.set_exception(ConnectionError(status.decode("latin-1")))
            self.abort()
            return b""
        self.opened.set_result(None)
        self.on_open()
        return rest

    def _control(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if opcode == 0x8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(mask_frame(0x8, payload[:2]))
                self.transport.close()
        elif opcode == 0x9:
            self.send_frame(0xA, payload)
        elif opcode == 0xA:
            pass
        else:
            self.on_other(first, payload)

    # Hooks

    def on_open(self) -> None:
        """The handshake completed."""

    def on_text(self, buf: bytes | bytearray, begin: int, start: int, end: int, now: int) -> None:
        """A complete text frame is ``buf[begin:end]``, its payload ``buf[start:end]``; ``now``
        is the chunk's arrival time in µs since ``base`` (``time.monotonic``)."""

    def on_other(self, first: int, payload: bytes) -> None:
        """A data frame that is not a single final text frame (not expected here)."""

    # Actions

    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(0x8, code.to_bytes(2, "big")))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; Content-Length bodies only."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.need = -1
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("HTTP connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            self.status = int(head[0].split(" ", 2)[1])
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            self.need = length
        if len(self.buf) >= self.need and self.waiter is not None:
            body = bytes(self.buf[: self.need])
            del self.buf[: self.need]
            self.need = -1
            if not self.waiter.done():
                self.waiter.set_result((self.status, body))


class HttpClient:
    """Requests over one keep-alive connection, opened again when the server has closed it
    (uvicorn drops a connection idle for 5 s, e.g. while thousands of sockets connect)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.conn: _HttpConnection | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> HttpClient:
        client = cls(host, port)
        await client._connect()
        return client

    async def _connect(self) -> _HttpConnection:
        sock = await open_socket(self.host, self.port)
        _, self.conn = await asyncio.get_running_loop().create_connection(
            _HttpConnection, sock=sock
        )
        return self.conn

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = self.conn
        if conn is None or conn.lost or conn.transport is None or conn.transport.is_closing():
            conn = await self._connect()
        assert conn.transport is not None and conn.waiter is None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        conn.waiter = asyncio.get_running_loop().create_future()
        conn.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            return await conn.waiter
        finally:
            conn.waiter = None

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid``'s live threads, from /proc: each thread's run time in
    nanoseconds (``schedstat``) where the kernel keeps it, since at 100 ticks a second the
    user + system ticks of ``/proc/<pid>/stat`` (the fallback) miss a lot of a 0.2 s window."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    total_ns, found = 0, False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as fh:
                total_ns += int(fh.read().split()[0])
                found = True
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended, or no scheduler statistics
    if found:
        return total_ns / 1e9
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_busy() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy, total) jiffies from /proc/stat. Loopback traffic is partly processed in
    soft interrupts that no process is charged for, so a core can be saturated while the
    server process shows less than 100%."""
    out: dict[int, tuple[float, float]] = {}
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            ticks = [float(v) for v in values[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def busy_share(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> dict[int, float]:
    """Share of each CPU's time spent busy between two :func:`cpu_busy` readings."""
    shares = {}
    for cpu, (busy0, total0) in before.items():
        busy1, total1 = after[cpu]
        shares[cpu] = (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
    return shares


def jsonable(value: Any) -> Any:
    """Round floats for a compact JSON report."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value
