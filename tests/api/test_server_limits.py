"""What the server answers before the application sees a request: a deadline on request heads
(slow clients), errors in the relay's shape from the HTTP parser and the WebSocket upgrade, and
no API explorer in production. Real sockets against a relay started as `relayline serve`
starts it."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from relayline.http_protocol import MAX_HEAD_BYTES, RelayHttpProtocol, http_protocol_class
from relayline.server import server_config
from relayline.testing import RelayServer
from relayline.testing.server import free_port
from tests.conftest import ADMIN_KEY, SettingsFactory
from tests.fixtures import RelayFactory

HEAD_TIMEOUT_S = 1.0


async def read_response(
    reader: asyncio.StreamReader, timeout: float
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one response, then EOF is expected."""
    async with asyncio.timeout(timeout):
        raw = await reader.read(-1)  # the server closes the connection after an error
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def error_of(headers: dict[str, str], body: bytes) -> dict[str, str]:
    assert headers["content-type"] == "application/json"
    error: dict[str, str] = json.loads(body)["error"]
    assert error["request_id"] and headers["x-request-id"] == error["request_id"]
    return error


async def raw(relay: RelayServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", relay.port)


@pytest.fixture
async def slow_relay(start_relay: RelayFactory) -> RelayServer:
    return await start_relay(request_head_timeout_s=HEAD_TIMEOUT_S)


async def test_a_head_sent_a_byte_at_a_time_is_cut_off_while_others_are_served(
    slow_relay: RelayServer,
) -> None:
    reader, writer = await raw(slow_relay)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200

    async def dribble() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)

    started = time.monotonic()
    task = asyncio.get_running_loop().create_task(dribble())
    try:
        async with httpx.AsyncClient(base_url=slow_relay.url, timeout=5) as http:
            assert (await http.get("/health")).status_code == 200  # others are served meanwhile
        status, headers, body = await read_response(reader, timeout=HEAD_TIMEOUT_S + 5)
    finally:
        task.cancel()
        writer.close()
    assert status == 408
    assert error_of(headers, body)["code"] == "request_timeout"
    assert time.monotonic() - started >= HEAD_TIMEOUT_S * 0.9


async def test_a_client_still_sending_after_its_refusal_reads_the_answer(
    slow_relay: RelayServer,
) -> None:
    """The relay half-closes and drains a refused connection instead of closing it with the
    client's bytes unread, which would reset it and could destroy the 408 before it is read."""
    reader, writer = await raw(slow_relay)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await asyncio.sleep(HEAD_TIMEOUT_S + 0.3)  # refused meanwhile
        for _ in range(8):  # the client goes on sending, unaware
            writer.write(b"a" * 8192)
            await writer.drain()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        status, headers, body = await read_response(reader, timeout=5)
    finally:
        writer.close()
    assert status == 408 and error_of(headers, body)["code"] == "request_timeout"


async def test_a_connection_that_sends_nothing_is_closed(slow_relay: RelayServer) -> None:
    reader, writer = await raw(slow_relay)
    try:
        status, headers, body = await read_response(reader, timeout=HEAD_TIMEOUT_S + 5)
    finally:
        writer.close()
    assert status == 408 and error_of(headers, body)["code"] == "request_timeout"


async def test_the_next_head_on_a_kept_alive_connection_has_the_same_deadline(
    slow_relay: RelayServer,
) -> None:
    reader, writer = await raw(slow_relay)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
        assert first.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
        status, headers, body = await read_response(reader, timeout=HEAD_TIMEOUT_S + 5)
    finally:
        writer.close()
    assert status == 408 and error_of(headers, body)["code"] == "request_timeout"


async def test_a_slow_websocket_handshake_is_cut_off(slow_relay: RelayServer) -> None:
    reader, writer = await raw(slow_relay)
    try:
        writer.write(
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        )
        status, headers, body = await read_response(reader, timeout=HEAD_TIMEOUT_S + 5)
    finally:
        writer.close()
    assert status == 408 and error_of(headers, body)["code"] == "request_timeout"


async def test_stray_line_breaks_after_a_request_do_not_keep_the_connection(
    slow_relay: RelayServer,
) -> None:
    """The parser skips empty lines between requests without starting one, and each byte put
    off uvicorn's keep-alive timeout: the next head's deadline runs from the first of them."""
    reader, writer = await raw(slow_relay)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)

    async def dribble() -> None:
        while True:
            writer.write(b"\r\n")
            await asyncio.sleep(0.2)

    task = asyncio.get_running_loop().create_task(dribble())
    try:
        status, headers, body = await read_response(reader, timeout=HEAD_TIMEOUT_S + 5)
    finally:
        task.cancel()
        writer.close()
    assert status == 408 and error_of(headers, body)["code"] == "request_timeout"


async def test_a_head_larger_than_the_bound_is_refused(slow_relay: RelayServer) -> None:
    reader, writer = await raw(slow_relay)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD_BYTES)
        status, headers, body = await read_response(reader, timeout=5)
    finally:
        writer.close()
    assert status == 431 and error_of(headers, body)["code"] == "headers_too_large"


async def test_heads_within_the_bound_are_served_even_behind_a_large_body(
    slow_relay: RelayServer,
) -> None:
    async with httpx.AsyncClient(base_url=slow_relay.url, timeout=5) as http:
        big = "a" * (MAX_HEAD_BYTES - 1024)
        assert (await http.get("/health", headers={"X-Big": big})).status_code == 200
    # A body larger than the bound, and a small head pipelined behind it in the same write:
    # the body's bytes are not counted against the head that follows.
    reader, writer = await raw(slow_relay)
    try:
        size = 2 * MAX_HEAD_BYTES
        writer.write(
            b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
            + b"a" * size
            + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        async with asyncio.timeout(5):
            answers = await reader.read(-1)
    finally:
        writer.close()
    assert answers.startswith(b"HTTP/1.1 404 ")
    assert answers.count(b"HTTP/1.1 200 OK") == 1 and answers.endswith(b'{"status":"ok"}')


async def slow_answer(scope: Scope, receive: Receive, send: Send) -> None:
    """An app whose answer takes longer than the head deadline."""
    await asyncio.sleep(HEAD_TIMEOUT_S * 2)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]}
    )
    await send({"type": "http.response.body", "body": b"done"})


@pytest.fixture
async def slow_answer_server() -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(
        slow_answer,
        host="127.0.0.1",
        port=port,
        http=http_protocol_class(HEAD_TIMEOUT_S),
        lifespan="off",
        log_config=None,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        assert not task.done()
        await asyncio.sleep(0.01)
    yield port
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def test_a_pipelined_head_late_behind_a_slow_answer_is_cut_off_after_it(
    slow_answer_server: int,
) -> None:
    """A deadline that passes while a response is being written cannot be answered then; it
    is once the response is complete, instead of being forgotten."""
    reader, writer = await asyncio.open_connection("127.0.0.1", slow_answer_server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n")

    async def dribble() -> None:
        for _ in range(1000):
            writer.write(b"X-Slow: a\r\n")
            await asyncio.sleep(0.2)

    task = asyncio.get_running_loop().create_task(dribble())
    try:
        async with asyncio.timeout(HEAD_TIMEOUT_S * 2 + 5):
            answers = await reader.read(-1)
    finally:
        task.cancel()
        writer.close()
    first, _, second = answers.partition(b"done")
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert second.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in second


UPGRADE = (
    "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
)

BAD_KEY_UPGRADE = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n", 400, "bad_request"),
        (b"GET /health HTTP/1.1\r\nContent-Length: zz\r\n\r\n", 400, "bad_request"),
        (UPGRADE.format(version=8).encode(), 426, "upgrade_required"),
        (BAD_KEY_UPGRADE.format(version=13).encode(), 400, "bad_request"),
        (UPGRADE.replace("/v1/ws", "/v1/chats").format(version=13).encode(), 403, "forbidden"),
    ],
    ids=[
        *("request-line", "header-name", "content-length"),
        *("ws-version-8", "ws-bad-key", "ws-not-a-socket-path"),
    ],
)
async def test_errors_before_the_app_have_the_relay_shape(
    relay: RelayServer, request_bytes: bytes, status: int, code: str
) -> None:
    reader, writer = await raw(relay)
    try:
        writer.write(request_bytes)
        got, headers, body = await read_response(reader, timeout=5)
    finally:
        writer.close()
    assert got == status
    error = error_of(headers, body)
    assert error["code"] == code and error["detail"]
    if status == 426:
        assert headers["sec-websocket-version"] == "13"


async def test_production_serves_no_explorer_and_the_schema_only_to_the_admin_key(
    start_relay: RelayFactory,
) -> None:
    relay = await start_relay(env="production")
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:

        async def answer(method: str, path: str, key: str | None = None) -> tuple[int, object]:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = await http.request(method, path, headers=headers)
            error = r.json()["error"]
            return r.status_code, (error["code"], error["detail"], r.headers["content-type"])

        # The schema's path answers exactly like one that does not exist, whatever the method.
        for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS", "PROPFIND"):
            unknown = await answer(method, "/no-such-path")
            assert unknown[0] == 404
            for path in ("/docs", "/openapi.json", "/redoc"):
                assert await answer(method, path) == unknown, (method, path)
            assert await answer(method, "/openapi.json", "wrong-key") == unknown, method
        assert (await answer("POST", "/openapi.json", ADMIN_KEY))[0] == 405
        r = await http.get("/openapi.json", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 200 and "/v1/chats" in r.json()["paths"]
        assert (
            await http.get("/docs", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        ).status_code == 404


async def test_development_serves_the_explorer_and_the_schema(relay: RelayServer) -> None:
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        assert (await http.get("/docs")).status_code == 200
        assert "/v1/chats" in (await http.get("/openapi.json")).json()["paths"]


def test_the_uvicorn_internals_the_http_protocol_relies_on_are_there(
    make_settings: SettingsFactory,
) -> None:
    """Fails loudly when a uvicorn upgrade moves what RelayHttpProtocol overrides or uses."""
    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
        "handle_websocket_upgrade",
    ):
        assert callable(getattr(HttpToolsProtocol, name)), name
    assert list(inspect.signature(HttpToolsProtocol.send_400_response).parameters) == [
        "self",
        "msg",
    ]
    assert list(inspect.signature(HttpToolsProtocol.__init__).parameters)[:4] == [
        "self",
        "config",
        "server_state",
        "app_state",
    ]
    source = inspect.getsource(HttpToolsProtocol)
    for needle in (
        "self.send_400_response(",
        "self.cycle",
        "self.loop",
        "server_state",
        "self.parser.feed_data(",
        "self.handle_websocket_upgrade()",
        "on_response=self.on_response_complete",
    ):
        assert needle in source, needle
    assert "self.response_complete = True" in inspect.getsource(RequestResponseCycle)
    config = server_config(make_settings(request_head_timeout_s=3), "127.0.0.1", 0)
    assert issubclass(config.http, RelayHttpProtocol)  # type: ignore[arg-type]
    assert config.http.head_timeout_s == 3  # type: ignore[union-attr]
