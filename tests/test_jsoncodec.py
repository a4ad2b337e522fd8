"""The bounded JSON decoder: the edge, one past it, and brackets that do not nest."""

from __future__ import annotations

import json

import pytest

from relayline.protocol import jsoncodec
from relayline.protocol.jsoncodec import MAX_JSON_DEPTH, JsonTooDeep


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def test_the_edge_decodes_and_one_past_it_is_refused() -> None:
    assert jsoncodec.loads(nested(MAX_JSON_DEPTH)) == json.loads(nested(MAX_JSON_DEPTH))
    with pytest.raises(JsonTooDeep, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        jsoncodec.loads(nested(MAX_JSON_DEPTH + 1))
    objects = '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(JsonTooDeep):
        jsoncodec.loads(objects)


def test_a_huge_nesting_is_refused_before_the_decoder_recurses() -> None:
    with pytest.raises(JsonTooDeep):
        jsoncodec.loads("[" * 60_000)
    with pytest.raises(JsonTooDeep):
        jsoncodec.loads(b"[" * 60_000)


def test_many_brackets_side_by_side_or_inside_strings_are_not_depth() -> None:
    wide = json.dumps([[i] for i in range(500)])
    assert len(jsoncodec.loads(wide)) == 500
    code = json.dumps({"text": "[[[[{{{{" * 200, "quote": 'say \\"[[[[\\" ' * 50})
    assert jsoncodec.loads(code)["text"].startswith("[[[[")
    # An escaped quote does not end a string early (its brackets stay inside it).
    tricky = '["\\"' + "[" * 100 + '"]'
    assert jsoncodec.loads(tricky) == ['"' + "[" * 100]
    assert jsoncodec.depth_within(nested(3), 3) and not jsoncodec.depth_within(nested(4), 3)


def test_invalid_text_is_still_a_value_error() -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads("{not json")
    with pytest.raises(ValueError, match="UTF-8"):
        jsoncodec.loads(b"\xff\xfe")
