"""The relay's own WebSocket protocol class (relayline.hub.protocol) against a real relay.

A raw socket client lets these tests do what a well-behaved library will not: send unmasked,
oversized or broken frames, stop reading, never answer a close. The server side is inspected
through uvicorn's ``server_state``, which is also how these tests pin down the uvicorn internals
the class relies on (constructor arguments, ``connections``, ``tasks``, ``default_headers``,
``shutdown()``).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator

import httpx
import pytest
from uvicorn.protocols.utils import ClientDisconnected

from relayline.hub import protocol as ws_protocol
from relayline.hub.protocol import RelayWebSocketProtocol
from relayline.testing import RelayServer
from tests.fixtures import RelayFactory, Tenant, new_tenant

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(autouse=True)
async def _abort_clients() -> AsyncIterator[None]:
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().abort()
    await asyncio.sleep(0)  # let the aborted transports release their sockets


class Raw:
    """A client speaking raw RFC 6455 over an asyncio stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls,
        port: int,
        headers: list[str],
        *,
        rcvbuf: int | None = None,
        key: str | None = None,
        version: str = "13",
        path: str = "/v1/ws",
    ) -> tuple[Raw, bytes]:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # With a small limit the stream stops pulling from the socket once nobody reads.
        reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf or 2**20)
        key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            f"Sec-WebSocket-Version: {version}",
            *headers,
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = cls(reader, writer)
        OPEN_CLIENTS.append(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return raw, head

    @classmethod
    async def authed(cls, port: int, token: str, rcvbuf: int | None = None) -> Raw:
        raw, head = await cls.open(
            port, [f"Sec-WebSocket-Protocol: relayline.v1, bearer.{token}"], rcvbuf=rcvbuf
        )
        assert head.startswith(b"HTTP/1.1 101"), head
        return raw

    def send(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> None:
        first = (0x80 if fin else 0) | opcode
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", first, (0x80 if mask else 0) | size)
        elif size < 65536:
            head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, size)
        else:
            head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, size)
        if not mask:
            self.writer.write(head + payload)
            return
        key = os.urandom(4)
        self.writer.write(head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload)))

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(size)

    async def close_frame(self, timeout: float = 5.0) -> tuple[int, str]:
        """Skip data frames up to the close frame; return its code and reason."""
        while True:
            opcode, payload = await self.frame(timeout)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                return code, payload[2:].decode()

    async def eof(self, timeout: float = 5.0) -> bytes:
        """Read to the end of the stream; returns what came before it."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    def abort(self) -> None:
        self.writer.transport.abort()


OPEN_CLIENTS: list[Raw] = []


def connections(server: RelayServer) -> set[object]:
    # uvicorn types the set with its own protocol classes only.
    found: set[object] = server.server.server_state.connections  # type: ignore[assignment]
    return found


def sockets(server: RelayServer) -> list[RelayWebSocketProtocol]:
    return [c for c in connections(server) if isinstance(c, RelayWebSocketProtocol)]


async def only_socket(server: RelayServer) -> RelayWebSocketProtocol:
    async with asyncio.timeout(5):
        while not (found := sockets(server)) or found[0].closed:
            await asyncio.sleep(0.01)
    assert len(found) == 1
    return found[0]


async def gone(server: RelayServer, proto: RelayWebSocketProtocol, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while proto in connections(server):
            await asyncio.sleep(0.01)


def gateway_clients(server: RelayServer) -> int:
    return len(server.app.http.state.relay.gateway.clients)


async def test_handshake_answers_with_the_subprotocol_and_default_headers(
    relay: RelayServer, tenant: Tenant
) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    raw, head = await Raw.open(
        relay.port, [f"Sec-WebSocket-Protocol: relayline.v1, bearer.{tenant.key}"], key=key
    )
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    assert f"Sec-WebSocket-Accept: {accept}" in lines
    assert "Sec-WebSocket-Protocol: relayline.v1" in lines
    assert any(line.lower().startswith("date:") for line in lines)  # uvicorn's default headers
    proto = await only_socket(relay)
    # uvicorn tracks the socket (for shutdown) and the app's task (for the graceful wait).
    assert proto in connections(relay)
    assert len(relay.server.server_state.tasks) >= 1
    assert not hasattr(proto, "__dict__")
    raw.send(0x1, b'{"op":"ping","ref":1}')
    opcode, payload = await raw.frame()
    assert opcode == 0x1 and b'"ack"' in payload
    raw.abort()


@pytest.mark.parametrize(
    ("key", "version", "status"),
    [("not-base64!", "13", b"400"), (None, "8", b"426")],
)
async def test_invalid_upgrades_get_an_http_error(
    relay: RelayServer, key: str | None, version: str, status: bytes
) -> None:
    raw, head = await Raw.open(relay.port, [], key=key, version=version)
    assert head.split(b" ")[1] == status, head
    if status == b"426":
        assert b"sec-websocket-version: 13" in head.lower()
    assert await raw.eof()  # a plain-text body, then the connection ends
    assert not sockets(relay)


async def test_app_can_deny_the_upgrade_with_an_http_response(relay: RelayServer) -> None:
    # The worker endpoint answers an unsigned upgrade through the denial-response extension.
    raw, head = await Raw.open(relay.port, [], path="/v1/worker/ws")
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"content-type: application/json" in head.lower()
    body = await raw.eof()
    assert b'"error"' in body
    assert not sockets(relay)


async def test_oversize_frame_closes_1009_without_buffering_it(
    start_relay: RelayFactory,
) -> None:
    server = await start_relay(ws_max_frame_bytes=1024)
    async with httpx.AsyncClient(base_url=server.url) as http:
        tenant = await new_tenant(server, http)
    raw = await Raw.authed(server.port, tenant.key)
    proto = await only_socket(server)
    # Announce 1 MiB but send only part of it: the refusal comes from the header alone.
    size = 1024 * 1024
    key = os.urandom(4)
    raw.writer.write(struct.pack("!BBQ", 0x81, 0x80 | 127, size) + key + b"x" * 50_000)
    assert await raw.close_frame() == (1009, "frame too big")
    assert proto._buf is None or len(proto._buf) < 1024  # skipped, not held
    # The rest of the refused frame is skipped; the close answer after it is still read.
    raw.writer.write(b"x" * (size - 50_000))
    raw.send(0x8, struct.pack("!H", 1009))
    await raw.eof()
    await gone(server, proto)
    assert gateway_clients(server) == 0


async def test_invalid_utf8_closes_1007(relay: RelayServer, tenant: Tenant) -> None:
    raw = await Raw.authed(relay.port, tenant.key)
    raw.send(0x1, b'{"op": "\xff\xfe"}')
    assert (await raw.close_frame())[0] == 1007
    raw.send(0x8, struct.pack("!H", 1007))
    await raw.eof()


async def test_a_close_reason_that_is_not_utf8_is_answered_1007_and_closed_at_once(
    relay: RelayServer, tenant: Tenant
) -> None:
    # The peer's close frame came already: nothing is left to wait for, so the connection ends
    # with a FIN right after the answer (waiting out the close grace would end it with a reset).
    raw = await Raw.authed(relay.port, tenant.key)
    raw.send(0x8, struct.pack("!H", 1000) + b"\xce\xba\xed\xa0\x80")
    assert (await raw.close_frame())[0] == 1007
    assert await raw.eof() == b""


async def test_fragmented_text_with_invalid_utf8_is_refused_at_the_fragment(
    relay: RelayServer, tenant: Tenant
) -> None:
    raw = await Raw.authed(relay.port, tenant.key)
    raw.send(0x1, b'{"op": "ping", "x": "', fin=False)
    raw.send(0x0, b"\xf4\x90\x80\x80", fin=False)  # no final fragment follows
    assert (await raw.close_frame())[0] == 1007
    raw.send(0x8, struct.pack("!H", 1007))
    await raw.eof()


async def test_fragmented_message_is_reassembled_around_a_ping(
    relay: RelayServer, tenant: Tenant
) -> None:
    raw = await Raw.authed(relay.port, tenant.key)
    raw.send(0x1, b'{"op":"pi', fin=False)
    raw.send(0x9, b"mid")
    raw.send(0x0, b'ng","ref":7}')
    assert await raw.frame() == (0xA, b"mid")
    opcode, payload = await raw.frame()
    assert opcode == 0x1 and b'"ref":7' in payload
    raw.abort()


@pytest.mark.parametrize(
    "frames",
    [
        [(0x1, b"{}", True, False)],  # not masked
        [(0x0, b"{}", True, True)],  # continuation without a message
        [(0x9, b"x" * 126, True, True)],  # control frame too long
        [(0x1, b"{", False, True), (0x1, b"}", True, True)],  # new message mid-fragment
        [(0x3, b"", True, True)],  # reserved opcode
    ],
)
async def test_protocol_violations_close_1002(
    relay: RelayServer, tenant: Tenant, frames: list[tuple[int, bytes, bool, bool]]
) -> None:
    raw = await Raw.authed(relay.port, tenant.key)
    proto = await only_socket(relay)
    for opcode, payload, fin, mask in frames:
        raw.send(opcode, payload, fin=fin, mask=mask)
    assert (await raw.close_frame())[0] == 1002
    await raw.eof()
    await gone(relay, proto)


async def test_ping_and_pong_refresh_last_seen(relay: RelayServer, tenant: Tenant) -> None:
    raw = await Raw.authed(relay.port, tenant.key)
    proto = await only_socket(relay)
    proto.last_seen = 0.0
    raw.send(0x9, b"are you there")
    assert await raw.frame() == (0xA, b"are you there")
    assert proto.last_seen > 0
    proto.last_seen = 0.0
    proto.ping()  # what the gateway's sweeper does
    opcode, _ = await raw.frame()
    assert opcode == 0x9
    raw.send(0xA, b"")
    async with asyncio.timeout(5):
        while proto.last_seen == 0.0:
            await asyncio.sleep(0.01)
    raw.abort()


async def test_frames_written_in_one_turn_leave_together_in_order(
    relay: RelayServer, tenant: Tenant
) -> None:
    raw = await Raw.authed(relay.port, tenant.key)
    proto = await only_socket(relay)
    frames = [b"\x81\x01" + bytes([ord("a") + i]) for i in range(5)]
    for frame in frames[:3]:
        proto.write(frame)
    proto.writelines(frames[3:])
    assert proto._cork == frames  # held until the end of this turn of the loop
    await asyncio.sleep(0)
    assert proto._cork is None
    assert [await raw.frame() for _ in frames] == [(0x1, f[2:]) for f in frames]
    raw.abort()


async def test_close_sends_the_code_and_finishes_the_handshake(
    relay: RelayServer, tenant: Tenant
) -> None:
    raw = await Raw.authed(relay.port, tenant.key)
    proto = await only_socket(relay)
    proto.write(b"\x81\x02hi")
    proto.close(4009, "too slow")
    assert proto.closed
    proto.write(b"\x81\x05after")  # ignored once closing
    assert await raw.frame() == (0x1, b"hi")  # written before the close frame
    assert await raw.close_frame() == (4009, "too slow")
    raw.send(0x8, struct.pack("!H", 4009))
    await raw.eof(timeout=ws_protocol.CLOSE_GRACE_S / 2)  # well before the grace period
    await gone(relay, proto)
    assert gateway_clients(relay) == 0


async def test_close_resets_a_peer_that_never_reads(
    start_relay: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_protocol, "CLOSE_GRACE_S", 0.3)
    server = await start_relay(ws_send_buffer=4096, ws_write_high_water=4096)
    async with httpx.AsyncClient(base_url=server.url) as http:
        tenant = await new_tenant(server, http)
    raw = await Raw.authed(server.port, tenant.key, rcvbuf=4096)
    proto = await only_socket(server)
    frame = b"\x81\x7e\x04\x00" + b"x" * 1024
    for _ in range(2000):  # until the kernel and the transport both hold a backlog
        proto.write(frame)
        await asyncio.sleep(0)
        if proto.paused:
            break
    assert proto.paused
    loop = asyncio.get_running_loop()
    started = loop.time()
    proto.close(4009, "too slow")
    await gone(server, proto, timeout=3)
    assert loop.time() - started >= 0.3 - 0.05
    assert proto._cork is None and proto.on_drain is None and not proto.paused
    assert gateway_clients(server) == 0
    # The close frame sat behind data the peer never read; it gets a reset instead.
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await raw.close_frame(timeout=5)


async def test_shutdown_sends_1012(start_relay: RelayFactory) -> None:
    server = await start_relay()
    async with httpx.AsyncClient(base_url=server.url) as http:
        tenant = await new_tenant(server, http)
    raw = await Raw.authed(server.port, tenant.key)
    proto = await only_socket(server)
    stopping = asyncio.get_running_loop().create_task(server.stop())
    assert await raw.close_frame() == (1012, "relay restarting")
    raw.send(0x8, struct.pack("!H", 1012))
    await raw.eof()
    await asyncio.wait_for(stopping, 10)
    assert proto.closed


async def test_peer_close_is_echoed_and_state_released(relay: RelayServer, tenant: Tenant) -> None:
    topic = f"chat:{await tenant.chat()}"
    raw = await Raw.authed(relay.port, tenant.key)
    raw.send(0x1, b'{"op":"subscribe","ref":1,"topic":"%s"}' % topic.encode())
    assert b'"ack"' in (await raw.frame())[1]
    hub = relay.app.http.state.relay.hub
    assert hub.subscriber_count() == 1
    proto = await only_socket(relay)
    raw.send(0x8, struct.pack("!H", 1000) + b"bye")
    assert await raw.close_frame() == (1000, "")
    await raw.eof()
    await gone(relay, proto)
    async with asyncio.timeout(5):
        while relay.server.server_state.tasks:
            await asyncio.sleep(0.01)  # the app's task has ended
    assert gateway_clients(relay) == 0
    assert hub.subscriber_count() == 0
    assert proto._buf is None and proto._cork is None and proto._inbox is None
    # The ASGI contract after the end: receive repeats the disconnect, send refuses.
    assert await proto.receive() == {"type": "websocket.disconnect", "code": 1000, "reason": "bye"}
    with pytest.raises(ClientDisconnected):
        await proto.send({"type": "websocket.send", "text": "late"})
    state = relay.server.server_state
    del proto
    gc.collect()
    leaked = [
        o
        for o in gc.get_objects()
        if isinstance(o, RelayWebSocketProtocol) and o._server_state is state
    ]
    assert not leaked
