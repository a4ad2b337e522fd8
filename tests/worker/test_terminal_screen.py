"""The screen mirror's redraw: what a viewer that attaches late is shown."""

from __future__ import annotations

import pyte

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
