"""A worker that dies leaves no terminal process behind: stopped (SIGTERM), every session ends
within its grace; killed (SIGKILL), each session's supervisor ends the session itself (the
parent-death signal and the PTY's hangup). The worker runs as its own process here."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

import relayline
from relayline.testing import RelayServer
from tests.fixtures import KEY_ID, SECRET, RelayFactory, Tenant, eventually, new_tenant
from tests.terminals.helpers import (
    GRACE_S,
    HAVE_PROC,
    PROGRAMS,
    remaining,
    session_pids,
    stat_of,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not HAVE_PROC, reason="needs Linux /proc"),
]
SOURCE_ROOT = str(Path(relayline.__file__).resolve().parents[1])


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def spawn_worker(relay: RelayServer, workdir: Path) -> subprocess.Popen[bytes]:
    workspace = workdir / "workspace"
    workspace.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PYTHONPATH": SOURCE_ROOT,
        "RELAYLINE_RELAY_URL": relay.url,
        "RELAYLINE_WORKER_KEY_ID": KEY_ID,
        "RELAYLINE_WORKER_SECRET": SECRET,
        "RELAYLINE_WORKSPACE_ROOTS": str(workspace),
        "RELAYLINE_TERMINAL_PROGRAMS": PROGRAMS,
        "RELAYLINE_TERMINAL_GRACE_S": str(GRACE_S),
        "RELAYLINE_RECONNECT_BASE_S": "0.1",
        "RELAYLINE_LOG_FORMAT": "json",
    }
    log = (workdir / "worker.log").open("ab")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "relayline", "worker", "--terminals"],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def open_stubborn(relay: RelayServer, tenant: Tenant, count: int) -> list[str]:
    async def offered() -> bool:
        r = await tenant.http.get(f"{relay.url}/v1/terminals", headers=tenant.auth)
        return "stubborn" in r.json()["programs"]

    await eventually(offered, 20)
    ids = []
    for _ in range(count):
        r = await tenant.http.post(
            f"{relay.url}/v1/terminals",
            json={"program": "stubborn", "cols": 80, "rows": 24},
            headers=tenant.auth,
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def supervisors_of(worker_pid: int) -> list[int]:
    """The worker's children that lead a session: one per terminal."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = stat_of(int(entry))
            if stat is not None and stat[1] == worker_pid and stat[3] == int(entry):
                found.append(int(entry))
    return found


async def sessions_running(worker: subprocess.Popen[bytes], count: int) -> dict[int, set[int]]:
    """Each terminal's session id and its processes, once all are up (supervisor, shell and
    the two stubborn sleepers)."""
    await eventually(lambda: len(supervisors_of(worker.pid)) == count, 10)
    sids = supervisors_of(worker.pid)
    await eventually(lambda: all(len(session_pids(sid)) >= 4 for sid in sids), 10)
    return {sid: session_pids(sid) for sid in sids}


async def all_gone(sessions: dict[int, set[int]], timeout: float) -> None:
    await eventually(lambda: all(not remaining(p, sid) for sid, p in sessions.items()), timeout)


async def test_a_stopped_worker_ends_every_terminal(
    turn_relay: RelayFactory,
    worker_process: list[subprocess.Popen[bytes]],
    http_client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    relay = await turn_relay()
    tenant = await new_tenant(relay, http_client)
    worker = spawn_worker(relay, tmp_path)
    worker_process.append(worker)
    await open_stubborn(relay, tenant, 2)
    sessions = await sessions_running(worker, 2)
    worker.send_signal(signal.SIGTERM)
    # SIGHUP and SIGTERM are ignored in there: SIGKILL after the grace, then the worker exits.
    assert await asyncio.to_thread(worker.wait, 15) == 0
    await all_gone(sessions, 5)
    log = (tmp_path / "worker.log").read_text()
    assert log.count('"terminal_killed_after_grace"') == 2
    assert log.count('"reason": "shutdown"') == 2


async def test_a_killed_worker_leaves_no_terminal_process_behind(
    turn_relay: RelayFactory,
    worker_process: list[subprocess.Popen[bytes]],
    http_client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    relay = await turn_relay()
    tenant = await new_tenant(relay, http_client)
    worker = spawn_worker(relay, tmp_path)
    worker_process.append(worker)
    ids = await open_stubborn(relay, tenant, 2)
    sessions = await sessions_running(worker, 2)
    worker.send_signal(signal.SIGKILL)
    assert await asyncio.to_thread(worker.wait, 10) == -signal.SIGKILL
    # Each supervisor saw its parent die: SIGHUP and SIGTERM to its session, the grace
    # (plus its one-second margin), SIGKILL, every descendant reaped, then it ended too.
    await all_gone(sessions, GRACE_S + 5)
    # The relay says so once the worker has not come back in time (not waited for here).
    r = await http_client.get(f"{relay.url}/v1/terminals/{ids[0]}", headers=tenant.auth)
    assert r.json()["state"] == "detached"
