"""Relays and workers with terminals for these tests, and what they inspect: the processes of
a terminal's session (Linux ``/proc``)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from relayline.testing import RelayServer, WsHarness
from tests.fixtures import RelayFactory, RunningWorker, Tenant, Workers, eventually, new_tenant

HAVE_PROC = Path("/proc/self/stat").exists()

# Grandchildren that ignore SIGHUP and SIGTERM, one in the background and one in the
# foreground, under a shell that ignores them too: only SIGKILL ends this session.
STUBBORN = '/bin/sh -c \'trap "" HUP TERM; (trap "" HUP TERM; sleep 300) & sleep 300 & wait\''
PROGRAMS = "; ".join(
    [
        "echo=/bin/echo hello-terminal",
        "cat=/bin/cat",
        # cat without the terminal's echo, which says when its echo is off.
        "quietcat=/bin/sh -c 'stty -echo && echo echo-off && exec cat'",
        "sh=/bin/sh",
        f"stubborn={STUBBORN}",
        "yes=/usr/bin/yes",
        "env=/usr/bin/env",
        "pwd=/bin/sh -c 'pwd; sleep 30'",
        "burst=/bin/sh -c 'sleep 0.5; seq 1 200000; sleep 30'",
    ]
)
GRACE_S = 0.5


def terminal_worker_settings(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "terminals": True,
        "terminal_programs": PROGRAMS,
        "terminal_grace_s": GRACE_S,
        "terminal_flush_ms": 5.0,
        "terminal_resize_debounce_ms": 10.0,
    }
    values.update(overrides)
    return values


@dataclass
class Setup:
    relay: RelayServer
    worker: RunningWorker
    tenant: Tenant

    async def open(self, program: str, *, cols: int = 80, rows: int = 24, **body: Any) -> str:
        r = await self.tenant.http.post(
            "/v1/terminals",
            json={"program": program, "cols": cols, "rows": rows, **body},
            headers=self.tenant.auth,
        )
        assert r.status_code == 201, r.text
        assert r.json()["topic"] == f"term:{r.json()['id']}"
        return str(r.json()["id"])

    def ws(self, token: str | None = None) -> WsHarness:
        return WsHarness(self.relay, token=token or self.tenant.key, auth="header")

    async def session_token(self, **body: Any) -> str:
        r = await self.tenant.http.post("/v1/sessions", json=body, headers=self.tenant.auth)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def sid_of(self, terminal_id: str) -> int:
        host = self.worker.connection.terminals
        assert host is not None
        return host.sessions[terminal_id].pid


async def start_setup(
    turn_relay: RelayFactory, workers: Workers, http_clients: list[httpx.AsyncClient], **relay: Any
) -> Setup:
    server = await turn_relay(**relay)
    worker = await workers.start(server, **terminal_worker_settings())
    client = httpx.AsyncClient(base_url=server.url, timeout=10)
    http_clients.append(client)
    tenant = await new_tenant(server, client)

    async def offered() -> bool:
        r = await client.get("/v1/terminals", headers=tenant.auth)
        return r.status_code == 200 and "echo" in r.json()["programs"]

    await eventually(offered)
    return Setup(server, worker, tenant)


async def output_until(
    ws: WsHarness, topic: str, needle: str, timeout: float = 10.0, *, times: int = 1
) -> str:
    """The live output ``term.output`` brought on ``topic`` until ``needle`` showed up
    ``times`` times (snapshots, which redraw the whole screen, are skipped). Counted in all of
    it: a needle may be split between two frames."""
    seen = ""
    async with asyncio.timeout(timeout):
        while seen.count(needle) < times:
            frame = await ws.expect("term.output", timeout, topic=topic)
            if not frame["data"].get("snapshot"):
                seen += frame["data"]["data"]
    return seen


async def snapshot_of(ws: WsHarness, topic: str, timeout: float = 10.0) -> dict[str, Any]:
    """The data of the next snapshot on ``topic``."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.expect("term.output", timeout, topic=topic)
            if frame["data"].get("snapshot"):
                data: dict[str, Any] = frame["data"]
                return data


# Processes


def stat_of(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, sid) of ``pid``, or None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def session_pids(sid: int) -> set[int]:
    """Every process of session ``sid``, zombies included."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = stat_of(int(entry))
            if stat is not None and stat[3] == sid:
                found.add(int(entry))
    return found


def remaining(pids: set[int], sid: int) -> set[int]:
    """Which of ``pids`` still exist in session ``sid``, running or as zombies."""
    left = set()
    for pid in pids:
        stat = stat_of(pid)
        if stat is not None and stat[3] == sid:
            left.add(pid)
    return left


def zombie_children(ppid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = stat_of(int(entry))
            if stat is not None and stat[0] == "Z" and stat[1] == ppid:
                found.add(int(entry))
    return found
