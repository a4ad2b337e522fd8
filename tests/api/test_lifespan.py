"""Start-up that fails half-way closes what it had opened and says why in one line; a
dependency that is merely unreachable does not fail it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from relayline import backends
from relayline.testing import RelayServer, free_port
from tests.conftest import SettingsFactory
from tests.scaleout.test_shared_instances import REDIS, _redis_up

pytestmark = pytest.mark.skipif(not _redis_up(), reason=f"Redis not reachable at {REDIS}")


def exploding_cap_store(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("cap store exploded")


async def relay_connections(client: aredis.Redis) -> int:
    clients = await client.client_list()
    return sum(1 for c in clients if c.get("cmd") != "client|list" and c.get("name") != "probe")


async def test_a_backend_failing_half_way_closes_what_was_opened(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = aredis.Redis.from_url(REDIS, client_name="probe")
    try:
        before_tasks = {t for t in asyncio.all_tasks() if not t.done()}
        before_conns = await relay_connections(probe)
        # The store and the bus (and its reader) are open by the time the cap store fails.
        monkeypatch.setattr(backends, "create_cap_store", exploding_cap_store)
        server = RelayServer(make_settings(redis_url=REDIS, redis_prefix="rltest:lifespan:"))
        with pytest.raises(RuntimeError, match="exited during start-up"):
            await server.start()
        assert server.app.startup_error == "RuntimeError: cap store exploded"
        await asyncio.sleep(0)  # let cancelled tasks finish unwinding
        left = {t for t in asyncio.all_tasks() if not t.done()} - before_tasks
        assert left == set(), left
        for _ in range(50):  # the server closes sockets; Redis notices within a moment
            if await relay_connections(probe) <= before_conns:
                break
            await asyncio.sleep(0.05)
        assert await relay_connections(probe) <= before_conns
    finally:
        await probe.aclose()


def test_serve_exits_non_zero_with_one_line_naming_the_cause(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from relayline import backends
        def explode(*args, **kwargs):
            raise RuntimeError("cap store exploded")
        backends.create_cap_store = explode
        from relayline.cli import main
        main(["serve", "--host", "127.0.0.1", "--port", "{free_port()}"])
        """
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "RELAYLINE_DATABASE_URL": f"sqlite:///{tmp_path}/relay.db",
        "RELAYLINE_REDIS_URL": REDIS,
        "RELAYLINE_REDIS_PREFIX": "rltest:lifespan-cli:",
        "RELAYLINE_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    fatal = [line for line in done.stderr.splitlines() if '"fatal"' in line]
    assert len(fatal) == 1 and "cap store exploded" in fatal[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


async def test_an_unreachable_redis_is_not_a_start_up_failure(
    make_settings: SettingsFactory,
) -> None:
    server = RelayServer(make_settings(redis_url="redis://127.0.0.1:1/0"))
    await server.start()
    try:
        import httpx

        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            r = await http.get("/health/ready")
        assert r.status_code == 503
        assert r.json()["checks"]["shared_state"] != "ok"
    finally:
        await server.stop()
