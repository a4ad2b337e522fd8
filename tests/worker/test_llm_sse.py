from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from relayline.protocol.jsoncodec import MAX_JSON_DEPTH
from relayline.worker.llm import sse
from relayline.worker.llm.base import (
    FAILURE_CATEGORIES,
    ChatMessage,
    LLMError,
    StreamChunk,
    ToolCall,
    Usage,
)
from relayline.worker.llm.sse import ToolCallAssembler, sse_data_lines


async def body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def lines(*pieces: bytes) -> list[str]:
    return [line async for line in sse_data_lines(body(*pieces))]


async def test_data_lines_across_chunk_boundaries() -> None:
    euro = "€".encode()
    got = await lines(
        b": keep-alive\r\n\r\nda",
        b'ta: {"a": 1}\r\n\r\nevent: x\ndata:[DO',
        b"NE]\n\ndata: caf" + euro[:1],
        euro[1:] + b"\n",
    )
    assert got == ['{"a": 1}', "[DONE]", "caf€"]


async def test_last_line_without_newline_and_no_blank_lines() -> None:
    assert await lines(b"data: 1\ndata: 2\ndata: 3") == ["1", "2", "3"]


async def test_oversized_line_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "MAX_LINE_CHARS", 10)
    with pytest.raises(LLMError) as info:
        await lines(b"data: " + b"x" * 20)
    assert info.value.category == "upstream_5xx"


@pytest.mark.parametrize(
    "data",
    [
        "[1, 2]",
        '"text"',
        '{"choices": "x"}',
        '{"choices": [1]}',
        '{"choices": [{"delta": [1]}]}',
        '{"usage": {"prompt_tokens": "many"}}',
        '{"choices": [{"delta": {"tool_calls": [1]}}]}',
    ],
)
def test_malformed_events(data: str) -> None:
    with pytest.raises(LLMError) as info:
        sse._decode_event(data, ToolCallAssembler())
    assert info.value.category == "upstream_5xx"


def test_events_nest_at_most_the_json_bound() -> None:
    edge = '{"choices": [{"delta": {"content": "x"}, "n": ' + nested(MAX_JSON_DEPTH - 3) + "}]}"
    assert sse._decode_event(edge, ToolCallAssembler()).chunks == [StreamChunk(text="x")]
    past = '{"choices": [{"delta": {"content": "x"}, "n": ' + nested(MAX_JSON_DEPTH - 2) + "}]}"
    for data in (past, "[" * 60_000):
        with pytest.raises(LLMError, match="malformed event") as info:
            sse._decode_event(data, ToolCallAssembler())
        assert info.value.category == "upstream_5xx"


async def test_a_deep_error_body_is_shown_as_text() -> None:
    response = httpx.Response(500, content=b"[" * 4000)
    assert await sse.error_snippet(response) == "[" * 200


def test_error_event_is_reported_printably() -> None:
    with pytest.raises(LLMError, match="upstream error: out of memory") as info:
        sse._decode_event('{"error": {"message": "out\\u0000of memory"}}', ToolCallAssembler())
    assert "\x00" not in info.value.detail


def test_assembler_tolerates_server_quirks() -> None:
    calls = ToolCallAssembler()
    calls.add(
        {"index": 1, "id": "b", "function": {"name": "list_dir", "arguments": {"path": "."}}}, 0
    )
    calls.add({"id": "a", "function": {"name": "read_file", "arguments": '{"pa'}}, 0)
    calls.add(
        {"index": 0, "id": "a", "function": {"name": "read_file", "arguments": 'th": "x"}'}}, 0
    )
    calls.add({"index": 2, "function": {"name": "run_command"}}, 0)
    calls.add({"index": 3, "function": {"arguments": "{}"}}, 0)  # never named: dropped
    assert list(calls.drain()) == [
        ToolCall("a", "read_file", '{"path": "x"}'),
        ToolCall("b", "list_dir", '{"path":"."}'),
        ToolCall("call_2", "run_command", "{}"),
    ]
    assert list(calls.drain()) == []


def test_assembler_caps_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "MAX_TOOL_ARGUMENT_CHARS", 5)
    calls = ToolCallAssembler()
    with pytest.raises(LLMError):
        calls.add({"index": 0, "function": {"name": "x", "arguments": "123456"}}, 0)


def test_stream_chunk_holds_exactly_one_thing() -> None:
    with pytest.raises(ValueError):
        StreamChunk()
    with pytest.raises(ValueError):
        StreamChunk(text="a", usage=Usage())


def test_llm_error_fields() -> None:
    assert FAILURE_CATEGORIES == (
        "timeout",
        "upstream_4xx",
        "upstream_5xx",
        "circuit_open",
        "tool_error",
        "internal",
        "incomplete",
    )
    error = LLMError("circuit_open", "open")
    assert (error.category, error.code, error.detail) == ("circuit_open", "circuit_open", "open")
    assert repr(error) == "LLMError(category='circuit_open', detail='open')"
    with pytest.raises(ValueError):
        LLMError("nope")  # type: ignore[arg-type]


def test_chat_message_from_wire_dict() -> None:
    message = ChatMessage.from_dict(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "name": "read_file", "arguments": '{"path": "a"}'}],
        }
    )
    assert message == ChatMessage("assistant", "", (ToolCall("c1", "read_file", '{"path": "a"}'),))
    assert (
        ChatMessage.from_dict({"role": "tool", "content": "x", "tool_call_id": 5}).tool_call_id
        == "5"
    )
    for bad in ({"role": "root", "content": "x"}, {"role": "user", "content": 5}):
        with pytest.raises(ValueError):
            ChatMessage.from_dict(bad)
