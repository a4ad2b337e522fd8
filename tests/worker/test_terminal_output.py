"""Coalescing of terminal output: the first text after a quiet moment goes at once, what
follows it within the window waits for it, a full window's worth goes at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from relayline.worker.terminals.output import (
    FRAME_MAX_BYTES,
    TerminalOutput,
    escape,
    split_output,
)


class Frames:
    over = False

    def __init__(self) -> None:
        self.pushed: list[dict[str, Any]] = []

    def push_encoded(self, text: str | bytes) -> None:
        self.pushed.append(json.loads(text))

    @property
    def text(self) -> str:
        return "".join(f["data"] for f in self.pushed)


def output(frames: Frames, flush_s: float, flush_chars: int = 1000) -> TerminalOutput:
    return TerminalOutput(
        "t",
        80,
        24,
        frames,  # type: ignore[arg-type]
        flush_s=flush_s,
        flush_chars=flush_chars,
        after_flush=lambda: None,
    )


async def test_the_first_output_after_a_quiet_moment_goes_at_once() -> None:
    frames = Frames()
    out = output(frames, flush_s=0.2)
    out.take(b"a")
    assert frames.text == "a"  # a key's echo waits for nothing
    out.take(b"b")
    out.take(b"c")
    assert frames.text == "a"  # the rest of a burst waits for the window
    await asyncio.sleep(0.3)
    assert frames.text == "abc" and len(frames.pushed) == 2
    await asyncio.sleep(0.25)
    out.take(b"d")  # quiet again
    assert frames.text == "abcd"
    out.close()


async def test_a_full_window_goes_at_once_and_frames_stay_within_the_limit() -> None:
    frames = Frames()
    out = output(frames, flush_s=10, flush_chars=100)
    out.take(b"x")
    out.take(b"y" * 150)
    assert frames.text == "x" + "y" * 150
    out.close()
    # Control characters take six bytes in JSON: a frame of them is split to fit.
    pieces = split_output({"type": "term.output", "id": "t"}, "\x1b" * 30_000)
    assert len(pieces) > 1
    assert all(len(p) <= FRAME_MAX_BYTES for p in pieces)
    assert "".join(json.loads(p)["data"] for p in pieces) == "\x1b" * 30_000
    wide = split_output({"type": "term.output", "id": "t"}, "漢" * 30_000)  # 3 bytes each
    assert all(len(p) <= FRAME_MAX_BYTES for p in wide) and len(wide) > 1
    assert "".join(json.loads(p)["data"] for p in wide) == "漢" * 30_000


def test_frames_are_the_json_the_standard_encoder_gives() -> None:
    texts = [
        "plain",
        'quote " backslash \\ slash /',
        "".join(chr(c) for c in range(0x20)) + "\x7f\x80\x9f",
        "é 漢 🙂 \u2028\u2029",
        "",
    ]
    for text in texts:
        (frame,) = split_output({"type": "term.output", "id": "t"}, text)
        assert json.loads(frame) == {"type": "term.output", "id": "t", "data": text}
        assert frame.decode() == json.dumps(
            {"type": "term.output", "id": "t", "data": text},
            separators=(",", ":"),
            ensure_ascii=False,
        )
    # A lone surrogate cannot be UTF-8: it is escaped, and the frame stays valid UTF-8.
    assert escape("a\ud800b") == b'"a\\ud800b"'
    (frame,) = split_output({"type": "term.output", "id": "t", "snapshot": True}, "\udfff")
    assert frame == b'{"type":"term.output","id":"t","snapshot":true,"data":"\\udfff"}'


async def test_the_output_after_a_key_is_typed_goes_at_once() -> None:
    frames = Frames()
    out = output(frames, flush_s=10)
    out.take(b"prompt$ ")
    out.typed()
    out.take(b"l")  # within the window, but the echo of a key
    assert frames.text == "prompt$ l"
    out.take(b"s")  # not typed: waits
    assert frames.text == "prompt$ l"
    out.close()
