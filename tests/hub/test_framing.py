"""FrameReader's parse loop fed in arbitrary chunks (the kept-buffer path included)."""

from __future__ import annotations

import os

import pytest
from websockets.utils import apply_mask

from relayline.hub.framing import CLOSING, OPEN, FrameReader, max_fragments
from relayline.protocol.close_codes import Close


class Reader(FrameReader):
    def __init__(self) -> None:
        super().__init__(1 << 20)
        self._state = OPEN
        self.got: list[str | bytes] = []

    def _on_message(self, text: str | None, data: bytes) -> None:
        self.got.append(text if text is not None else data)

    def _fail(self, code: int, reason: str) -> None:
        raise AssertionError((code, reason))


def masked_frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + apply_mask(payload, mask)


@pytest.mark.parametrize("step", [1, 3, 7, 10_000])
def test_frames_split_anywhere_are_unmasked_exactly(step: int) -> None:
    # Payloads are unmasked from a view of the kept buffer, which is then resized: the view
    # must be released first (else BufferError).
    messages = [b"hello", b"x" * 300, b"", "h\u00e9llo".encode(), bytes(range(256))]
    data = b"".join(masked_frame(m, 2 if i == 4 else 1) for i, m in enumerate(messages))
    reader = Reader()
    for start in range(0, len(data), step):
        reader._feed(data[start : start + step])
    assert reader.got == [m.decode() for m in messages[:4]] + [messages[4]]


class Recorder(FrameReader):
    """Records messages and failures; a failure stops reading messages, as on the relay."""

    def __init__(self, max_size: int = 1 << 16) -> None:
        super().__init__(max_size)
        self._state = OPEN
        self.got: list[str | bytes] = []
        self.failed: list[tuple[int, str, bool]] = []

    def _on_message(self, text: str | None, data: bytes) -> None:
        self.got.append(text if text is not None else data)

    def _fail(self, code: int, reason: str, *, final: bool = False) -> None:
        self.failed.append((code, reason, final))
        self._state = CLOSING
        self._reset_message()

    def _on_close_frame(self, code: int, reason: str) -> None:
        self.got.append(f"close {code} {reason}")


def frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bytes = b"abcd") -> bytes:
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return bytes([(0x80 if fin else 0) | opcode]) + length + mask + apply_mask(payload, mask)


EMPTY_CONTINUATION = frame(b"", 0, fin=False)


def test_a_flood_of_empty_continuation_frames_is_refused_1009() -> None:
    # Empty fragments add nothing to the message's size: the fragment count bounds them.
    reader = Recorder()
    limit = max_fragments(1 << 16)
    reader._feed(frame(b"", 1, fin=False) + EMPTY_CONTINUATION * 200_000)
    assert reader.failed == [(Close.TOO_BIG, "too many fragments", False)]
    assert reader.got == []
    assert reader._frag is None and reader._frag_count == 0  # nothing kept of it
    assert reader._buf is None
    assert limit == 1024


def test_fragments_up_to_the_limit_make_a_message_and_one_more_is_refused() -> None:
    limit = max_fragments(1 << 16)
    reader = Recorder()
    reader._feed(frame(b"a", 1, fin=False) + frame(b"b", 0, fin=False) * (limit - 2))
    reader._feed(frame(b"c", 0))
    assert reader.failed == [] and reader.got == ["a" + "b" * (limit - 2) + "c"]
    reader._feed(frame(b"a", 2, fin=False) + frame(b"b", 0, fin=False) * (limit - 1))
    reader._feed(frame(b"c", 0))
    assert reader.failed == [(Close.TOO_BIG, "too many fragments", False)]
    assert len(reader.got) == 1


def test_a_fragmented_message_is_bounded_by_bytes() -> None:
    reader = Recorder(max_size=4096)
    reader._feed(frame(b"x" * 3000, 2, fin=False))
    assert reader._frag is not None and len(reader._frag) == 3000
    reader._feed(frame(b"x" * 1097, 0))  # 4097 bytes in all: refused on the frame header
    assert reader.failed == [(Close.TOO_BIG, "frame too big", False)]
    assert reader._frag is None


def test_fragmented_text_with_invalid_utf8_is_refused_at_that_fragment() -> None:
    # Autobahn 6.4.1: a valid first fragment, then a code point past U+10FFFF.
    reader = Recorder()
    reader._feed(frame("κόσμε".encode(), 1, fin=False))
    assert reader.failed == []
    reader._feed(frame(b"\xf4\x90\x80\x80", 0, fin=False))
    assert reader.failed == [(Close.INVALID_DATA, "text is not valid UTF-8", False)]
    reader._feed(frame(b"edited", 0))
    assert reader.got == [] and len(reader.failed) == 1


def test_a_text_frame_with_invalid_utf8_is_refused_before_it_ends() -> None:
    # Autobahn 6.4.3/6.4.4: one frame whose bytes arrive in chops; the invalid byte is in the
    # second chop, and the frame never completes.
    data = frame("κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited")
    reader = Recorder()
    reader._feed(data[:12])
    assert reader.failed == []
    reader._feed(data[12:18])
    assert reader.failed == [(Close.INVALID_DATA, "text is not valid UTF-8", False)]
    assert reader._buf is None  # the rest of the frame is skipped, not kept
    reader._feed(data[18:] + frame(b"\x03\xe8", 8))
    assert reader.got == ["close 1000 "]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 64])
def test_utf8_split_anywhere_across_chops_and_fragments_is_accepted(step: int) -> None:
    text = "h\u00e9llo \U0001f600 w\u00f6rld " * 20
    raw = text.encode()
    parts = [raw[:7], raw[7:8], raw[8:200], raw[200:]]
    data = b"".join(
        frame(part, 1 if i == 0 else 0, fin=i == len(parts) - 1) for i, part in enumerate(parts)
    )
    data += frame(raw)  # and once unfragmented
    reader = Recorder()
    for start in range(0, len(data), step):
        reader._feed(data[start : start + step])
    assert reader.failed == []
    assert reader.got == [text, text]


def test_a_truncated_code_point_at_the_end_of_a_message_is_refused() -> None:
    reader = Recorder()
    reader._feed(frame(b"ok \xe2\x82", 1, fin=False))
    assert reader.failed == []
    reader._feed(frame(b"", 0))
    assert reader.failed == [(Close.INVALID_DATA, "text is not valid UTF-8", False)]


def test_a_close_reason_that_is_not_utf8_ends_the_connection_at_once() -> None:
    # Autobahn 7.5.1: the peer's close frame came already, so nothing is left to wait for.
    reader = Recorder()
    reader._feed(
        frame(b"\x03\xe8" + b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80", 8)
    )
    assert reader.failed == [(Close.INVALID_DATA, "close reason is not valid UTF-8", True)]
