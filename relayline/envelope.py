"""The event envelope and topic names.

An :class:`Event` is one entry of a topic's log. Its ``frame`` holds the UTF-8 JSON that clients
receive, encoded once when the event is published; every WebSocket and SSE subscriber gets those
same bytes, so fan-out never serializes again. The envelope (server to client) is exactly::

    {"v": 1, "id", "topic", "type", "seq", "ts", "data"}

The topic's ``epoch`` travels beside the envelope (snapshots, ``Last-Event-ID``), never inside it.

Topics are ``chat:<id>``, ``term:<id>``, ``tenant:<id>`` and ``admin``; ids are 1 to 64 characters
of ``[A-Za-z0-9_-]``. Anything else is refused with :class:`~relayline.errors.ValidationFailed`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, cast

from relayline.errors import ValidationFailed
from relayline.ids import new_id

ENVELOPE_VERSION: Final = 1

TopicKind = Literal["chat", "term", "tenant", "admin"]
_TOPIC = re.compile(r"(chat|term|tenant):([A-Za-z0-9_-]{1,64})|(admin)")
_TOPIC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_TOPIC_LEN: Final = 71  # "tenant:" + 64

# The C-accelerated string encoder, with non-ASCII kept as is (what ensure_ascii=False does).
_encode_str = json.encoder.encode_basestring
# allow_nan=False: NaN and Infinity are not JSON, and a browser's JSON.parse would reject the frame.
_encode_data = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_ENVELOPE_KEYS: Final = frozenset({"v", "id", "topic", "type", "seq", "ts", "data"})


class EncodedData(dict[str, Any]):
    """Event data that arrives already encoded: a dict like any other for server-side
    consumers, and ``encoded``, its JSON object text, which goes into the frame as it is.

    For data relayed as received, such as a terminal's output from its worker: its text was
    checked while it was decoded (:mod:`relayline.protocol.term_output`), and encoding it again
    would cost more than everything else the relay does with it. Whoever makes one vouches that
    ``encoded`` is a JSON object equal to the dict's contents.
    """

    __slots__ = ("encoded",)

    def __init__(self, data: dict[str, Any], encoded: str) -> None:
        super().__init__(data)
        self.encoded = encoded


class Event(NamedTuple):
    """One published event: the parsed fields plus its wire ``frame``, encoded once.

    ``frame`` is authoritative: it is what every subscriber receives. ``data`` is the same content
    as a dict, for server-side consumers; treat it as read-only (the bus takes ownership of the
    dict passed to ``publish`` and does not copy it).

    A named tuple: immutable, and made in a third of the time a frozen dataclass takes (0.4
    against 1.4 µs, ``bench/bus_history.py``; the dataclass sets each field through
    ``object.__setattr__``), which every published and every replayed event pays once. Equal
    events hash alike by their id.
    """

    id: str
    topic: str
    type: str
    seq: int
    epoch: str
    ts: int
    data: dict[str, Any]
    frame: bytes

    def __hash__(self) -> int:
        # ``data`` is a dict, so the generated field hash would raise; the id is unique per event.
        return hash(self.id)


def now_ms() -> int:
    """Milliseconds since the Unix epoch, the unit of ``Event.ts``."""
    return time.time_ns() // 1_000_000


def encode_frame_parts(
    event_id: str, topic: str, type: str, ts: int, data: dict[str, Any]
) -> tuple[bytes, bytes]:
    """The frame split around its ``seq`` value: ``head + b"%d" % seq + tail`` is the frame.

    This lets a backend that assigns ``seq`` inside its store (the Redis script) splice the
    number in without encoding the JSON a second time.
    """
    if not isinstance(data, dict):
        raise ValidationFailed("event data must be a JSON object")
    try:
        head = (
            '{"v":1,"id":'
            + _encode_str(event_id)
            + ',"topic":'
            + _encode_str(topic)
            + ',"type":'
            + _encode_str(type)
            + ',"seq":'
        ).encode()
        encoded = data.encoded if isinstance(data, EncodedData) else _encode_data(data)
        tail = (',"ts":' + str(int(ts)) + ',"data":' + encoded + "}").encode()
    except (TypeError, ValueError) as exc:
        # UnicodeEncodeError (lone surrogates) is a ValueError too.
        raise ValidationFailed(f"event data is not JSON-serializable: {exc}") from None
    return head, tail


def encode_frame(
    event_id: str, topic: str, type: str, seq: int, ts: int, data: dict[str, Any]
) -> bytes:
    """The envelope as compact UTF-8 JSON, keys in wire order."""
    head, tail = encode_frame_parts(event_id, topic, type, ts, data)
    return b"%b%d%b" % (head, seq, tail)


def make_event(
    topic: str,
    type: str,
    data: dict[str, Any],
    *,
    seq: int,
    epoch: str,
    ts: int | None = None,
    event_id: str | None = None,
) -> Event:
    """Build an :class:`Event` and encode its frame (the one encoding it will ever get)."""
    event_id = event_id or new_id()
    ts = now_ms() if ts is None else ts
    frame = encode_frame(event_id, topic, type, seq, ts, data)
    return Event(event_id, topic, type, seq, epoch, ts, data, frame)


def decode_event(frame: bytes, epoch: str) -> Event:
    """Parse a frame produced by :func:`encode_frame`; the result keeps ``frame`` as given.

    Raises :class:`ValidationFailed` when the bytes are not a v1 envelope.
    """
    try:
        obj = json.loads(frame)
    except ValueError:
        raise ValidationFailed("event frame is not valid JSON") from None
    if not isinstance(obj, dict) or obj.keys() != _ENVELOPE_KEYS:
        raise ValidationFailed("event frame is not an envelope")
    event_id, topic, type_, seq, ts, data = (
        obj["id"],
        obj["topic"],
        obj["type"],
        obj["seq"],
        obj["ts"],
        obj["data"],
    )
    if (
        obj["v"] != ENVELOPE_VERSION
        or not isinstance(event_id, str)
        or not isinstance(topic, str)
        or not isinstance(type_, str)
        or not _is_int(seq)
        or not _is_int(ts)
        or not isinstance(data, dict)
    ):
        raise ValidationFailed("event frame has a malformed field")
    return Event(event_id, topic, type_, seq, epoch, ts, data, bytes(frame))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic name; ``str(topic)`` gives the wire form back."""

    kind: TopicKind
    id: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "admin":
            if self.id is not None:
                raise ValidationFailed("the admin topic takes no id")
        elif self.kind not in ("chat", "term", "tenant"):
            raise ValidationFailed(f"unknown topic kind {self.kind!r}")
        elif self.id is None or not _TOPIC_ID.fullmatch(self.id):
            raise ValidationFailed("a topic id is 1 to 64 characters of A-Z a-z 0-9 _ -")

    def __str__(self) -> str:
        return "admin" if self.id is None else f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, value: str) -> Topic:
        """Parse ``chat:<id>``, ``term:<id>``, ``tenant:<id>`` or ``admin``."""
        match = _match_topic(value)
        if match.group(3):
            return cls("admin")
        return cls(cast(TopicKind, match.group(1)), match.group(2))


def validate_topic(value: str) -> str:
    """Return ``value`` if it is a well-formed topic name, else raise :class:`ValidationFailed`.

    Cheaper than :meth:`Topic.parse` (no object), for the bus's entry points.
    """
    _match_topic(value)
    return value


def _match_topic(value: str) -> re.Match[str]:
    match = _TOPIC.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        # Never echo an arbitrarily long client string back into errors and logs.
        shown = value[:_MAX_TOPIC_LEN] if isinstance(value, str) else type(value).__name__
        raise ValidationFailed(f"malformed topic {shown!r}")
    return match
