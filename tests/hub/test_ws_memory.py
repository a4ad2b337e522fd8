"""What one WebSocket connection holds is bounded whatever its frames look like, measured on a
relay process: the relay's WebSocket protocol under the uvicorn settings of ``relayline serve``
(tests/hub/echo_server.py), at the default frame size limit.

A message of millions of empty continuation frames adds nothing to the message's size, so the
size limit alone never stops it; the fragment count does (1009), and the process's resident
memory stays where it was.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayline.protocol.close_codes import Close
from relayline.protocol.limits import WS_MAX_FRAME_BYTES
from tests.hub.echo_server import running

FRAMES = 2_000_000  # 12 MB on the wire; kept in a list, their fragments once took ~16 MiB


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def echo_relay() -> Iterator[tuple[int, int]]:
    """(pid, port) of a relay process serving an echo app."""
    with running("relay", WS_MAX_FRAME_BYTES) as relay:
        yield relay


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + body


async def open_ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_close_code(reader: asyncio.StreamReader) -> int | None:
    """Frames until the close frame: its code (None if the connection ended without one)."""
    try:
        while True:
            b0, b1 = await reader.readexactly(2)
            size = b1 & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await reader.readexactly(size)
            if b0 & 0x0F == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def flood(port: int, frames: int) -> int | None:
    """Start a text message, send ``frames`` empty continuation frames; the close code seen."""
    reader, writer = await open_ws(port)
    closed = asyncio.ensure_future(read_close_code(reader))
    chunk = masked(0x0, b"", fin=False) * 10_000
    writer.write(masked(0x1, b"{", fin=False))
    try:
        for _ in range(frames // 10_000):
            writer.write(chunk)
            await writer.drain()
            if closed.done():
                break
    except ConnectionError:
        pass  # the relay ended the connection while frames were still on their way
    async with asyncio.timeout(30):
        code = await closed
    writer.transport.abort()
    return code


async def echo_once(port: int) -> bytes:
    reader, writer = await open_ws(port)
    writer.write(masked(0x1, b'{"a"', fin=False) + masked(0x0, b": 1}"))
    _, b1 = await reader.readexactly(2)
    payload = await reader.readexactly(b1 & 0x7F)
    writer.transport.abort()
    return payload


@pytest.mark.timeout(120)
async def test_empty_continuation_frames_are_refused_and_memory_stays_flat(
    echo_relay: tuple[int, int],
) -> None:
    pid, port = echo_relay
    for _ in range(3):  # warm up: the code paths, the allocator's arenas
        assert await echo_once(port) == b'{"a": 1}'
        assert await flood(port, 20_000) == Close.TOO_BIG
    before = rss_kib(pid)
    assert await flood(port, FRAMES) == Close.TOO_BIG
    assert await echo_once(port) == b'{"a": 1}'  # still serving
    grown = rss_kib(pid) - before
    assert grown < 4096, f"the relay's RSS grew by {grown} KiB"
