"""The processes of one terminal session, and signalling them (Linux ``/proc``).

A terminal's program runs in a session of its own (the PTY's), led by the supervisor. A shell
with job control puts every job in a process group of its own, so signalling only the leader's
group would miss them: these functions find every process whose *session* is the terminal's
and signal each of their groups. A process that calls ``setsid`` itself leaves the session and
escapes; containing that needs a cgroup or a container.

Zombies count as gone: they have ended and wait for their reaper (the supervisor reaps every
descendant of the session, being their child subreaper).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(entry: str) -> list[str] | None:
    try:
        text = (_PROC / entry / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    return text.rsplit(")", 1)[1].split()


def session_members(sid: int) -> dict[int, int]:
    """``pid → pgid`` of the live (not zombie) processes of session ``sid``."""
    members: dict[int, int] = {}
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        # After the name: state, ppid, pgrp, session.
        if fields is None or len(fields) < 4 or fields[0] in ("Z", "X"):
            continue
        if int(fields[3]) == sid:
            members[int(entry)] = int(fields[2])
    return members


def signal_session(sid: int, sig: int, *, spare: int | None = None) -> int:
    """Send ``sig`` to every process group of session ``sid`` (the leader's included, unless
    it is ``spare``'s group); return how many groups were signalled."""
    # Without /proc (not Linux) only the leader's group can be named.
    groups = set(session_members(sid).values()) if _PROC.is_dir() else {sid}
    groups.discard(0)
    if spare is not None:
        groups.discard(spare)
    sent = 0
    for pgid in groups:
        # ProcessLookupError: gone meanwhile. PermissionError: the id is someone else's now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
            sent += 1
    return sent


def kill_members(sid: int, *, spare: int | None = None) -> None:
    """SIGKILL every member of session ``sid`` one by one (a process that moved to a group
    of its own inside the session included), except ``spare``."""
    for pid in session_members(sid):
        if pid != spare:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
