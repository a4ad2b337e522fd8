"""The screen of a terminal as a viewer would see it now, kept with ``pyte`` and redrawn as ANSI.

Every byte of output is fed here before it is sent, so :meth:`ScreenMirror.redraw` always
describes the screen as it is after everything sent so far: a viewer that attaches (or lost
events) gets that redraw first, then live output, and sees what the others see.

pyte costs about a CPU second per MiB, which would cap a flooding program at that speed. Two
things keep that off the output path. Text is fed in batches (:meth:`ScreenMirror.feed` only
keeps it; it is read into pyte past :data:`BATCH_CHARS`, and before a redraw or a resize). And
a long run of plain lines (no escape sequence, no character-set shift) only scrolls: when the
run holds more lines than the screen has rows twice over, everything before its last rows
lines scrolls off whatever it drew and leaves the cursor at the start of the bottom row, so the
mirror puts the cursor there and feeds pyte only that tail. Both give the same screen as
feeding every byte as it comes (``tests/worker/test_terminal_screen.py`` compares them).

The redraw resets attributes, clears the screen, writes every row's cells with their colours
and attributes (SGR), restores the modes a keyboard depends on (application cursor keys,
bracketed paste), the cursor's position and its visibility. Scrollback is not kept: a redraw is
the visible screen only.
"""

from __future__ import annotations

import re

import pyte
from pyte import graphics, modes
from pyte.screens import Char

_CSI = "\x1b["
_FG = {name: code for code, name in {**graphics.FG_ANSI, **graphics.FG_AIXTERM}.items()}
_BG = {name: code for code, name in {**graphics.BG_ANSI, **graphics.BG_AIXTERM}.items()}
# pyte keeps private modes shifted left by 5 bits.
_PRIVATE_MODES = {1: "application cursor keys", 2004: "bracketed paste"}
_CURSOR_VISIBLE = 25 << 5
# Text that only draws, moves within a line (BS, HT) or moves down (CR LF): its effects are
# gone once scrolled off. Escape sequences, C1 controls and SO/SI (charset shifts) persist.
_PLAIN_RUN = re.compile(r"[^\x00-\x06\x0b-\x0c\x0e-\x1f\x7f-\x9f]{4096,}")
# Fed normally at the start of a run: the end of an escape sequence that its ESC opened.
_SEQUENCE_ROOM = 256
BATCH_CHARS = 256 * 1024


def _colour(value: str, named: dict[str, int], extended: int) -> str:
    code = named.get(value)
    if code is not None:
        return str(code)
    if len(value) == 6:
        try:
            r, g, b = int(value[:2], 16), int(value[2:4], 16), int(value[4:], 16)
        except ValueError:
            return str(named["default"])
        return f"{extended};2;{r};{g};{b}"
    return str(named["default"])


def _sgr(char: Char) -> str:
    parts = ["0"]
    if char.bold:
        parts.append("1")
    if char.italics:
        parts.append("3")
    if char.underscore:
        parts.append("4")
    if char.blink:
        parts.append("5")
    if char.reverse:
        parts.append("7")
    if char.strikethrough:
        parts.append("9")
    if char.fg != "default":
        parts.append(_colour(char.fg, _FG, 38))
    if char.bg != "default":
        parts.append(_colour(char.bg, _BG, 48))
    return f"{_CSI}{';'.join(parts)}m"


class ScreenMirror:
    """A ``cols`` by ``rows`` screen fed with a terminal's output."""

    def __init__(self, cols: int, rows: int) -> None:
        self._screen = pyte.Screen(cols, rows)
        self.stream = pyte.Stream(self._screen)
        self._unfed: list[str] = []
        self._unfed_chars = 0

    @property
    def screen(self) -> pyte.Screen:
        """The pyte screen, with everything fed so far read into it."""
        self._catch_up()
        return self._screen

    def feed(self, text: str) -> None:
        self._unfed.append(text)
        self._unfed_chars += len(text)
        if self._unfed_chars > BATCH_CHARS:
            self._catch_up()

    def _catch_up(self) -> None:
        if not self._unfed:
            return
        text = "".join(self._unfed)
        self._unfed.clear()
        self._unfed_chars = 0
        position = 0
        for run in _PLAIN_RUN.finditer(text):
            start = run.start() + _SEQUENCE_ROOM
            self.stream.feed(text[position:start])
            position = start + self._scrolled_off(text, start, run.end())
        self.stream.feed(text[position:])

    def _scrolled_off(self, text: str, start: int, end: int) -> int:
        """How much of the plain ``text[start:end]`` can go unread because the rest of it
        scrolls it all off (see the module docstring): 0, or up to the start of a line, the
        cursor then put where the skipped text would have left it."""
        screen, stream = self._screen, self.stream
        rows = screen.lines
        if (
            end - start < 4 * rows
            or not stream._taking_plain_text  # in the middle of an escape sequence
            or screen.margins is not None  # a scroll region: rows outside it stay
            or modes.LNM in screen.mode  # LF would also return the carriage
        ):
            return 0
        cut = end
        for _ in range(rows + 1):
            cut = text.rfind("\r\n", start, cut)
            if cut < 0:
                return 0
        cut += 2  # after the CR LF: the start of a line
        if text.count("\n", start, cut) < rows:
            return 0
        screen.cursor.x = 0
        screen.cursor.y = rows - 1
        return cut - start

    def resize(self, cols: int, rows: int) -> None:
        """Resize as xterm does: fewer rows drop the empty ones below the cursor first, and
        only then rows from the top (pyte alone always drops from the top, which would lose
        the output of a shell whose prompt is still near the top)."""
        screen = self.screen  # caught up: what came before was laid out at the old size
        if rows < screen.lines:
            below_cursor = screen.lines - 1 - screen.cursor.y
            drop = min(screen.lines - rows, below_cursor)
            for y in range(screen.lines - drop, screen.lines):
                screen.buffer.pop(y, None)
            screen.lines -= drop
        screen.resize(lines=rows, columns=cols)
        screen.set_margins()

    def redraw(self) -> str:
        """ANSI text that paints the screen as it is now on an xterm of the same size."""
        screen = self.screen
        out = [f"{_CSI}0m{_CSI}H{_CSI}2J"]
        default = _sgr(screen.default_char)
        for y in range(screen.lines):
            line = screen.buffer[y]
            # Trailing blank cells in the default style are what the clear already painted.
            last = -1
            for x in sorted(line):
                char = line[x]
                if x < screen.columns and (char.data not in ("", " ") or _sgr(char) != default):
                    last = x
            if last < 0:
                continue
            out.append(f"{_CSI}{y + 1};1H")
            current = default
            for x in range(last + 1):
                char = line[x]
                if char.data == "":  # the second half of a wide character
                    continue
                style = _sgr(char)
                if style != current:
                    out.append(style)
                    current = style
                out.append(char.data)
            out.append(f"{_CSI}0m")
        for mode in _PRIVATE_MODES:
            out.append(f"{_CSI}?{mode}{'h' if (mode << 5) in screen.mode else 'l'}")
        cursor = screen.cursor
        out.append(f"{_CSI}{cursor.y + 1};{cursor.x + 1}H")
        out.append(f"{_CSI}?25{'h' if _CURSOR_VISIBLE in screen.mode else 'l'}")
        return "".join(out)
