from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from procgroup_helpers import HAVE_PROC, live_group_members

from relayline.worker.tools.builtins import builtin_registry
from relayline.worker.tools.process import run_shell
from relayline.worker.tools.registry import ToolContext, ToolError
from relayline.worker.tools.sandbox import SandboxLimits, Workspace

pytestmark = pytest.mark.skipif(not HAVE_PROC, reason="needs Linux /proc")


async def approve(name: str, arguments: dict[str, Any]) -> bool:
    return True


CTX = ToolContext(request_approval=approve)


async def run(root: Path, command: str, limits: SandboxLimits | None = None, **kw: Any) -> Any:
    registry = builtin_registry([root], limits)
    return await registry.execute("run_command", json.dumps({"command": command, **kw}), CTX)


async def test_output_and_exit_code(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    ok = await run(tmp_path, "echo hello; echo oops >&2; pwd", cwd="sub")
    assert ok.status == "ok"
    assert ok.content.splitlines() == [
        "hello",
        "oops",
        str((tmp_path / "sub").resolve()),
        "[exit code 0]",
    ]
    failed = await run(tmp_path, "exit 3")
    assert failed.status == "error" and failed.content == "[exit code 3]"


async def test_stdin_is_closed(tmp_path: Path) -> None:
    # Under pytest fd 0 is already /dev/null; make it a pipe that never reaches EOF, so a
    # command that inherited the worker's stdin would block in ``cat`` until the timeout.
    saved = os.dup(0)
    read_end, write_end = os.pipe()
    try:
        os.dup2(read_end, 0)
        limits = SandboxLimits(command_timeout_s=10, kill_grace_s=0.5)
        result = await run(tmp_path, "cat; echo done", limits)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert result.status == "ok"
    assert result.content.splitlines() == ["done", "[exit code 0]"]


async def test_environment_carries_no_worker_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAYLINE_WORKER_SECRET", "hunter2")
    result = await run(tmp_path, "env")
    assert "hunter2" not in result.content
    assert "PATH=" in result.content


async def test_ignoring_sigterm_still_dies_within_timeout_plus_grace(tmp_path: Path) -> None:
    limits = SandboxLimits(command_timeout_s=0.5, kill_grace_s=0.5)
    started = time.monotonic()
    outcome = await run_shell(
        "echo $$; trap '' TERM; sleep 30",
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        timeout_s=limits.command_timeout_s,
        kill_grace_s=limits.kill_grace_s,
        max_output_bytes=1000,
    )
    elapsed = time.monotonic() - started
    assert outcome.timed_out and outcome.exit_code is None
    assert int(outcome.output.split()[0]) == outcome.pgid
    # Only the time shows the group was killed rather than left to finish ``sleep 30``.
    assert 0.9 <= elapsed < 15
    assert live_group_members(outcome.pgid) == []


async def test_grandchildren_do_not_survive_a_timeout(tmp_path: Path) -> None:
    outcome = await run_shell(
        "sleep 30 & sleep 30 & echo $$; wait",
        cwd=tmp_path,
        env={},
        timeout_s=0.3,
        kill_grace_s=0.3,
        max_output_bytes=1000,
    )
    assert outcome.timed_out
    assert live_group_members(outcome.pgid) == []


async def test_background_jobs_do_not_survive_a_normal_exit(tmp_path: Path) -> None:
    outcome = await run_shell(
        "sleep 30 >/dev/null 2>&1 & echo started",
        cwd=tmp_path,
        env={},
        timeout_s=5,
        kill_grace_s=0.5,
        max_output_bytes=1000,
    )
    assert outcome.exit_code == 0 and outcome.output == b"started\n"
    assert live_group_members(outcome.pgid) == []


async def test_output_cap_stops_the_command(tmp_path: Path) -> None:
    limits = SandboxLimits(max_output_bytes=1000, command_timeout_s=10, kill_grace_s=0.5)
    # Stopped by the cap, not the timeout: a timed-out run would carry the timeout footer.
    result = await run(tmp_path, "yes", limits)
    body, footer = result.content.rsplit("\n", 1)
    assert len(body.encode()) <= 1000
    assert footer == "[output truncated at 1000 bytes; the command was stopped]"
    assert result.status == "error"


async def test_timeout_result_message(tmp_path: Path) -> None:
    result = await run(tmp_path, "sleep 5", SandboxLimits(command_timeout_s=0.2, kill_grace_s=0.2))
    assert result.content == "[timed out after 0.2s; the command was stopped]"


async def test_cancellation_kills_the_group_at_once(tmp_path: Path) -> None:
    task = asyncio.create_task(
        run_shell(
            "echo $$ > pid; trap '' TERM; sleep 30 & wait",
            cwd=tmp_path,
            env={},
            timeout_s=60,
            kill_grace_s=20,
            max_output_bytes=1000,
        )
    )
    pid_file = tmp_path / "pid"
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.01)
    pgid = int(pid_file.read_text())
    assert live_group_members(pgid)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # No grace period on cancel: with one, TERM-ignoring members would live on for 20s.
    assert time.monotonic() - started < 10
    assert live_group_members(pgid) == []


async def test_blocked_command_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="blocked command"):
        await run(tmp_path, ":(){ :|:& };:")


def test_workspace_default_env_is_minimal(tmp_path: Path) -> None:
    env = Workspace([tmp_path]).command_env
    assert set(env) <= {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "USER",
        "LOGNAME",
        "TERM",
    }


def running_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_cancellation_at_any_point_leaves_nothing_running(tmp_path: Path) -> None:
    steps = [0, 1, 2, 3, 4, 6, 8, 12, 16, 24]
    delays = [0.0, 0.005, 0.02, 0.05]
    for index, (step, delay) in enumerate([(s, 0.0) for s in steps] + [(0, d) for d in delays]):
        cwd = (tmp_path / f"run{index}").resolve()
        cwd.mkdir()
        task = asyncio.create_task(
            run_shell(
                "sleep 30 & sleep 30 & wait",
                cwd=cwd,
                env={},
                timeout_s=30,
                kill_grace_s=10,
                max_output_bytes=1000,
            )
        )
        for _ in range(step):
            await asyncio.sleep(0)
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert running_in(cwd) == [], (step, delay)
