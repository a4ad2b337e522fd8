"""Where a machine's CPU went, per process, from a system-wide ``perf record -a -g``: how idle
the CPUs were second by second, and for each process asked about, which system call (or user
code) its samples were in and its innermost symbols. Used for the terminal floods of
docs/benchmarks.md (Terminals, "Less work per MiB in the worker").

    .venv/bin/python bench/terminal.py --rounds 1 --flood-mib 384 --keys 20 &
    sleep 6; perf record -a -g -F 499 -o all.data -- sleep 45      # as root
    perf script -i all.data -F pid,time,ip,sym,dso > all.stacks
    .venv/bin/python bench/perf_by_process.py all.stacks --pids 9175,9178   # pids from ps

Each sample of ``perf script`` is a line ``PID TIME:`` followed by its stack, innermost frame
first, one ``ADDRESS SYMBOL (DSO)`` a line. A sample's *call* is the kernel frame just above
``do_syscall_64`` (the system call it was in), an interrupt or fault entry, or ``user`` when no
kernel frame is on its stack. Pid 0 is the idle task.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from collections.abc import Iterator
from pathlib import Path

HEADER = re.compile(r"^\s*(?P<pid>\d+)\s+(?P<time>\d+\.\d+):\s*$")
# Entries that start a sample's kernel work other than a system call.
ENTRIES = frozenset(
    {
        "asm_exc_page_fault",
        "asm_sysvec_reschedule_ipi",
        "asm_sysvec_apic_timer_interrupt",
        "asm_common_interrupt",
        "ret_from_fork_asm",
    }
)


class Sample:
    __slots__ = ("frames", "pid", "time")

    def __init__(self, pid: int, time: float) -> None:
        self.pid, self.time = pid, time
        self.frames: list[tuple[str, bool]] = []  # (symbol, in the kernel)

    def call(self) -> str:
        if not any(kernel for _, kernel in self.frames):
            return "user"
        for i, (symbol, _) in enumerate(self.frames):
            if symbol in ENTRIES:
                return symbol
            if symbol == "do_syscall_64" and i > 0:
                return self.frames[i - 1][0]
        return "kernel, other"


def samples(lines: Iterator[str]) -> Iterator[Sample]:
    current: Sample | None = None
    for line in lines:
        if not line.strip():
            continue
        header = HEADER.match(line)
        if header is not None:
            if current is not None:
                yield current
            current = Sample(int(header["pid"]), float(header["time"]))
        elif current is not None and line.startswith("\t"):
            parts = line.split(None, 2)
            if len(parts) >= 2:
                dso = parts[2] if len(parts) > 2 else ""
                current.frames.append((parts[1], "kernel" in dso))
    if current is not None:
        yield current


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stacks", type=Path, help="perf script -F pid,time,ip,sym,dso output")
    parser.add_argument("--pids", default="", help="processes to break down, comma-separated")
    parser.add_argument("--top", type=int, default=12, help="rows per breakdown")
    args = parser.parse_args()
    wanted = {int(p) for p in args.pids.split(",") if p}

    per_second: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    calls: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaves: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    start: float | None = None
    with args.stacks.open() as lines:
        for sample in samples(lines):
            start = sample.time if start is None else start
            per_second[int(sample.time - start)][sample.pid] += 1
            if sample.pid in wanted and sample.frames:
                calls[sample.pid][sample.call()] += 1
                symbol, kernel = sample.frames[0]
                leaves[sample.pid][("[k] " if kernel else "") + symbol] += 1
    if start is None:
        sys.exit(f"{args.stacks}: no samples")

    print("second  idle  busiest processes (samples)")
    for second in sorted(per_second):
        counts = per_second[second]
        busiest = " ".join(f"{pid}:{n}" for pid, n in counts.most_common(7) if pid)
        print(f"{second:6d}  {share(counts[0], sum(counts.values()))}  {busiest}")
    for pid in sorted(wanted):
        total = sum(calls[pid].values())
        print(f"\npid {pid}: {total} samples")
        if not total:
            continue
        print("  in:")
        for name, n in calls[pid].most_common(args.top):
            print(f"    {share(n, total)}  {name}")
        print("  innermost symbol:")
        for name, n in leaves[pid].most_common(args.top):
            print(f"    {share(n, total)}  {name}")


if __name__ == "__main__":
    main()
