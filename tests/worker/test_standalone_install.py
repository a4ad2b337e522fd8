"""A host that runs only a worker installs none of the relay's server-side dependencies.

A fresh virtual environment gets ``pip install <this checkout>`` (no extras, not editable), and
its ``relayline worker`` answers a turn for a relay running here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relayline.testing import RelayServer
from tests.conftest import ADMIN_KEY, SettingsFactory, bearer

ROOT = Path(__file__).resolve().parents[2]
WORKER_KEY = ("solo", "s" * 40)
SERVER_ONLY = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "asyncpg", "redis", "limits", "jwt")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def worker_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("worker-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    # A copy of the sources, so the build leaves nothing in the checkout.
    src = tmp_path_factory.mktemp("worker-src")
    subprocess.run(
        "git ls-files -z --cached --others --exclude-standard relayline pyproject.toml README.md"
        f" | xargs -0 cp --parents -t {src}",
        shell=True,
        cwd=ROOT,
        check=True,
    )
    done = subprocess.run([*pip, "install", str(src)], capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    yield venv


def test_worker_install_has_no_server_dependencies(worker_venv: Path) -> None:
    python = str(worker_venv / "bin" / "python")
    probe = (
        "import importlib.util as u, sys; "
        "print(','.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    )
    found = subprocess.run(
        [python, "-c", probe, *SERVER_ONLY], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == ""
    # The relay's commands say what is missing instead of a traceback.
    serve = subprocess.run(
        [str(worker_venv / "bin" / "relayline"), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": str(worker_venv)},
    )
    assert serve.returncode == 2
    assert "pip install 'relayline[server]'" in serve.stderr
    assert "Traceback" not in serve.stderr


async def test_worker_from_its_own_install_answers_a_turn(
    worker_venv: Path, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    relay = RelayServer(make_settings(worker_keys=[f"{WORKER_KEY[0]}:{WORKER_KEY[1]}"]))
    await relay.start()
    log = tmp_path / "worker.log"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "RELAYLINE_RELAY_URL": relay.url,
        "RELAYLINE_WORKER_KEY_ID": WORKER_KEY[0],
        "RELAYLINE_WORKER_SECRET": WORKER_KEY[1],
        "RELAYLINE_LOCAL_MODEL_DELAY_S": "0",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(worker_venv / "bin" / "relayline"), "worker"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
            admin = bearer(ADMIN_KEY)
            r = await http.post("/v1/admin/tenants", json={"name": "solo"}, headers=admin)
            r = await http.post(f"/v1/admin/tenants/{r.json()['id']}/keys", json={}, headers=admin)
            key = bearer(r.json()["key"])
            chat = (await http.post("/v1/chats", json={}, headers=key)).json()["id"]
            r = await http.post(f"/v1/chats/{chat}/messages", json={"content": "hi"}, headers=key)
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 60
            while True:
                items = (await http.get(f"/v1/chats/{chat}/messages", headers=key)).json()["items"]
                answers = [m for m in items if m["role"] == "assistant"]
                if answers and answers[0]["status"] == "complete":
                    break
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                await asyncio.sleep(0.1)
            assert answers[0]["content"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)
        await relay.stop()
