"""Reading a model server's stream: the event-stream splitter and the per-read decoding, the
network backend under httpx, the stream's deadline, and the relay link's write batching."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpcore
import httpx
import pytest
from llm_fake_upstream import FakeUpstream, answer, text_event

from relayline.worker.cork import CorkedTransport, cork
from relayline.worker.llm import netstream
from relayline.worker.llm.base import ChatMessage, LLMError, StreamChunk, ToolCall, Usage
from relayline.worker.llm.breaker import CircuitBreaker
from relayline.worker.llm.netstream import AsyncioBackend, use_asyncio_backend
from relayline.worker.llm.openai_compat import OpenAICompatClient, RetryPolicy, Timeouts
from relayline.worker.llm.sse import ChatEvents, DataLines, parse_chat_stream

pytestmark = pytest.mark.timeout(60)


def event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def text(piece: str, finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]}


STOP = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}

BODY = (
    b": keep-alive\n\n"
    + event(text("caf\u00e9 "))
    + b"event: ping\r\ndata: "
    + json.dumps(text("\u20ac1")).encode()
    + b"\r\n\r\n"
    + b":comment\r\n"
    + event(text(" \U0001f600"))
    + event(STOP)
    + event(USAGE)
    + b"data: [DONE]\n\n"
)
PAYLOADS = [
    json.dumps(text("caf\u00e9 ")).encode(),
    json.dumps(text("\u20ac1")).encode(),
    json.dumps(text(" \U0001f600")).encode(),
    json.dumps(STOP).encode(),
    json.dumps(USAGE).encode(),
    b"[DONE]",
]


def split_lines(*pieces: bytes) -> list[bytes]:
    lines = DataLines()
    out = [data for piece in pieces for data in lines.feed(piece)]
    return out + lines.end()


def test_data_lines_at_every_split_of_a_body() -> None:
    assert split_lines(BODY) == PAYLOADS
    for cut in range(1, len(BODY)):
        assert split_lines(BODY[:cut], BODY[cut:]) == PAYLOADS, cut


def test_data_lines_byte_by_byte_with_crlf() -> None:
    body = BODY.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert split_lines(*(body[i : i + 1] for i in range(len(body)))) == PAYLOADS


def test_data_lines_fields_and_spacing() -> None:
    body = b"data:x\ndata:  two spaces\nid: 3\nretry: 10\ndata\n: c\ndata: last"
    assert split_lines(body) == [b"x", b" two spaces", b"last"]


def test_each_data_line_of_a_multi_line_event_is_an_event() -> None:
    # One JSON event per data: line (what every server sends); a JSON text broken over two
    # lines is two malformed events, an upstream fault.
    assert split_lines(b"data: 1\ndata: 2\n\n") == [b"1", b"2"]
    events = ChatEvents()
    assert events.take(split_lines(b'data: {"choices":\ndata: []}\n\n')) == []
    assert events.error is not None and events.error.category == "upstream_5xx"


def test_texts_of_one_read_go_on_as_one_chunk_in_order() -> None:
    events = ChatEvents()
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a":'}}
    more = {"index": 0, "function": {"arguments": "1}"}}
    batch = split_lines(
        event(text("a"))
        + event(text("b"))
        + event({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
        + event({"choices": [{"index": 0, "delta": {"tool_calls": [more]}}]})
        + event(text("c"))
        + event({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        + event(text("d"))
    )
    # Tool call fragments make no chunk of their own: the texts around them are neighbours.
    assert events.take(batch) == [
        StreamChunk(text="abc"),
        StreamChunk(tool_call=ToolCall(id="c1", name="f", arguments='{"a":1}')),
        StreamChunk(text="d"),
    ]
    assert events.finish_reason == "tool_calls"
    assert not events.done
    assert events.take([b"[DONE]", json.dumps(text("after")).encode()]) == []
    assert events.done
    assert events.ending() == [StreamChunk(finish_reason="tool_calls")]


def test_an_error_event_keeps_what_came_before_it() -> None:
    events = ChatEvents()
    error = {"error": {"message": "out of memory"}}
    got = events.take(split_lines(event(text("kept")) + event(error) + event(text("not"))))
    assert got == [StreamChunk(text="kept")]
    assert events.error is not None
    assert events.error.category == "upstream_5xx"
    assert "out of memory" in events.error.detail


def test_an_ending_needs_both_signs() -> None:
    events = ChatEvents()
    events.take([b"[DONE]"])
    with pytest.raises(LLMError) as info:
        events.ending()
    assert info.value.category == "incomplete"
    events = ChatEvents()
    events.take([json.dumps(STOP).encode()])
    with pytest.raises(LLMError) as info:
        events.ending()
    assert info.value.category == "incomplete"


def response_of(*pieces: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return httpx.Response(200, headers=headers or {}, content=body())


async def chunks_of(response: httpx.Response) -> list[StreamChunk]:
    return [chunk async for chunk in parse_chat_stream(response)]


async def test_parse_chat_stream_at_every_split_of_a_body() -> None:
    whole = await chunks_of(response_of(BODY))
    ending = [StreamChunk(finish_reason="stop"), StreamChunk(usage=Usage(3, 4))]
    assert whole == [StreamChunk(text="caf\u00e9 \u20ac1 \U0001f600"), *ending]
    for cut in range(1, len(BODY)):
        got = await chunks_of(response_of(BODY[:cut], BODY[cut:]))
        assert "".join(c.text for c in got if c.text) == "caf\u00e9 \u20ac1 \U0001f600", cut
        assert got[-2:] == ending, cut


async def test_parse_chat_stream_error_payload_after_text() -> None:
    error = {"error": {"message": "boom"}}
    stream = parse_chat_stream(response_of(event(text("a")) + event(error)))
    assert await anext(stream) == StreamChunk(text="a")
    with pytest.raises(LLMError) as info:
        await anext(stream)
    assert info.value.category == "upstream_5xx"


async def test_parse_chat_stream_decodes_a_content_encoding() -> None:
    import gzip

    got = await chunks_of(response_of(gzip.compress(BODY), headers={"Content-Encoding": "gzip"}))
    assert got[0] == StreamChunk(text="caf\u00e9 \u20ac1 \U0001f600")


async def test_last_event_without_a_line_end() -> None:
    body = event(text("x")) + event(STOP) + b"data: [DONE]"
    got = await chunks_of(response_of(body))
    assert got == [StreamChunk(text="x"), StreamChunk(finish_reason="stop")]


# The network backend


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_backend_reads_buffered_data_within_max_bytes_then_eof() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"0123456789")
        await writer.drain()

    async with server(handler) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        got = b""
        while len(got) < 10:
            piece = await stream.read(4, timeout=5)
            assert 0 < len(piece) <= 4
            got += piece
        assert got == b"0123456789"
        assert await stream.read(4, timeout=5) == b""
        assert stream.get_extra_info("is_readable") is True  # the server's close arrived
        await stream.aclose()


async def test_backend_read_timeout_and_write() -> None:
    received = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        received.set()
        await asyncio.sleep(30)

    async with server(handler) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        assert stream.get_extra_info("is_readable") is False
        assert stream.get_extra_info("server_addr")[1] == port
        await stream.write(b"hello", timeout=5)
        await asyncio.wait_for(received.wait(), 5)
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(100, timeout=0.05)
        # A shorter timeout than the timer left by the read before is still kept.
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(100, timeout=0.2)
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(100, timeout=0.01)
        await stream.aclose()


async def test_backend_pauses_reading_past_its_high_water(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netstream, "READ_HIGH_WATER", 1024)
    monkeypatch.setattr(netstream, "READ_LOW_WATER", 256)
    total = 256 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * total)
        await writer.drain()

    async with server(handler) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        protocol = stream._protocol  # type: ignore[attr-defined]
        deadline = asyncio.get_running_loop().time() + 10
        while not protocol.paused and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert protocol.paused
        got = 0
        while got < total:
            piece = await stream.read(65536, timeout=5)
            assert piece
            got += len(piece)
        assert got == total
        await stream.aclose()


async def test_backend_connect_errors_are_httpcore_errors() -> None:
    async with server(lambda r, w: asyncio.sleep(0)) as port:
        pass  # closed: nothing listens on the port now
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)


async def test_the_model_client_uses_the_backend_and_streams() -> None:
    upstream = FakeUpstream()
    await upstream.start()
    upstream.play(answer(["a", "b", "c"]))
    client = OpenAICompatClient(upstream.base_url, breaker=CircuitBreaker(failure_threshold=100))
    try:
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool._network_backend, AsyncioBackend)
        for _ in range(3):  # a kept-alive connection or a new one: both read as before
            got = [c async for c in client.stream([ChatMessage("user", "hi")], [], model="m")]
            assert "".join(c.text for c in got if c.text) == "abc"
            assert got[-2:] == [StreamChunk(finish_reason="stop"), StreamChunk(usage=Usage(7, 2))]
    finally:
        await client.aclose()
        await upstream.close()


def test_use_asyncio_backend_only_on_a_plain_pool() -> None:
    assert use_asyncio_backend(httpx.AsyncClient()) is True
    mock = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert use_asyncio_backend(mock) is False


# The stream's deadline


async def test_deadline_passed_while_the_consumer_holds_the_stream() -> None:
    upstream = FakeUpstream()
    await upstream.start()
    upstream.play(answer(["a", "b"], delay=0.0))
    client = OpenAICompatClient(
        upstream.base_url,
        timeouts=Timeouts(connect_s=1, read_s=5, total_s=0.5),
        retry=RetryPolicy(max_attempts=1),
    )
    try:
        stream = client.stream([ChatMessage("user", "hi")], [], model="m")
        first = await anext(stream)
        assert first.text == "a"
        await asyncio.sleep(0.7)  # the consumer's own time: never cancelled by the deadline
        with pytest.raises(LLMError) as info:
            await anext(stream)
        assert info.value.category == "timeout"
    finally:
        await client.aclose()
        await upstream.close()


async def test_deadline_cuts_a_stalled_stream_and_leaves_other_cancellations_alone() -> None:
    async def stall(ex: object) -> None:
        from llm_fake_upstream import Exchange

        assert isinstance(ex, Exchange)
        await ex.head()
        await ex.event(text_event("partial"))
        await asyncio.sleep(30)

    upstream = FakeUpstream()
    await upstream.start()
    upstream.play(stall)
    client = OpenAICompatClient(
        upstream.base_url,
        timeouts=Timeouts(connect_s=1, read_s=20, total_s=0.3),
        retry=RetryPolicy(max_attempts=1),
    )
    try:
        with pytest.raises(LLMError) as info:
            async for _ in client.stream([ChatMessage("user", "hi")], [], model="m"):
                pass
        assert info.value.category == "timeout"
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0

        # Cancelled by someone else while waiting: a CancelledError, not a timeout.
        client2 = OpenAICompatClient(
            upstream.base_url,
            timeouts=Timeouts(connect_s=1, read_s=20, total_s=10),
            retry=RetryPolicy(max_attempts=1),
        )

        async def consume() -> None:
            async for _ in client2.stream([ChatMessage("user", "hi")], [], model="m"):
                pass

        waiting = asyncio.create_task(consume())
        deadline = asyncio.get_running_loop().time() + 10
        while upstream.hits < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await client2.aclose()
    finally:
        await client.aclose()
        await upstream.close()


# The relay link's write batching


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 7


async def test_cork_writes_one_pass_at_once_in_order() -> None:
    real = RecordingTransport()
    corked = CorkedTransport(real)
    corked.write(b"a")
    corked.write(b"")
    corked.write(bytearray(b"bc"))
    assert real.writes == []
    assert corked.get_write_buffer_size() == 3 + 7
    await asyncio.sleep(0)
    assert real.writes == [b"abc"]
    corked.write(b"d")
    corked.write_eof()  # hands over what is kept first
    assert real.writes == [b"abc", b"d"] and real.eof
    corked.write(b"e")
    corked.close()
    assert real.writes[-1] == b"e" and real.closed
    corked.write(b"lost")
    corked.abort()
    await asyncio.sleep(0)
    assert real.writes[-1] == b"e"


async def test_cork_on_a_websocket_connection() -> None:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    got: list[str] = []
    done = asyncio.Event()

    async def sink(ws: ServerConnection) -> None:
        async for message in ws:
            got.append(str(message))
            if len(got) == 200:
                done.set()

    async with serve(sink, "127.0.0.1", 0) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            assert cork(ws) is True
            assert cork(ws) is True  # once only
            assert isinstance(ws.transport, CorkedTransport)
            await asyncio.gather(*(ws.send(f"m{i}") for i in range(200)))
            await asyncio.wait_for(done.wait(), 10)
    assert got == [f"m{i}" for i in range(200)]
    assert cork(object()) is False


# TLS (an https model server) through the same backend


async def test_backend_over_tls(tmp_path: Path) -> None:
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    body = event(text("secure")) + event(STOP) + b"data: [DONE]\n\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    srv = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(cert)))
    try:
        assert use_asyncio_backend(client) is True
        async with client.stream("GET", f"https://127.0.0.1:{port}/") as response:
            assert response.extensions["network_stream"].get_extra_info("ssl_object") is not None
            got = await chunks_of(response)
        assert got == [StreamChunk(text="secure"), StreamChunk(finish_reason="stop")]
        # A server whose certificate is not trusted is a connect error, as on httpcore's own.
        untrusting = httpx.AsyncClient()
        assert use_asyncio_backend(untrusting) is True
        with pytest.raises(httpx.ConnectError):
            await untrusting.get(f"https://127.0.0.1:{port}/")
        await untrusting.aclose()
    finally:
        await client.aclose()
        srv.close()
