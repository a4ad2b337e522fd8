"""Give running processes a shorter scheduler slice, for an experiment (Linux ≥ 6.12, x86-64).

    python bench/sched_slice.py --slice-us 100 --seconds 900 "relayline serve" "relayline worker" &
    .venv/bin/python bench/terminal.py --rounds 3 --wait-quiet 30

For ``--seconds``, every 0.2 s, each thread of every process whose command line contains one of
the given strings (and that this script has not seen yet) gets a fair-scheduler slice of
``--slice-us`` through ``sched_setattr`` with ``sched_runtime`` set; the policy stays
``SCHED_OTHER`` and the nice value 0. A shorter slice gives a task an earlier virtual deadline, so
that it preempts the running task sooner when it wakes. The processes the bench starts later are
found as they appear. Stops after ``--seconds`` or on SIGINT / SIGTERM, and prints how many
threads it changed, and the errors if any.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import struct
import time

SYS_SCHED_SETATTR = 314  # x86-64
SCHED_ATTR = "IIQiIQQQII"  # struct sched_attr, SCHED_ATTR_SIZE_VER1 (56 bytes)
SCHED_OTHER = 0


def set_slice(tid: int, slice_ns: int) -> int:
    """``sched_setattr(tid)`` with the given slice; 0, or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = struct.pack(SCHED_ATTR, 56, SCHED_OTHER, 0, 0, 0, slice_ns, 0, 0, 0, 0)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    if libc.syscall(SYS_SCHED_SETATTR, tid, buffer, 0) == 0:
        return 0
    return ctypes.get_errno()


def matching(patterns: list[str]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(p in command for p in patterns):
            pids.append(int(entry))
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("patterns", nargs="+")
    parser.add_argument("--slice-us", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=900.0)
    args = parser.parse_args()
    seen: set[tuple[int, int]] = set()
    errors: dict[int, int] = {}
    deadline = time.monotonic() + args.seconds
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stops as Ctrl+C does
    try:
        while time.monotonic() < deadline:
            for pid in matching(args.patterns):
                try:
                    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
                except OSError:
                    continue
                for tid in tids:
                    if (pid, tid) in seen:
                        continue
                    seen.add((pid, tid))
                    error = set_slice(tid, args.slice_us * 1000)
                    if error:
                        errors[error] = errors.get(error, 0) + 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    print(f"threads given a {args.slice_us} µs slice: {len(seen) - sum(errors.values())}")
    for error, count in errors.items():
        print(f"refused ({os.strerror(error)}): {count}")


if __name__ == "__main__":
    main()
