"""A share of one core for a process: a CPU cgroup of its own with a CFS quota.

For the benchmarks that compare N relay instances with one on a machine with fewer cores than
instances: each instance gets the same share (e.g. 0.3 of a core), so that N of them have N
times the CPU of one while the database, the workers and the load keep the rest. Needs root
and a writable cgroup hierarchy with the ``cpu`` controller (v1 ``/sys/fs/cgroup/cpu`` or v2
``cpu.max``); :func:`available` says whether this machine has one, and why not.

As a command, it holds the first process whose command line contains MATCH to SHARE of a core
for SECONDS (waiting up to 30 s for it to start), e.g. beside ``bench/turns.py --no-doc``:

    python bench/cpu_quota.py --share 0.3 --match "relayline serve" --seconds 60 &
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")
# The kernel's default period. A shorter one holds the process back more often for less long,
# and costs it CPU: a relay on SQLite held to 0.3 of a core over 10 ms periods spent 7.9 ms of
# CPU a turn, over 100 ms periods 4.5 ms, as much as without a quota (4.8 ms).
PERIOD_US = 100_000
SHARE_MIN, SHARE_MAX = 0.01, 64.0


def share_error(share: float) -> str | None:
    """None when ``share`` (of one core) can be a quota; otherwise what is wrong with it."""
    if not SHARE_MIN <= share <= SHARE_MAX:
        return f"share: between {SHARE_MIN:g} and {SHARE_MAX:g} cores"
    return None


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

    def __init__(
        self, share: float, name: str = "relayline-bench", period_us: int = PERIOD_US
    ) -> None:
        wrong = share_error(share)
        if wrong is not None:
            raise ValueError(wrong)
        if not 1_000 <= period_us <= 1_000_000:
            raise ValueError("period: between 1 and 1,000 ms")
        found = _root()
        if found is None:
            raise RuntimeError(available() or "no cpu cgroup")
        self.root, self.version = found
        self.share = share
        self.period_us = period_us
        self.name = name
        self.groups: list[Path] = []

    def add(self, pid: int) -> None:
        group = self.root / f"{self.name}-{pid}"
        group.mkdir(exist_ok=True)
        quota = max(1000, int(self.share * self.period_us))
        if self.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(self.period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {self.period_us}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Hold a running process to a share of a core.")
    parser.add_argument(
        "--share", type=float, required=True, help=f"of one core, {SHARE_MIN:g}..{SHARE_MAX:g}"
    )
    parser.add_argument("--period-ms", type=int, default=PERIOD_US // 1000, help="1..1000")
    parser.add_argument("--match", required=True, help="part of the process's command line")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long, at most 3600")
    args = parser.parse_args()
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds: between 0 and 3600")
    why = available()
    if why is not None:
        parser.error(why)
    try:
        quota = Quota(args.share, name="relayline-bench-cli", period_us=args.period_ms * 1000)
    except ValueError as exc:
        parser.error(str(exc))
    deadline = time.monotonic() + 30
    pids: list[str] = []
    while not pids and time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", args.match], capture_output=True, text=True)
        pids = [p for p in found.stdout.split() if int(p) not in (os.getpid(), os.getppid())]
        if not pids:
            time.sleep(0.05)
    if not pids:
        sys.exit(f"no process matching {args.match!r} within 30 s")
    try:
        quota.add(int(pids[0]))
        print(f"pid {pids[0]}: {args.share:g} of a core over {args.period_ms} ms", flush=True)
        time.sleep(args.seconds)
        print(f"held back {quota.throttled_s():.1f} s", flush=True)
    finally:
        quota.close()


if __name__ == "__main__":
    main()
