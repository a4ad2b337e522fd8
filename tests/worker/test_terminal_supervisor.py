"""The supervisor on its own: when its parent dies, with no terminal hang-up to tell it (no
PTY here), the parent-death signal alone makes it end its whole session and reap it."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relayline.worker.terminals.processes import session_members
from relayline.worker.terminals.session import supervisor_argv

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
]

STUBBORN = ("/bin/sh", "-c", "trap '' HUP TERM; (trap '' HUP TERM; sleep 300) & sleep 300 & wait")
# A parent that starts the supervisor (in a session of its own, its input and output a PTY
# this test holds open, so the terminal never hangs up), says its pid, then waits to be killed.
PARENT = """
import json, subprocess, sys, time
argv, fd = json.loads(sys.argv[1]), int(sys.argv[2])
argv[argv.index("PARENT")] = str(__import__("os").getpid())
child = subprocess.Popen(
    argv, stdin=fd, stdout=fd, stderr=fd, start_new_session=True, pass_fds=(fd,)
)
print(child.pid, flush=True)
time.sleep(60)
"""


def stat_of(pid: int) -> tuple[str, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[3])


def wait_until(check, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_a_dead_parent_ends_the_whole_session() -> None:
    master, slave = pty.openpty()
    argv = supervisor_argv(0.5, STUBBORN)
    argv[argv.index(str(os.getpid()))] = "PARENT"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, json.dumps(argv), str(slave)],
        stdout=subprocess.PIPE,
        pass_fds=(slave,),
        text=True,
    )
    sid = 0
    try:
        assert parent.stdout is not None
        sid = int(parent.stdout.readline())
        assert wait_until(lambda: len(session_members(sid)) >= 4, 10)  # supervisor, sh, 2 sleeps
        members = set(session_members(sid))
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        # SIGTERM from the kernel; the stubborn ones ignore SIGHUP and SIGTERM: SIGKILL after
        # the grace (plus the supervisor's one-second margin); every one reaped, none a zombie.
        assert wait_until(
            lambda: all(stat_of(p) is None or stat_of(p)[1] != sid for p in members), 6
        )
    finally:
        for pid in session_members(sid) if sid else ():  # only when the test failed
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
        if parent.stdout is not None:
            parent.stdout.close()
        os.close(master)
        os.close(slave)
