"""FrameReader's parse loop fed in arbitrary chunks (the kept-buffer path included)."""

from __future__ import annotations

import os

import pytest
from websockets.utils import apply_mask

from relayline.hub.framing import OPEN, FrameReader


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
