from __future__ import annotations

import json
import math

import pytest

from relayline.envelope import (
    Event,
    Topic,
    decode_event,
    encode_frame,
    encode_frame_parts,
    make_event,
    validate_topic,
)
from relayline.errors import ValidationFailed


def reference_frame(event: Event) -> bytes:
    envelope = {
        "v": 1,
        "id": event.id,
        "topic": event.topic,
        "type": event.type,
        "seq": event.seq,
        "ts": event.ts,
        "data": event.data,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


def test_frame_is_the_compact_envelope_in_wire_order() -> None:
    event = make_event(
        "chat:abc",
        "message.delta",
        {"text": 'Hé "ü" \n 😀', "n": [1, 2.5, None, True]},
        seq=42,
        epoch="epoch-1",  # lower case and a dash: cannot occur inside an id by chance
    )
    assert event.frame == reference_frame(event)
    assert list(json.loads(event.frame)) == ["v", "id", "topic", "type", "seq", "ts", "data"]
    assert "😀".encode() in event.frame  # non-ASCII kept as UTF-8, not \u escapes
    assert b"epoch-1" not in event.frame  # the epoch is not part of the envelope
    assert len(event.id) == 26 and event.ts > 1_700_000_000_000


def test_parts_splice_to_the_same_frame() -> None:
    head, tail = encode_frame_parts("01ID", "admin", "worker.state", 123, {"a": 1})
    assert head + b"7" + tail == encode_frame("01ID", "admin", "worker.state", 7, 123, {"a": 1})


def test_an_event_cannot_be_changed_and_hashes_by_its_id() -> None:
    event = make_event("chat:abc", "message.delta", {"text": "hi"}, seq=1, epoch="ep")
    with pytest.raises(AttributeError):
        event.seq = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        event.frame = b"{}"  # type: ignore[misc]
    assert {event, decode_event(event.frame, "ep")} == {event}  # hashable although data is a dict
    assert hash(event) == hash(event.id)


def test_decode_round_trip_keeps_the_bytes() -> None:
    event = make_event("term:s-1", "term.output", {"data": "ls\r\n"}, seq=3, epoch="ep")
    decoded = decode_event(event.frame, "ep")
    assert decoded == event
    assert hash(decoded) == hash(event)
    assert decoded.frame == event.frame


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"[1,2]",
        b'{"v":1}',
        b'{"v":2,"id":"x","topic":"admin","type":"t","seq":1,"ts":1,"data":{}}',
        b'{"v":1,"id":"x","topic":"admin","type":"t","seq":true,"ts":1,"data":{}}',
        b'{"v":1,"id":"x","topic":"admin","type":"t","seq":1,"ts":1,"data":[]}',
        b'{"v":1,"id":"x","topic":"admin","type":"t","seq":1,"ts":1,"data":{},"epoch":"e"}',
    ],
)
def test_decode_refuses_what_is_not_an_envelope(frame: bytes) -> None:
    with pytest.raises(ValidationFailed):
        decode_event(frame, "e")


@pytest.mark.parametrize(
    "data", [{"x": math.nan}, {"x": object()}, {"x": "\ud800"}, ["not", "a", "dict"]]
)
def test_unencodable_data_is_refused(data: object) -> None:
    with pytest.raises(ValidationFailed):
        make_event("admin", "t", data, seq=1, epoch="e")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "kind", "topic_id"),
    [
        ("chat:8f3", "chat", "8f3"),
        ("term:a_b-C", "term", "a_b-C"),
        ("tenant:" + "x" * 64, "tenant", "x" * 64),
        ("admin", "admin", None),
    ],
)
def test_topic_parse(value: str, kind: str, topic_id: str | None) -> None:
    topic = Topic.parse(value)
    assert (topic.kind, topic.id) == (kind, topic_id)
    assert str(topic) == value
    assert validate_topic(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "chat:",
        "chat",
        "admin:1",
        "custom:x",
        "chat:a b",
        "chat:a.b",
        "chat:a:b",
        "chat:" + "x" * 65,
        "chat:x\n",
        "Chat:x",
        "chat:é",
        "x" * 10_000,
    ],
)
def test_malformed_topics_are_refused(value: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        Topic.parse(value)
    assert len(info.value.detail) < 120  # never echoes a huge input
    with pytest.raises(ValidationFailed):
        validate_topic(value)


def test_topic_constructor_validates() -> None:
    assert str(Topic("chat", "abc")) == "chat:abc"
    with pytest.raises(ValidationFailed):
        Topic("chat")
    with pytest.raises(ValidationFailed):
        Topic("admin", "x")
    with pytest.raises(ValidationFailed):
        Topic("custom", "x")  # type: ignore[arg-type]
