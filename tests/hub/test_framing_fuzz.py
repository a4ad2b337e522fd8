"""Property tests (hypothesis) on what the relay decodes from outside: the WebSocket frame
parser fed random bytes and random frames split at random boundaries, and the envelope, topic
and JSON decoding. Nothing escapes but the documented protocol errors (a close code from the
parser, ``ValidationFailed`` or ``ValueError`` from the decoders), nothing hangs, and what the
parser holds stays within its bounds after every chunk."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayline.envelope import Topic, decode_event, encode_frame
from relayline.errors import ValidationFailed
from relayline.hub.framing import CLOSED, max_fragments
from relayline.protocol import jsoncodec
from relayline.protocol.close_codes import Close
from tests.hub.test_framing import Recorder, frame

MAX_SIZE = 1024
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Peer(Recorder):
    """As the relay's protocol: after a 1002 (or a failure in a close frame) and after a close
    frame, the transport is closed and nothing more is read."""

    def __init__(self) -> None:
        super().__init__(MAX_SIZE)

    def _fail(self, code: int, reason: str, *, final: bool = False) -> None:
        super()._fail(code, reason, final=final)
        if final or code == Close.PROTOCOL_ERROR:
            self._state = CLOSED

    def _on_close_frame(self, code: int, reason: str) -> None:
        super()._on_close_frame(code, reason)
        self._state = CLOSED


def check_bounds(peer: Peer) -> None:
    assert len(peer._buf or b"") <= MAX_SIZE + 14  # one frame: header, mask, payload
    assert len(peer._frag or b"") <= MAX_SIZE
    assert peer._frag_count <= max_fragments(MAX_SIZE)
    assert 0 <= peer._checked <= MAX_SIZE
    assert peer._skip >= 0


def run(data: bytes, cuts: list[int]) -> tuple[list[str | bytes], list[int]]:
    """Feed ``data`` cut at ``cuts``; what the app got and the failure codes."""
    peer = Peer()
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        peer._feed(data[start:cut])
        check_bounds(peer)
        start = cut
    return peer.got, [code for code, _, _ in peer.failed]


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[int]:
    return draw(st.lists(st.integers(0, len(data)), max_size=12))


raw_frames = st.builds(
    lambda first, masked, payload, long_form: (
        bytes([first])
        + (
            bytes([(0x80 if masked else 0) | 126]) + len(payload).to_bytes(2, "big")
            if long_form
            else bytes([(0x80 if masked else 0) | min(len(payload), 125)])
        )
        + (b"\x00\x01\x02\x03" if masked else b"")
        + payload
    ),
    st.integers(0, 255),
    st.sampled_from([True, True, True, False]),  # masked, mostly
    st.binary(max_size=200),
    st.booleans(),
)


@FUZZ
@given(st.data())
def test_random_bytes_end_in_a_protocol_error_or_messages(data: st.DataObject) -> None:
    chunks = data.draw(st.lists(st.one_of(st.binary(max_size=300), raw_frames), max_size=8))
    stream = b"".join(chunks)
    cuts = data.draw(split(stream))
    got, failed = run(stream, cuts)
    assert set(failed) <= {Close.PROTOCOL_ERROR, Close.INVALID_DATA, Close.TOO_BIG}
    assert len(failed) <= 2  # one failure, then at most one on the close frame that followed
    # The same bytes in one piece give the same outcome: splits change nothing.
    assert run(stream, []) == (got, failed)


text_or_binary = st.one_of(
    st.text(max_size=300).map(lambda t: (1, t.encode())),
    st.binary(max_size=300).map(lambda b: (2, b)),
)


@st.composite
def fragmented(draw: st.DrawFn) -> tuple[bytes, list[str | bytes]]:
    """Valid client frames: messages in random fragments, pings in between."""
    wire = b""
    expected: list[str | bytes] = []
    for opcode, payload in draw(st.lists(text_or_binary, max_size=6)):
        bounds = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=5)))
        pieces = [payload[a:b] for a, b in zip([0, *bounds], [*bounds, len(payload)], strict=True)]
        for i, piece in enumerate(pieces):
            wire += frame(piece, opcode if i == 0 else 0, fin=i == len(pieces) - 1)
            if draw(st.booleans()):
                wire += frame(b"ping", 9)
        expected.append(payload.decode() if opcode == 1 else payload)
    return wire, expected


@FUZZ
@given(st.data())
def test_valid_frames_split_anywhere_give_the_messages_back(data: st.DataObject) -> None:
    wire, expected = data.draw(fragmented())
    got, failed = run(wire, data.draw(split(wire)))
    assert failed == []
    assert got == expected


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_json_decoding_returns_a_value_or_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        jsoncodec.loads(text)


@FUZZ
@given(st.integers(1, 5000), st.sampled_from("[{"))
def test_deep_json_is_a_value_error(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    body = (
        opener * depth + closer * depth if opener == "[" else '{"a":' * depth + "1" + closer * depth
    )
    try:
        jsoncodec.loads(body)
    except ValueError:
        assert depth > jsoncodec.MAX_JSON_DEPTH


@FUZZ
@given(st.binary(max_size=400))
def test_envelope_decoding_refuses_random_bytes_cleanly(data: bytes) -> None:
    with contextlib.suppress(ValidationFailed):
        decode_event(data, "e1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@FUZZ
@given(
    st.text(min_size=1, max_size=30),
    st.text(max_size=30),
    st.integers(0, 2**53),
    st.integers(0, 2**53),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)
def test_envelope_round_trips(
    event_id: str, type_: str, seq: int, ts: int, data: dict[str, Any]
) -> None:
    event = decode_event(encode_frame(event_id, "chat:abc", type_, seq, ts, data), "e1")
    assert (event.id, event.topic, event.type, event.seq, event.ts, event.data) == (
        event_id,
        "chat:abc",
        type_,
        seq,
        ts,
        data,
    )


@FUZZ
@given(
    st.text(max_size=80)
    | st.from_regex(r"(chat|term|tenant|admin|x):[A-Za-z0-9_-]{0,70}", fullmatch=True)
)
def test_topic_parsing_round_trips_or_refuses(value: str) -> None:
    try:
        topic = Topic.parse(value)
    except ValidationFailed:
        return
    assert str(topic) == value
