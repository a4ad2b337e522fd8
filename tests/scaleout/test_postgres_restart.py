"""PostgreSQL restarts while an answer streams. The relay answers 503 ``unavailable`` while the
database is away (never a 500), reconnects by itself, and the turn ends answered once: what the
client rendered equals what the store holds.

The PostgreSQL here is a private server (``initdb`` + ``pg_ctl``, its own port, data directory
and socket directory, run as the ``postgres`` user), so restarting it disturbs nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from relayline.testing import WsHarness, free_port
from tests.conftest import SettingsFactory
from tests.faults.checker import Rendered, check
from tests.fixtures import KEY_ID, SECRET, Tenants, Workers, post, until_event

INITDB = shutil.which("initdb")
PG_CTL = shutil.which("pg_ctl")
RUN_AS = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(INITDB is None or PG_CTL is None, reason="initdb / pg_ctl not installed"),
]


class PrivatePostgres:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.data = workdir / "pgdata"
        self.sockets = workdir / "pgsock"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*RUN_AS, *args], capture_output=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.decode()[-500:]}")

    def init(self) -> None:
        for path in (self.data, self.sockets):
            path.mkdir(parents=True)
            if RUN_AS:
                shutil.chown(path, "postgres", "postgres")
        assert INITDB is not None
        self._run(INITDB, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        assert PG_CTL is not None
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        # -l: the server's output goes to a file, not to the pipe this process waits on.
        log = str(self.sockets / "postgres.log")
        self._run(PG_CTL, "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "30", "start")

    def stop(self) -> None:
        assert PG_CTL is not None
        self._run(PG_CTL, "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not under pytest's tmp_path: the postgres user must be able to reach it.
    workdir = Path(tempfile.mkdtemp(prefix="relayline-pg-"))
    os.chmod(workdir, 0o755)
    server = PrivatePostgres(workdir)
    try:
        try:
            server.init()
            server.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot start a private PostgreSQL here: {exc}")
        yield server
        with contextlib.suppress(RuntimeError):
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def test_a_postgres_restart_mid_answer_loses_nothing_the_client_shows(
    make_settings: SettingsFactory,
    private_postgres: PrivatePostgres,
    tenants: Tenants,
    workers: Workers,
) -> None:
    conn = await asyncpg.connect(private_postgres.url)
    await conn.close()
    from relayline.testing import RelayServer

    relay = RelayServer(
        make_settings(
            database_url=private_postgres.url,
            worker_keys=[f"{KEY_ID}:{SECRET}"],
            turn_lease_s=3.0,
        )
    )
    await relay.start()
    try:
        await workers.start(relay, local_model_delay_s=0.05, state_interval_s=0.5)
        tenant = await tenants.new(relay)
        chat = await tenant.chat()
        async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            turn_id = await post(tenant, chat, "tell me a long story about the sea and ships")
            await until_event(ws, "message.delta", turn_id=turn_id)
            stopped = time.monotonic()
            await asyncio.to_thread(private_postgres.stop)
            # Away: a write is refused with 503 (and a Retry-After), never a 500.
            r = await tenant.http.post(
                f"/v1/chats/{chat}/messages", json={"content": "now?"}, headers=tenant.auth
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable"
            assert r.headers["Retry-After"]
            await asyncio.sleep(1.0)
            await asyncio.to_thread(private_postgres.start)
            done = await until_event(ws, "message.completed", timeout=60, turn_id=turn_id)
            recovered = time.monotonic() - stopped
            assert done["data"]["finish_reason"] == "stop"
            rendered = Rendered()
            for frame in ws.frames:
                if frame.get("topic") == f"chat:{chat}" and isinstance(frame.get("data"), dict):
                    rendered.take(frame["type"], frame["data"])
        verdict = await check(relay.app.http.state.relay.db, chat, rendered)
        assert verdict.ok, verdict
        assert verdict.stored == 2
        assert recovered < 60
        # And it serves writes again.
        r = await tenant.http.post(
            f"/v1/chats/{chat}/messages", json={"content": "back?"}, headers=tenant.auth
        )
        assert r.status_code == 202, r.text
    finally:
        await relay.stop()
