"""Programs bench/terminal.py runs in a PTY, under relayline's worker and under terminado alike.

    python bench/term_programs.py flood MB [plain|colour]
                                             # waits for a line of input, prints MB MiB of
                                             # 80-byte text lines (colour: two coloured runs
                                             # a line), then an end marker, and exits
    python bench/term_programs.py echo       # raw mode: every byte read is written back at
                                             # once (an editor's echo); ends on Ctrl-D

The flood waits for a byte so that the measurement starts when the client is ready to read:
output printed before a viewer subscribed would not be delivered to it.
"""

from __future__ import annotations

import os
import sys
import termios
import tty

END_MARKER = "__FLOOD_END__"
LINE = (
    "".join(chr(33 + (i % 94)) for i in range(79)) + "\n"
).encode()  # 80 bytes of printable ASCII a line
# 80 bytes too: a green run and a bold blue one, each reset, as `ls --color` or a log prints.
COLOUR_LINE = (
    "\x1b[32m" + LINE.decode()[:34] + "\x1b[0m \x1b[1;34m" + LINE.decode()[34:58] + "\x1b[0m\n"
).encode()
LINES = {"plain": LINE, "colour": COLOUR_LINE}


def flood(mib: float, style: str = "plain") -> None:
    os.read(0, 1)
    total = int(mib * 1024 * 1024)
    line = LINES[style]
    block = line * (65536 // len(line))
    sent = 0
    while sent < total:
        chunk = block[: total - sent]
        sent += os.write(1, chunk)
    os.write(1, f"\n{END_MARKER}\n".encode())


def echo() -> None:
    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        while True:
            data = os.read(0, 1024)
            if not data or b"\x04" in data:
                return
            os.write(1, data)
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "flood" and len(sys.argv) in (3, 4) and sys.argv[3:4] in ([], ["plain"], ["colour"]):
        flood(float(sys.argv[2]), sys.argv[3] if len(sys.argv) == 4 else "plain")
    elif mode == "echo":
        echo()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
