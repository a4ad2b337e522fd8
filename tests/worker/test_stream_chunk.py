"""A model stream's item carries exactly one thing: a text, a tool call, a finish reason or the
usage; anything else is refused when it is made."""

from __future__ import annotations

import pytest

from relayline.worker.llm.base import StreamChunk, ToolCall, Usage

CALL = ToolCall(id="c1", name="clock", arguments="{}")
USAGE = Usage(prompt_tokens=3, completion_tokens=5)


@pytest.mark.parametrize(
    "fields",
    [
        {"text": ""},
        {"text": "Hel"},
        {"tool_call": CALL},
        {"usage": USAGE},
        {"finish_reason": "stop"},
    ],
)
def test_a_chunk_of_exactly_one_thing_is_made(fields: dict[str, object]) -> None:
    chunk = StreamChunk(**fields)  # type: ignore[arg-type]
    for name, value in fields.items():
        assert getattr(chunk, name) == value


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"text": "Hel", "finish_reason": "stop"},
        {"tool_call": CALL, "usage": USAGE},
        {"text": "a", "tool_call": CALL, "usage": USAGE, "finish_reason": "stop"},
    ],
)
def test_a_chunk_of_none_or_several_things_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        StreamChunk(**fields)  # type: ignore[arg-type]
