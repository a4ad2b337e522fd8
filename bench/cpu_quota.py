"""A share of one core for a process: a CPU cgroup of its own with a CFS quota.

For the benchmarks that compare N relay instances with one on a machine with fewer cores than
instances: each instance gets the same share (e.g. 0.3 of a core), so that N of them have N
times the CPU of one while the database, the workers and the load keep the rest. Needs root
and a writable cgroup hierarchy with the ``cpu`` controller (v1 ``/sys/fs/cgroup/cpu`` or v2
``cpu.max``); :func:`available` says whether this machine has one, and why not.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")
# The kernel's default period. A shorter one holds the process back more often for less long,
# and costs it CPU: a relay on SQLite held to 0.3 of a core over 10 ms periods spent 7.9 ms of
# CPU a turn, over 100 ms periods 4.5 ms, as much as without a quota (4.8 ms).
PERIOD_US = 100_000


def _root() -> tuple[Path, int] | None:
    if (V1 / "cpu.cfs_quota_us").exists():
        return V1, 1
    controllers = V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return V2, 2
    return None


def available() -> str | None:
    """None when :class:`Quota` can be used here; otherwise the reason."""
    found = _root()
    if found is None:
        return "no cgroup hierarchy with the cpu controller"
    root, _ = found
    if not os.access(root, os.W_OK):
        return f"{root} is not writable (run as root)"
    return None


class Quota:
    """``share`` of one core for each process :meth:`add`-ed, each in a group of its own;
    :meth:`close` removes the groups (their processes having exited, or been moved back)."""

    def __init__(self, share: float, name: str = "relayline-bench") -> None:
        if not 0.01 <= share <= 64:
            raise ValueError("share: between 0.01 and 64 cores")
        found = _root()
        if found is None:
            raise RuntimeError(available() or "no cpu cgroup")
        self.root, self.version = found
        self.share = share
        self.name = name
        self.groups: list[Path] = []

    def add(self, pid: int) -> None:
        group = self.root / f"{self.name}-{pid}"
        group.mkdir(exist_ok=True)
        quota = max(1000, int(self.share * PERIOD_US))
        if self.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        self.groups.append(group)
        # Every thread of the process, and whatever it starts later.
        (group / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        """Seconds the groups' processes were held back by their quota, summed."""
        total = 0.0
        for group in self.groups:
            with contextlib.suppress(OSError):
                for line in (group / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "throttled_time":  # v1: nanoseconds
                        total += int(value) / 1e9
                    elif key == "throttled_usec":  # v2
                        total += int(value) / 1e6
        return total

    def close(self) -> None:
        for group in self.groups:
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (self.root / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                group.rmdir()
        self.groups.clear()
