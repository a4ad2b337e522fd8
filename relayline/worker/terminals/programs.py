"""The allowlist of terminal programs (``RELAYLINE_TERMINAL_PROGRAMS``).

A browser chooses a *name*; only the operator writes command lines. The setting is a list of
``name=command line`` entries separated by ``;``, each command line split the way a POSIX
shell would (``shlex``), so quotes may hold spaces and semicolons::

    shell=/bin/bash -l; agent=/usr/local/bin/some-cli --flag "two words"; top=top -d 1

Names are 1 to 32 of ``a-z 0-9 _ -``; a name given twice, an empty command or an unclosed
quote is refused at start-up with a message naming the entry.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

NAME = re.compile(r"[a-z0-9_-]{1,32}")
SEPARATOR = ";"


class ProgramsError(ValueError):
    """``RELAYLINE_TERMINAL_PROGRAMS`` cannot be read; the message says which entry."""


def parse_programs(value: str) -> dict[str, tuple[str, ...]]:
    """``name → argv`` from the setting's text (empty text: no programs)."""
    lexer = shlex.shlex(value, posix=True, punctuation_chars=SEPARATOR)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError as exc:  # "No closing quotation" and the like
        raise ProgramsError(f"RELAYLINE_TERMINAL_PROGRAMS: {exc}") from None
    entries: list[list[str]] = [[]]
    for token in tokens:
        if token and set(token) == {SEPARATOR}:
            entries.extend([] for _ in token)
        else:
            entries[-1].append(token)
    programs: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        if not entry:
            continue
        name, sep, first = entry[0].partition("=")
        if not sep or not NAME.fullmatch(name):
            raise ProgramsError(
                f"RELAYLINE_TERMINAL_PROGRAMS: {entry[0]!r} is not name=command "
                "(a name is 1 to 32 of a-z 0-9 _ -)"
            )
        argv = ([first] if first else []) + entry[1:]
        if not argv:
            raise ProgramsError(f"RELAYLINE_TERMINAL_PROGRAMS: {name!r} has no command")
        if name in programs:
            raise ProgramsError(f"RELAYLINE_TERMINAL_PROGRAMS: {name!r} is given twice")
        programs[name] = tuple(argv)
    return programs


def describe(programs: Mapping[str, tuple[str, ...]]) -> str:
    """The allowlist as one line for a log (names and commands; the operator wrote them)."""
    return "; ".join(f"{name}={shlex.join(argv)}" for name, argv in programs.items())
