"""Process-group inspection for the command tests (Linux ``/proc``)."""

from __future__ import annotations

import os
from pathlib import Path

HAVE_PROC = Path("/proc/self/stat").exists()


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run.

    Zombies count as dead: they are waiting for their reaper, and in a container whose PID 1
    does not reap orphans they would linger whatever the worker did.
    """
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members
