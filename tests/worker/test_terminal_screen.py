"""The screen mirror's redraw: what a viewer that attaches late is shown."""

from __future__ import annotations

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
