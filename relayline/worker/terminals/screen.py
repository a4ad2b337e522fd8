"""The screen of a terminal as a viewer would see it now, kept with ``pyte`` and redrawn as ANSI.

Every text sent is fed here first (:meth:`ScreenMirror.feed`), so :meth:`ScreenMirror.redraw`
always describes the screen as it is after everything sent so far: a viewer that attaches (or
lost events) gets that redraw first, then live output, and sees what the others see.

pyte costs about a CPU second per MiB, which would cap a flooding program at that speed. Three
things keep it off the output path:

- Text is read into pyte lazily: :meth:`ScreenMirror.feed` only keeps it, until more than
  :data:`BATCH_CHARS` wait, or the screen is looked at (a redraw, a resize).
- A long run of lines whose effects end with the line (see :data:`_LINE_LOCAL`: text, BS, HT,
  CR, LF, and the sequences SGR, which sets colours and attributes, and EL, which erases in the
  line) only scrolls: when the run holds more lines than the screen has rows twice over,
  everything before its last rows lines scrolls off whatever it drew and leaves the cursor at
  the start of the bottom row. The mirror puts the cursor there, carries the pen (the colours
  and attributes the run's SGR sequences leave set) over, and reads only that tail.
- When a batch ends in such a run, its tail stays unread until the next batch (or the next
  look at the screen): a flood costs pyte nothing but the few sequences that set the pen.

All of it gives the same screen as feeding every byte as it comes
(``tests/worker/test_terminal_screen.py`` compares them, plain and coloured).

The redraw resets attributes, clears the screen, writes every row's cells with their colours
and attributes (SGR), restores the modes a keyboard depends on (application cursor keys,
bracketed paste), the cursor's position and its visibility. Scrollback is not kept: a redraw is
the visible screen only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyte
import structlog
from pyte import graphics, modes
from pyte.screens import Char

log = structlog.get_logger("relayline.worker.terminals")

_CSI = "\x1b["
_FG = {name: code for code, name in {**graphics.FG_ANSI, **graphics.FG_AIXTERM}.items()}
_BG = {name: code for code, name in {**graphics.BG_ANSI, **graphics.BG_AIXTERM}.items()}
# pyte keeps private modes shifted left by 5 bits.
_PRIVATE_MODES = {1: "application cursor keys", 2004: "bracketed paste"}
_CURSOR_VISIBLE = 25 << 5
# Text whose effects are gone once scrolled off: characters that draw, moves within a line
# (BS, HT, CR), LF (down), and the CSI sequences SGR (m: the pen, carried over when skipped)
# and EL (K: erases in the line under the cursor). Other escape sequences, C1 controls and
# SO/SI (charset shifts) persist or move the cursor up: they end a run.
_LINE_LOCAL = re.compile(r"(?>[^\x00-\x06\x0b\x0c\x0e-\x1f\x7f-\x9f]+|\x1b\[[0-9;]{0,32}[mK])+")
# The same test for a whole text at C speed (sre reads a character class slowly): no byte of a
# control that ends a run, no C1 control (U+0080..U+009F, 0xC2 0x80..0x9F in UTF-8), and no
# ESC that does not start SGR or EL.
_ENDS_RUN_BYTES = bytes(
    [*range(0x00, 0x07), 0x0B, 0x0C, *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F]
)
_C1_UTF8 = re.compile(rb"\xc2[\x80-\x9f]")
_OTHER_ESC = re.compile(r"\x1b(?!\[[0-9;]{0,32}[mK])")
_SGR = re.compile(r"\x1b\[([0-9;]{0,32})m")
_RESETS = ("\x1b[0m", "\x1b[m")  # SGR sequences that set the default pen, whatever came before
RUN_CHARS = 4096  # shorter runs are read as they are
# At the start of a run that is not in the middle of an escape sequence: how far to look for
# the end of the line the sequence's end is on.
_SEQUENCE_ROOM = 256
BATCH_CHARS = 256 * 1024
_PENS_MAX = 4096  # pens remembered (pen, SGR parameters) → pen


class _Stream(pyte.Stream):
    """pyte's stream, except that a sequence pyte fails on (``ESC [1;2;3g``: more parameters
    than the screen's method takes; a number of more than 4,300 digits) is dropped, as a
    terminal ignores what it does not understand, instead of ending the feed there."""

    _refused = False

    def feed(self, data: str) -> None:
        # pyte 0.8's Stream.feed, with the parser's exception caught.
        send = self._send_to_parser
        draw = self.listener.draw  # type: ignore[union-attr]
        match_text = self._text_pattern.match
        taking_plain_text = self._taking_plain_text
        length = len(data)
        offset = 0
        while offset < length:
            if taking_plain_text:
                match = match_text(data, offset)
                if match:
                    start, offset = match.span()
                    draw(data[start:offset])
                else:
                    taking_plain_text = False
            else:
                try:
                    taking_plain_text = bool(send(data[offset : offset + 1]))
                except Exception as exc:  # the parser was reset: go on after the sequence
                    taking_plain_text = True
                    if not self._refused:
                        self._refused = True
                        log.warning("terminal_screen_sequence_dropped", error=type(exc).__name__)
                offset += 1
        self._taking_plain_text = taking_plain_text


def _line_local_runs(text: str) -> Iterator[tuple[int, int]]:
    """Where the runs of line-local text (:data:`_LINE_LOCAL`) of ``text`` start and end."""
    raw = text.encode()
    if (
        len(raw.translate(None, _ENDS_RUN_BYTES)) == len(raw)
        and (text.isascii() or _C1_UTF8.search(raw) is None)
        and ("\x1b" not in text or _OTHER_ESC.search(text) is None)
    ):
        yield 0, len(text)  # all of it: a flood's usual batch
        return
    for run in _LINE_LOCAL.finditer(text):
        yield run.span()


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
        self.stream = _Stream(self._screen)
        self._unfed: list[str] = []
        self._unfed_chars = 0
        self._pens: dict[tuple[Char, str], Char] = {}

    @property
    def screen(self) -> pyte.Screen:
        """The pyte screen, with everything fed so far read into it."""
        self._catch_up(keep_tail=False)
        return self._screen

    def feed(self, text: str) -> None:
        self._unfed.append(text)
        self._unfed_chars += len(text)
        if self._unfed_chars > BATCH_CHARS:
            self._catch_up(keep_tail=True)

    def _catch_up(self, *, keep_tail: bool) -> None:
        """Read what waits into pyte, skipping what runs of line-local text scroll off
        (``keep_tail``: a tail that only such a run wrote may wait for the next batch)."""
        if not self._unfed:
            return
        text = "".join(self._unfed) if len(self._unfed) > 1 else self._unfed[0]
        self._unfed.clear()
        self._unfed_chars = 0
        position = 0
        for start, end in _line_local_runs(text):
            if end - start < RUN_CHARS:
                continue
            self._read(text[position:start])
            position = start
            if not self.stream._taking_plain_text:
                # The run starts inside an escape sequence (its ESC just before): read on to
                # the end of the line the sequence ends on.
                newline = text.find("\n", start, start + _SEQUENCE_ROOM)
                if newline < 0:
                    continue
                self._read(text[start : newline + 1])
                position = start = newline + 1
            position = self._skip_scrolled_off(text, start, end)
        rest = text[position:] if position else text
        if keep_tail and position and len(rest) <= BATCH_CHARS // 4:
            # A flood's tail: the next batch may scroll it off too.
            self._unfed.append(rest)
            self._unfed_chars = len(rest)
            return
        self._read(rest)

    def _read(self, text: str) -> None:
        if text:
            self.stream.feed(text)

    def _skip_scrolled_off(self, text: str, start: int, end: int) -> int:
        """Where reading the line-local ``text[start:end]`` may go on from: ``start``, or the
        start of a line whose predecessors the rest of the run scrolls off (see the module
        docstring), the cursor and the pen then put where the skipped text would have left
        them."""
        screen, stream = self._screen, self.stream
        rows = screen.lines
        if (
            end - start < 4 * rows
            or not stream._taking_plain_text  # in the middle of an escape sequence
            or screen.margins is not None  # a scroll region: rows outside it stay
            or modes.LNM in screen.mode  # LF would also return the carriage
        ):
            return start
        cut = end
        for _ in range(rows + 1):
            cut = text.rfind("\r\n", start, cut)
            if cut < 0:
                return start
        cut += 2  # after the CR LF: the start of a line
        line = start
        for _ in range(rows):  # at least rows lines before the cut (not counted beyond)
            line = text.find("\n", line, cut) + 1
            if not line:
                return start
        self._carry_pen(text, start, cut)
        screen.cursor.x = 0
        screen.cursor.y = rows - 1
        return cut

    def _carry_pen(self, text: str, start: int, end: int) -> None:
        """Set the pen as the SGR sequences of ``text[start:end]`` would have: those from
        the last reset on (pens already worked out are remembered)."""
        if text.find("\x1b", start, end) < 0:
            return  # no SGR at all: the pen stays as it is
        screen = self._screen
        since = max(text.rfind(reset, start, end) for reset in _RESETS)
        pens = self._pens
        for sgr in _SGR.finditer(text, since if since >= 0 else start, end):
            params = sgr.group(1)
            key = (screen.cursor.attrs, params)
            pen = pens.get(key)
            if pen is None:
                # As pyte reads the parameters: decimal, empty meaning 0, at most 9999.
                screen.select_graphic_rendition(
                    *(min(int(p or 0), 9999) for p in params.split(";"))
                )
                if len(pens) < _PENS_MAX:
                    pens[key] = screen.cursor.attrs
            else:
                screen.cursor.attrs = pen

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
