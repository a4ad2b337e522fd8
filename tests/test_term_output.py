"""The relay's reading of a terminal's output frames without a full decode
(``relayline.protocol.term_output``), and the envelope that carries their text as it came."""

from __future__ import annotations

import json

import pytest

from relayline.envelope import EncodedData, decode_event, encode_frame
from relayline.protocol import term_output
from relayline.worker.terminals.outbox import TerminalOutbox
from relayline.worker.terminals.output import TerminalOutput

TEXTS = [
    "hello\r\n",
    '\x1b[31mröd\x1b[0m "quoted" back\\slash\ttab 日本語 🙂\r\n',
    "\x00\x07\x08\x7f",
]


async def worker_frames(text: str) -> list[str]:
    """The frames a worker's session output sends for ``text`` printed by its program."""
    outbox = TerminalOutbox(max_bytes=1 << 20)
    output = TerminalOutput(
        "01TERMINAL", 80, 24, outbox, flush_s=0.0, flush_chars=1 << 16, after_flush=lambda: None
    )
    output.take(text.encode())
    output.flush()
    # As the relay reads them: a text frame's UTF-8, decoded.
    return [f.decode() if isinstance(f, bytes) else f for f in outbox.queued]


@pytest.mark.parametrize("text", TEXTS)
async def test_the_workers_own_frames_are_read_and_their_string_kept_as_sent(text: str) -> None:
    (frame,) = await worker_frames(text)
    parsed = term_output.parse(frame)
    assert parsed is not None
    session_id, data, literal = parsed
    assert session_id == "01TERMINAL"
    assert data == text == json.loads(frame)["data"]
    assert json.loads(literal) == text
    assert frame == term_output.PREFIX + '01TERMINAL","data":' + literal + "}"


@pytest.mark.parametrize(
    "frame",
    [
        # another layout: decoded as any frame instead
        '{"id":"T","type":"term.output","data":"x"}',
        '{"type": "term.output", "id": "T", "data": "x"}',
        '{"type":"term.output","id":"T","data":"x","snapshot":true,"cols":80,"rows":24}',
        '{"type":"term.output","id":"T","data":"x"} ',
        '{"type":"term.output","id":"T\\u0041","data":"x"}',
        '{"type":"term.output","id":"T\x01","data":"x"}',
        '{"type":"term.output","id":"T","data":5}',
        # two data keys: the event must not carry what follows the first string
        '{"type":"term.output","id":"T","data":"a","data":"b"}',
        '{"type":"term.output","id":"T","data":"a","snapshot":true}',
        # not JSON at all: the full decode reports it
        '{"type":"term.output","id":"T","data":"bad \\q escape"}',
        '{"type":"term.output","id":"T","data":"raw \x01 control"}',
        '{"type":"term.output","id":"T","data":"unterminated}',
        '{"type":"term.output","id":"T","data":"x"}}',
        '{"type":"term.output","id":"T","data":"}',
        '{"type":"term.output","id":"T","data":"a" "b"}',
        '{"type":"term.output","id":"T',
        '{"type":"term.output","id":"T"}',
    ],
)
def test_anything_but_the_exact_layout_is_left_to_the_full_decode(frame: str) -> None:
    assert term_output.parse(frame) is None


def test_an_escaped_lone_surrogate_is_read_as_json_allows_and_kept_as_sent() -> None:
    # orjson refuses it; the standard library's reader judges it, as json.loads would.
    frame = '{"type":"term.output","id":"T","data":"a\\ud800b"}'
    assert term_output.parse(frame) == ("T", "a\ud800b", '"a\\ud800b"')
    assert json.loads(frame)["data"] == "a\ud800b"


def test_encoded_data_goes_into_the_frame_as_it_is() -> None:
    literal = '"a\\u001b[1m\\"b\\""'
    data = EncodedData({"data": 'a\x1b[1m"b"'}, '{"data":' + literal + "}")
    frame = encode_frame("01EVENT", "term:T", "term.output", 7, 1_700_000_000_000, data)
    assert b'"data":{"data":' + literal.encode() + b"}" in frame
    event = decode_event(frame, "epoch")
    assert event.data == {"data": 'a\x1b[1m"b"'} == data
    # The same content as a plain dict gives an equal event.
    plain = encode_frame("01EVENT", "term:T", "term.output", 7, 1_700_000_000_000, dict(data))
    assert decode_event(plain, "epoch").data == event.data
