"""``relayline smoke`` passes against a live relay and names the failed step otherwise."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from relayline.ops.smoke import SmokeFailed, smoke
from relayline.testing import RelayServer
from tests.conftest import ADMIN_KEY, PG_SERVER, SettingsFactory, _pg_admin
from tests.fixtures import RelayFactory


async def test_a_live_relay_passes_every_step(relay: RelayServer) -> None:
    report = await smoke(relay.url, ADMIN_KEY)
    assert [s["step"] for s in report.steps] == ["ready", "connect", "ping", "subscribe"]


async def test_a_bad_token_fails_at_connect(relay: RelayServer) -> None:
    with pytest.raises(SmokeFailed) as failed:
        await smoke(relay.url, "not-a-key-" + "x" * 30)
    assert failed.value.step == "connect" and "4401" in failed.value.detail


async def test_a_topic_the_token_may_not_read_fails_at_subscribe(
    start_relay: RelayFactory,
) -> None:
    relay = await start_relay()
    with pytest.raises(SmokeFailed) as failed:
        await smoke(relay.url, ADMIN_KEY, topic="nonsense topic")
    assert failed.value.step == "subscribe"


async def test_nothing_listening_fails_at_ready(tmp_path: Path) -> None:
    from relayline.testing import free_port

    with pytest.raises(SmokeFailed) as failed:
        await smoke(f"http://127.0.0.1:{free_port()}", ADMIN_KEY)
    assert failed.value.step == "ready"


async def test_a_relay_whose_store_is_down_fails_at_ready(make_settings: SettingsFactory) -> None:
    try:
        await _pg_admin("SELECT 1")
    except Exception:
        pytest.skip(f"PostgreSQL not reachable at {PG_SERVER}")
    name = f"relayline_smoke_{os.getpid()}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    relay = RelayServer(make_settings(database_url=f"{PG_SERVER.rsplit('/', 1)[0]}/{name}"))
    await relay.start()
    try:
        assert [s["step"] for s in (await smoke(relay.url, ADMIN_KEY)).steps][-1] == "subscribe"
        await _pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')  # the store goes away
        with pytest.raises(SmokeFailed) as failed:
            # A generous bound: this process also renders the relay's failing sweeps' tracebacks.
            await smoke(relay.url, ADMIN_KEY, timeout_s=60)
        assert failed.value.step == "ready" and "503" in failed.value.detail
    finally:
        await relay.stop()
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_command_exits_non_zero_naming_the_step(relay: RelayServer) -> None:
    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relayline",
            "smoke",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")},
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, err.decode()

    code, err = await run("--url", relay.url, "--token", ADMIN_KEY)
    assert code == 0, err
    code, err = await run("--url", relay.url, "--token", "wrong-" + "k" * 30)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("fatal: smoke step 'connect' failed")
