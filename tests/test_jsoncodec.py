"""The bounded JSON decoder: the edge, one past it, and brackets that do not nest."""

from __future__ import annotations

import json
import random

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


def test_a_huge_nesting_is_refused_without_exhausting_the_stack() -> None:
    with pytest.raises(JsonTooDeep):
        jsoncodec.loads("[" * 60_000)
    with pytest.raises(JsonTooDeep):
        jsoncodec.loads(b"[" * 60_000)
    with pytest.raises(JsonTooDeep):
        jsoncodec.loads(nested(60_000))  # valid, past the interpreter's recursion limit
    with pytest.raises(JsonTooDeep):
        jsoncodec.loads(nested(900))  # valid, decodes, then refused by the walk
    assert not jsoncodec.value_depth_within(json.loads(nested(900)))


def test_terminal_output_full_of_escape_brackets_costs_its_decoding_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = "".join(f"\x1b[{i % 8 + 30}m{i}\x1b[0m " for i in range(500))
    frame = json.dumps({"op": "term.output", "d": {"id": "t1", "data": screen}})
    assert frame.count("[") >= 1000

    def no_text_scan(*args: object, **kwargs: object) -> bool:
        raise AssertionError("loads must not scan the text")

    monkeypatch.setattr(jsoncodec, "depth_within", no_text_scan)
    assert jsoncodec.loads(frame)["d"]["data"] == screen
    assert jsoncodec.loads(frame.encode())["d"]["data"] == screen
    # Such a frame that also nests too deep is still refused.
    with pytest.raises(JsonTooDeep):
        jsoncodec.loads(frame[:-1] + ', "x": ' + nested(MAX_JSON_DEPTH) + "}")


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


def test_an_escaped_backslash_does_not_hide_the_end_of_its_string() -> None:
    # `"a\\"` ends at its last quote: the nesting after it is real.
    assert jsoncodec.depth_within('["a\\\\", ' + nested(MAX_JSON_DEPTH - 1) + "]")
    with pytest.raises(JsonTooDeep):
        jsoncodec.loads('["a\\\\", ' + nested(MAX_JSON_DEPTH) + "]")
    # ... and `"a\\\"` does not end at its third backslash's quote.
    assert jsoncodec.loads('["a\\\\\\"' + "{" * 100 + '"]') == ["a\\" + '"' + "{" * 100]


def test_bytes_are_read_as_utf8() -> None:
    text = '{"é": "€[[[[", "x": ' + nested(MAX_JSON_DEPTH - 1) + "}"
    assert jsoncodec.depth_within(text.encode()) and jsoncodec.depth_within(text)
    deeper = text.replace("]}", "]]}").replace('"x": ', '"x": [')
    assert not jsoncodec.depth_within(deeper.encode()) and not jsoncodec.depth_within(deeper)
    assert repr(JsonTooDeep(3)) == "JsonTooDeep(limit=3)"


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def random_value(rng: random.Random, depth: int) -> object:
    """JSON values whose strings hold brackets, quotes and backslashes in every arrangement."""
    roll = rng.random()
    if depth <= 0 or roll < 0.3:
        strings = ['q"[{', "\\[", "\\", '\\"{', "]}", '"', "\\\\", "x\n", "\t[", "é€", "\x1b[0m"]
        return rng.choice([1, None, "a", *strings])
    if roll < 0.65:
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    keys = ["k", "[", '"{', "\\", "}"]
    return {rng.choice(keys) + str(i): random_value(rng, depth - 1) for i in range(3)}


def test_the_depth_is_exact_for_any_valid_json() -> None:
    rng = random.Random(20261205)
    for _ in range(3000):
        value = random_value(rng, rng.randint(0, 10))
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        depth = depth_of(value)
        for limit in {0, 1, 2, depth - 1, depth, depth + 1} - {-1}:
            assert jsoncodec.depth_within(text, limit) == (depth <= limit), (text, limit)
            assert jsoncodec.value_depth_within(value, limit) == (depth <= limit), (text, limit)
            if depth <= limit:
                assert jsoncodec.loads(text, limit) == value
            else:
                with pytest.raises(JsonTooDeep):
                    jsoncodec.loads(text, limit)


def decoder_depth_within(text: str, limit: int) -> bool:
    """How deep the decoder itself gets before it stops at the first error, if any."""
    open_brackets: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            open_brackets.append(ch)
            if len(open_brackets) > limit:
                return False
        elif ch in "]}":
            if not open_brackets or "[{"["]}".index(ch)] != open_brackets.pop():
                return True
        elif ch == "\\":
            return True
    return True


def test_no_invalid_text_passes_deeper_than_the_decoder_would_stop() -> None:
    rng = random.Random(5)
    pieces = ["[", "]", "{", "}", '"', "\\", "a", ",", ":", '\\"', "\\\\"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        for limit in (1, 2, 4):
            if jsoncodec.depth_within(text, limit):
                assert decoder_depth_within(text, limit), (text, limit)
