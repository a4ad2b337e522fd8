"""The screen mirror's redraw: what a viewer that attaches late is shown."""

from __future__ import annotations

import random

import pyte
import pytest

from relayline.worker.terminals.screen import ScreenMirror


def replay(text: str, cols: int, rows: int) -> pyte.Screen:
    """What an xterm of that size shows after ``text`` (pyte standing in for it)."""
    screen = pyte.Screen(cols, rows)
    pyte.Stream(screen).feed(text)
    return screen


def test_a_redraw_paints_the_same_screen() -> None:
    mirror = ScreenMirror(30, 6)
    mirror.feed("plain\r\n\x1b[1;32mbold green\x1b[0m \x1b[48;5;21mblue bg\x1b[0m\r\n")
    mirror.feed("wide: 漢字 ok\r\n\x1b[7mreverse\x1b[27m\x1b[4;10H")
    redraw = mirror.redraw()
    painted = replay(redraw, 30, 6)
    assert painted.display == mirror.screen.display
    for y in range(6):
        for x in range(30):
            assert painted.buffer[y][x] == mirror.screen.buffer[y][x], (x, y)
    assert (painted.cursor.x, painted.cursor.y) == (9, 3)
    # A screen painted over anything else comes out the same: the redraw clears first.
    assert replay("garbage\r\n" * 10 + redraw, 30, 6).display == mirror.screen.display


def test_the_redraw_restores_modes_a_keyboard_depends_on() -> None:
    mirror = ScreenMirror(20, 4)
    mirror.feed("\x1b[?1h\x1b[?2004h\x1b[?25l")
    redraw = mirror.redraw()
    assert "\x1b[?1h" in redraw and "\x1b[?2004h" in redraw and redraw.endswith("\x1b[?25l")


def test_shrinking_drops_empty_rows_below_the_cursor_first() -> None:
    mirror = ScreenMirror(20, 10)
    mirror.feed("$ echo hi\r\nhi\r\n$ ")
    mirror.resize(20, 5)
    assert mirror.screen.display[:3] == ["$ echo hi".ljust(20), "hi".ljust(20), "$".ljust(20)]
    assert (mirror.screen.cursor.x, mirror.screen.cursor.y) == (2, 2)
    # Only when the cursor is near the bottom do rows go from the top.
    mirror.feed("\r\n1\r\n2\r\n3")
    mirror.resize(20, 3)
    assert [line.strip() for line in mirror.screen.display] == ["1", "2", "3"]
    mirror.resize(10, 6)
    assert len(mirror.screen.display) == 6 and mirror.screen.columns == 10


def plain_pyte(cols: int, rows: int, chunks: list[str]) -> pyte.Screen:
    screen = pyte.Screen(cols, rows)
    stream = pyte.Stream(screen)
    for chunk in chunks:
        stream.feed(chunk)
    return screen


def same_screen(mirror: ScreenMirror, screen: pyte.Screen) -> bool:
    ours = mirror.screen
    return (
        ours.display == screen.display
        and (ours.cursor.x, ours.cursor.y) == (screen.cursor.x, screen.cursor.y)
        and all(ours.buffer[y] == screen.buffer[y] for y in range(screen.lines))
        and ours.cursor.attrs == screen.cursor.attrs
    )


@pytest.mark.parametrize(
    "chunks",
    [
        ["y\r\n" * 5000],
        ["\x1b[1;32mgreen from here\r\n", "line %d\tcol\r\n" * 3000, "end"],
        ["x" * 200 + "\r\n" + "wrapped long lines " * 40 + "\r\n" * 2] * 60,
        ["a\r\n" * 3000 + "\x1b[2J\x1b[Htop after a clear\r\n"],  # an escape: no shortcut
        ["partial \x1b[", "31mred\r\n" + "r\r\n" * 3000],  # a chunk that starts mid-sequence
        ["\x0e" + "shifted\r\n" * 3000],  # SO: a charset shift persists
        ["\x1b[5;10r" + "in a region\r\n" * 3000],  # a scroll region
        ["\x1b[20h" + "new line mode\r\n" * 3000],
        ["ü wide 漢字\r\n" * 2000 + "no newline at the end"],
        ["\r\n" * 24 + "few\r\n" * 30],
        # Colour, then a long plain run, then more sequences: the run is skipped, not the rest.
        ["\x1b[1;31mred\x1b[0m\r\n" * 50 + "plain\r\n" * 3000 + "\x1b[7mrev\x1b[0m tail\r\n" * 5],
        # A run that starts inside a sequence (its ESC just before): the sequence still ends.
        ["\x1b[", "38;5;200m" + "pink\r\n" * 3000, "\x1b[0m"],
        # Many batches' worth.
        ["z" * 70 + "\r\n"] * 5000 + ["\x1b[Hhome"],
    ],
)
def test_a_flood_of_lines_leaves_the_screen_pyte_would(chunks: list[str]) -> None:
    mirror = ScreenMirror(40, 12)
    for chunk in chunks:
        mirror.feed(chunk)
    assert same_screen(mirror, plain_pyte(40, 12, chunks))


def test_floods_are_read_in_batches_and_mostly_skipped() -> None:
    mirror = ScreenMirror(80, 24)
    fed: list[str] = []
    real = mirror.stream.feed
    mirror.stream.feed = lambda text: (fed.append(text), real(text))[1]  # type: ignore[method-assign]
    mirror.feed("y\r\n" * 1000)
    assert fed == []  # kept until a batch is full, or the screen is looked at
    mirror.feed("y\r\n" * 100_000)  # past a batch: read now
    # The start of the run (room for a sequence it might end), then its last rows lines.
    assert sum(len(text) for text in fed) <= 256 + 3 * 24
    assert mirror.screen.display[-2].strip() == "y" and mirror.screen.cursor.y == 23


COLOURED = "\x1b[32m" + "g" * 34 + "\x1b[0m \x1b[1;34m" + "b" * 24 + "\x1b[0m\r\n"


@pytest.mark.parametrize(
    "chunks",
    [
        [COLOURED * 5000],
        # grep --color: SGR and erase-in-line around every match.
        ["\x1b[01;31m\x1b[Kmatch\x1b[m\x1b[K rest of the line\r\n" * 4000],
        # Colours set and never reset: the pen at the end is what they leave.
        [f"\x1b[1;3{i % 8}mno reset {i}\r\n" for i in range(4000)],
        # A pen set before a flood (with no reset in it) carries through it.
        ["\x1b[4;38;5;200;48;2;1;2;3m", "underlined pink on rgb\r\n" * 3000, "last"],
        # Reset, then more attributes, all within the part that scrolls off.
        ["\x1b[7mrev\x1b[0m" + "x\r\n" * 2000 + "\x1b[3m\x1b[9m" + "y\r\n" * 2000],
        # Between floods, sequences that are not line-local are read as they come.
        [COLOURED * 1000 + "\x1b[5;5Hmoved\x1b[2A" + COLOURED * 1000 + "\x1b[?25l"],
        # A coloured flood cut anywhere, even inside its sequences.
        [(COLOURED * 3000)[i : i + 777] for i in range(0, 3000 * len(COLOURED), 777)],
        # Wide characters and C1 controls (a C1 control ends a run).
        ["\x1b[33m漢字 ü\x1b[0m\r\n" * 2000 + "\x9b2J" + "after\r\n" * 3000],
        # Progress bars: CR and erase in line without a line feed, then lines.
        [f"\r\x1b[2K{i}%" for i in range(3000)] + [COLOURED * 2000],
    ],
)
def test_a_coloured_flood_leaves_the_screen_pyte_would(chunks: list[str]) -> None:
    mirror = ScreenMirror(40, 12)
    for chunk in chunks:
        mirror.feed(chunk)
    assert same_screen(mirror, plain_pyte(40, 12, chunks))


def counting(mirror: ScreenMirror) -> list[str]:
    fed: list[str] = []
    real = mirror.stream.feed
    mirror.stream.feed = lambda text: (fed.append(text), real(text))[1]  # type: ignore[method-assign]
    return fed


def test_a_coloured_flood_costs_pyte_only_its_last_screen() -> None:
    mirror = ScreenMirror(80, 24)
    fed = counting(mirror)
    for _ in range(40):
        mirror.feed(COLOURED * 1000)  # 3 MiB in 80 KiB pieces: many batches
    assert fed == []  # each batch's tail waits for the next one, which scrolls it off
    mirror.redraw()  # a viewer attaches: the last tail is read now
    assert sum(len(text) for text in fed) <= 25 * len(COLOURED)
    assert same_screen(mirror, plain_pyte(80, 24, [COLOURED * 40_000]))


def test_a_snapshot_after_a_coloured_burst_paints_what_a_full_read_shows() -> None:
    rows = [f"\x1b[3{i % 8}mline {i}\x1b[0m \x1b[1mbold\x1b[22m tail\r\n" for i in range(9000)]
    burst = "".join(rows) + "\x1b[44m$ \x1b[0m"
    mirror = ScreenMirror(50, 10)
    for i in range(0, len(burst), 4096):
        mirror.feed(burst[i : i + 4096])
    painted = replay(mirror.redraw(), 50, 10)
    full = plain_pyte(50, 10, [burst])
    assert painted.display == full.display
    assert all(painted.buffer[y] == full.buffer[y] for y in range(10))
    assert (painted.cursor.x, painted.cursor.y) == (full.cursor.x, full.cursor.y)


def test_a_mixed_stream_leaves_the_screen_pyte_would() -> None:
    """Seeded mixes of line-local floods and sequences that are not, looked at now and then."""
    pieces = [
        COLOURED,
        "plain %d\r\n",
        "\x1b[1;34mno reset %d\r\n",
        "\x1b[01;31m\x1b[Kgrep\x1b[m\x1b[K %d\r\n",
        "\x1b[%d;3H@",
        "\x1b[2J",
        "\x1b[?25l",
        "\x1b]0;title %d\x07",
        "\x1b[3A",
        "wide 漢字 %d\r\n",
    ]
    for seed in range(4):
        rng = random.Random(seed)
        mirror = ScreenMirror(60, 16)
        full = pyte.Screen(60, 16)
        stream = pyte.Stream(full)
        for _ in range(8):
            mostly = rng.choice(pieces[:4])
            text = "".join(
                (mostly if rng.random() < 0.9 else rng.choice(pieces)).replace("%d", str(n % 20))
                for n in range(rng.choice([10, 2000, 5000]))
            )
            step = rng.choice([100, 5000, 70_000])
            for i in range(0, len(text), step):
                mirror.feed(text[i : i + step])
            stream.feed(text)
            if rng.random() < 0.3:
                assert same_screen(mirror, full), seed
        assert same_screen(mirror, full), seed


def test_a_sequence_pyte_refuses_does_not_stop_the_mirror() -> None:
    mirror = ScreenMirror(20, 4)
    mirror.feed("\x1b[" + "9" * 5000 + "m")  # more digits than Python turns into an int
    mirror.feed("\r\nstill here")
    assert "still here" in mirror.redraw()
