"""Running one shell command so that nothing of it outlives its call.

The command runs as ``/bin/sh -c`` in a new session, so it leads its own process group and
every child and grandchild it starts shares that group. Stopping means signalling the *group*:
SIGTERM, a grace period, then SIGKILL for whatever ignored it. That happens on timeout, when
the output cap is hit, when the caller is cancelled (SIGKILL at once), and after a normal exit
(for background jobs left behind). A process that calls ``setsid`` itself escapes the group;
containing that needs a cgroup or container, outside this module's reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_READ_CHUNK = 64 * 1024
_GROUP_POLL_S = 0.02
_DRAIN_S = 1.0
# SIGKILL is acted on within milliseconds; this only bounds waiting on a wedged kernel.
_KILL_WAIT_S = 2.0
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What a command printed (stdout and stderr interleaved) and how it ended."""

    output: bytes
    exit_code: int | None
    timed_out: bool
    truncated: bool
    duration_s: float
    pgid: int


async def run_shell(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    kill_grace_s: float,
    max_output_bytes: int,
) -> CommandOutcome:
    """Run ``command`` with stdin closed; stop its whole process group on any way out."""
    started = time.monotonic()
    proc = await _spawn(command, cwd, env)
    pgid = proc.pid  # a session leader's pid is its process group id
    output = bytearray()
    truncated = timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout_s):
                truncated = await _read_capped(proc, output, max_output_bytes)
                if not truncated:
                    await proc.wait()
        except TimeoutError:
            timed_out = True
        if timed_out or truncated:
            await _stop_group(proc, pgid, kill_grace_s)
    except BaseException:
        # Cancelled (or worse): no grace period, the turn is over and so is its command.
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await asyncio.shield(_reap(proc, pgid))
        raise
    _signal_group(pgid, signal.SIGKILL)  # background jobs the command left behind
    await _reap(proc, pgid)
    return CommandOutcome(
        output=bytes(output),
        exit_code=None if (timed_out or truncated) else proc.returncode,
        timed_out=timed_out,
        truncated=truncated,
        duration_s=time.monotonic() - started,
        pgid=pgid,
    )


async def _spawn(command: str, cwd: Path, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    )
    try:
        # Shielded: the process runs before its pipes are connected, and a cancellation in
        # between would make asyncio kill only the shell, leaving its children running.
        return await asyncio.shield(spawn)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            proc = await spawn
            _signal_group(proc.pid, signal.SIGKILL)
            await _reap(proc, proc.pid)
        raise


async def _read_capped(proc: asyncio.subprocess.Process, into: bytearray, cap: int) -> bool:
    """Read until EOF or until more than ``cap`` bytes came; True if the cap was exceeded."""
    assert proc.stdout is not None
    while chunk := await proc.stdout.read(_READ_CHUNK):
        into += chunk
        if len(into) > cap:
            del into[cap:]
            return True
    return False


async def _stop_group(proc: asyncio.subprocess.Process, pgid: int, grace_s: float) -> None:
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace_s):
            await proc.wait()
    # The leader may be gone while children that ignore SIGTERM live on: wait for the group.
    await _wait_group_gone(pgid, deadline)
    _signal_group(pgid, signal.SIGKILL)


async def _wait_group_gone(pgid: int, deadline: float) -> None:
    # Nothing signals a group's end, hence the polling.
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        await asyncio.sleep(_GROUP_POLL_S)


async def _reap(proc: asyncio.subprocess.Process, pgid: int) -> None:
    """After SIGKILL: wait until the group is gone and drain the pipe so the transport
    closes (no ResourceWarning); when this returns, no member of the group runs."""
    await proc.wait()
    await _wait_group_gone(pgid, time.monotonic() + _KILL_WAIT_S)
    if proc.stdout is not None:
        # Only a process that escaped the group with setsid can hold the pipe open past this.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DRAIN_S):
                while await proc.stdout.read(_READ_CHUNK):
                    pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # ProcessLookupError: the group is gone. PermissionError: the id now belongs to someone
    # else's process group, which is not ours to signal.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether a member of the group still runs; zombies (already dead) do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not _PROC.is_dir():
        return True
    # Killed grandchildren are orphans whose reaper is PID 1; in a container whose init does
    # not reap, they stay zombies forever and keep the group id "alive" for killpg.
    return any(_running_member(entry, pgid) for entry in _PROC.iterdir() if entry.name.isdigit())


def _running_member(entry: Path, pgid: int) -> bool:
    try:
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X")
