from __future__ import annotations

import json
import time

from relayline.protocol.jsoncodec import MAX_JSON_DEPTH
from relayline.worker.llm.base import ChatMessage, StreamChunk, ToolCall, ToolSpec
from relayline.worker.llm.local import LocalModel, split_words

ALL_TOOLS = [ToolSpec(n, n, {}) for n in ("read_file", "list_dir", "edit_file", "run_command")]


async def chunks_for(
    messages: list[ChatMessage], tools: list[ToolSpec] = ALL_TOOLS, delay_s: float = 0.0
) -> list[StreamChunk]:
    model = LocalModel(delay_s=delay_s)
    return [c async for c in model.stream(messages, tools, model="local")]


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def text(chunks: list[StreamChunk]) -> str:
    return "".join(c.text for c in chunks if c.text)


def calls(chunks: list[StreamChunk]) -> list[ToolCall]:
    return [c.tool_call for c in chunks if c.tool_call]


async def test_reply_is_deterministic_markdown_streamed_word_by_word() -> None:
    messages = [ChatMessage("user", "Please explain how websockets reconnect after a network drop")]
    first, second = await chunks_for(messages), await chunks_for(messages)
    assert first == second
    answer = text(first)
    assert "> Please explain how websockets reconnect" in answer
    assert "- **Words:** 9" in answer
    assert "```python" in answer
    assert len([c for c in first if c.text]) > 20
    assert first[-1].usage is not None and first[-1].usage.completion_tokens > 0
    other = text(await chunks_for([ChatMessage("user", "something else entirely")]))
    assert other != answer


def test_split_words_round_trips() -> None:
    sample = "  lead\n\n```python\ncode  here\n```\ttail "
    assert "".join(split_words(sample)) == sample


async def test_pace() -> None:
    started = time.monotonic()
    chunks = await chunks_for([ChatMessage("user", "hi")], delay_s=0.002)
    words = len([c for c in chunks if c.text])
    assert time.monotonic() - started >= words * 0.002


async def test_slash_commands_become_tool_calls() -> None:
    cases = {
        "/ls": ("list_dir", {"path": "."}),
        "/ls src": ("list_dir", {"path": "src"}),
        "/read README.md": ("read_file", {"path": "README.md"}),
        "/run echo hi && ls": ("run_command", {"command": "echo hi && ls"}),
        "/edit notes.txt hello world": (
            "edit_file",
            {"path": "notes.txt", "content": "hello world"},
        ),
        '/tool read_file {"path": "README.md"}': ("read_file", {"path": "README.md"}),
    }
    for message, (name, arguments) in cases.items():
        chunks = await chunks_for([ChatMessage("user", message)])
        [call] = calls(chunks)
        assert call.name == name, message
        assert json.loads(call.arguments) == arguments, message
        assert call.id.startswith("call_")
    again = calls(await chunks_for([ChatMessage("user", "/ls")]))
    assert again[0].id == calls(await chunks_for([ChatMessage("user", "/ls")]))[0].id


async def test_edit_takes_following_lines_as_content() -> None:
    [call] = calls(await chunks_for([ChatMessage("user", "/edit a.py\nprint(1)\nprint(2)")]))
    assert json.loads(call.arguments) == {"path": "a.py", "content": "print(1)\nprint(2)"}


async def test_only_offered_tools_are_called() -> None:
    chunks = await chunks_for([ChatMessage("user", "/run rm x")], tools=ALL_TOOLS[:1])
    assert calls(chunks) == []
    assert "not enabled" in text(chunks)


async def test_usage_errors_and_help_are_text() -> None:
    for message in ("/read", "/tool read_file [1]", "/tool read_file {oops", "/help"):
        chunks = await chunks_for([ChatMessage("user", message)])
        assert calls(chunks) == [] and text(chunks)


async def test_tool_arguments_nest_at_most_the_json_bound() -> None:
    edge = {"path": nested(MAX_JSON_DEPTH - 1)}  # the object is the bound's last level
    [call] = calls(await chunks_for([ChatMessage("user", f"/tool read_file {json.dumps(edge)}")]))
    assert json.loads(call.arguments) == edge
    for arguments in ('{"path": ' + json.dumps(nested(MAX_JSON_DEPTH)) + "}", "[" * 15_000):
        chunks = await chunks_for([ChatMessage("user", f"/tool read_file {arguments}")])
        assert calls(chunks) == [] and "must be a JSON object" in text(chunks)


async def test_summarises_tool_results() -> None:
    call = ToolCall("call_1", "read_file", '{"path": "README.md"}')
    history = [
        ChatMessage("user", "/read README.md"),
        ChatMessage("assistant", "Sure", (call,)),
        ChatMessage("tool", "# Title\n```\ncode\n```\nline", tool_call_id="call_1"),
    ]
    answer = text(await chunks_for(history))
    assert "`read_file` returned (5 lines" in answer
    assert "````\n# Title" in answer  # fence longer than any inside
    denied = [*history[:2], ChatMessage("tool", "denied: no", tool_call_id="call_1")]
    assert "declined `read_file`" in text(await chunks_for(denied))
    failed = [*history[:2], ChatMessage("tool", "error: no such file", tool_call_id="call_1")]
    assert "did not work: no such file" in text(await chunks_for(failed))
