"""OpenAI's wire format as the gateway writes and reads it, without a relay."""

from __future__ import annotations

import json

import pytest

from relayline.completions import wire
from relayline.errors import ValidationFailed


@pytest.mark.parametrize("usage", [False, True])
@pytest.mark.parametrize("text", ["Hello", 'quo"te\\ and\nnew line', "naïve ✓ 👋", ""])
def test_text_chunks_are_the_generic_chunk_byte_for_byte(text: str, usage: bool) -> None:
    encoder = wire.TextChunks("chatcmpl-1", "m1", 1700000000, with_usage=usage)
    generic = wire.chunk("chatcmpl-1", "m1", 1700000000, {"content": text}, with_usage=usage)
    assert encoder.text(text) == wire.sse(generic)
    assert json.loads(encoder.text(text)[len(b"data: ") :]) == generic


def body(**fields: object) -> wire.ChatCompletionIn:
    return wire.ChatCompletionIn.model_validate(
        {"model": "m1", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_sampling_settings_are_checked_strictly_and_named() -> None:
    assert body(temperature=0.5, max_tokens=10, stop="END").generation() == {
        "temperature": 0.5,
        "max_tokens": 10,
        "stop": ["END"],
    }
    assert body(max_completion_tokens=7).generation() == {"max_tokens": 7}
    for bad, field in (
        ({"temperature": True}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 5.0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ):
        with pytest.raises(ValidationFailed) as refused:
            body(**bad).generation()
        assert refused.value.detail.startswith(field), refused.value.detail


def test_messages_become_the_worker_protocols_and_bad_ones_are_refused() -> None:
    parsed = wire.ChatCompletionIn.model_validate(
        {
            "model": "m1",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
        }
    )
    messages, texts = wire.wire_messages(parsed)
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "name": "f", "arguments": "{}"}],
        },
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    assert texts == [("system", "Be brief."), ("user", "ab"), ("assistant", ""), ("tool", "42")]
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    for bad in (
        [{"role": "user", "content": [image]}],
        [{"role": "tool", "content": "no call id"}],
        [{"role": "user", "content": "x", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}],
    ):
        with pytest.raises(ValidationFailed):
            wire.wire_messages(
                wire.ChatCompletionIn.model_validate({"model": "m1", "messages": bad})
            )
    with pytest.raises(ValidationFailed, match="tool_choice"):
        wire.wire_tools(body(tool_choice="required"))
