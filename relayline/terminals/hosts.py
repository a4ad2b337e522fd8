"""The connected workers that run terminals: their programs, their room, their links.

A worker announces ``terminals`` {programs, capacity, sessions} in its ``hello`` and in every
``state``; a worker that announces none (no ``--terminals``) is not a host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from relayline.turns.worker_link import WorkerLink

_PROGRAM = re.compile(r"[a-z0-9_-]{1,32}")
_MAX_PROGRAMS = 100


@dataclass(slots=True)
class TerminalHostLink:
    link: WorkerLink
    programs: frozenset[str] = frozenset()
    capacity: int = 0
    sessions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.link.closed and not self.link.draining


def parse_announcement(value: object) -> tuple[frozenset[str], int, list[dict[str, Any]]] | None:
    """``terminals`` of a hello or state frame, checked: programs, capacity, sessions."""
    if not isinstance(value, dict):
        return None
    programs = value.get("programs")
    capacity = value.get("capacity")
    sessions = value.get("sessions")
    if (
        not isinstance(programs, list)
        or not isinstance(capacity, int)
        or isinstance(capacity, bool)
        or capacity < 0
    ):
        return None
    names = frozenset(
        p for p in programs[:_MAX_PROGRAMS] if isinstance(p, str) and _PROGRAM.fullmatch(p)
    )
    listed = [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []
    return names, capacity, listed
