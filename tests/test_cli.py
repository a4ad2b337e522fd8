"""The ``relayline`` command as an operator runs it: real processes, a clean environment."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import relayline

pytestmark = pytest.mark.slow

# Where the package lives, so the command works even from a virtualenv it is not installed in.
SOURCE_ROOT = str(Path(relayline.__file__).resolve().parents[1])
STRONG = "k" * 40
RUN_TIMEOUT_S = 60


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": SOURCE_ROOT,
        "RELAYLINE_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
    }
    env.update(settings)
    return env


def relayline_cmd(
    tmp_path: Path, *args: str, timeout: float = RUN_TIMEOUT_S, **settings: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayline", *args],
        env=clean_env(tmp_path, **settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fatal_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "fatal" in line]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- refusing to start ----------------------------------------------------------------------


def test_bad_value_exits_2_with_one_fatal_line(tmp_path: Path) -> None:
    result = relayline_cmd(tmp_path, "serve", RELAYLINE_MAX_BODY_BYTES="abc")

    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fatal:")
    assert "RELAYLINE_MAX_BODY_BYTES" in lines[0]
    assert "Traceback" not in result.stderr


def test_production_with_default_secrets_exits_2(tmp_path: Path) -> None:
    result = relayline_cmd(tmp_path, "serve", RELAYLINE_ENV="production")

    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("fatal:") and "RELAYLINE_ADMIN_KEY" in line


def test_dotenv_of_the_working_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RELAYLINE_LOG_LEVEL=verbose\n")
    result = relayline_cmd(tmp_path, "migrate")

    assert result.returncode == 2
    assert "RELAYLINE_LOG_LEVEL" in result.stderr


@pytest.mark.parametrize("args", [("serve", "--port", "1"), ("admin", "list-tenants")])
def test_unreachable_database_exits_1_promptly(tmp_path: Path, args: tuple[str, ...]) -> None:
    # The bound is the subprocess timeout: a hang fails the test instead of stalling the run.
    result = relayline_cmd(
        tmp_path, *args, RELAYLINE_DATABASE_URL="postgresql://postgres@127.0.0.1:1/x"
    )

    assert result.returncode == 1, result.stderr
    (line,) = fatal_lines(result.stderr)
    assert "RELAYLINE_DATABASE_URL" in line
    assert "Traceback" not in result.stderr


def test_silent_database_times_out(tmp_path: Path) -> None:
    # A peer that completes the TCP handshake and then says nothing (a wedged server, a
    # firewall that swallows packets): without a connect timeout asyncpg waits 60 s.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = relayline_cmd(
            tmp_path,
            "admin",
            "list-tenants",
            RELAYLINE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x",
            RELAYLINE_DB_CONNECT_TIMEOUT_S="1",
            timeout=30,
        )

    assert result.returncode == 1, result.stderr
    (line,) = fatal_lines(result.stderr)
    assert "RELAYLINE_DATABASE_URL" in line


def test_unwritable_log_file_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = relayline_cmd(tmp_path, "migrate", RELAYLINE_LOG_FILE=str(blocker / "relay.log"))

    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("fatal:") and "RELAYLINE_LOG_FILE" in line


# --- migrate and admin commands -------------------------------------------------------------


def test_migrate_then_admin_commands_print_json(tmp_path: Path) -> None:
    env = {"RELAYLINE_AUTO_MIGRATE": "false"}
    migrated = relayline_cmd(tmp_path, "migrate", **env)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated" in migrated.stderr

    created = relayline_cmd(tmp_path, "admin", "create-tenant", "Acme Inc", **env)
    assert created.returncode == 0, created.stderr
    tenant = json.loads(created.stdout)
    assert tenant["name"] == "Acme Inc" and tenant["id"]

    keyed = relayline_cmd(
        tmp_path, "admin", "create-key", tenant["id"], "--scopes", "chats,sessions", **env
    )
    assert keyed.returncode == 0, keyed.stderr
    key = json.loads(keyed.stdout)
    assert key["tenant_id"] == tenant["id"]
    assert key["scopes"] == ["chats", "sessions"]
    assert key["key"].startswith("rl_")
    assert key["key"] not in keyed.stderr  # shown once, on stdout, never logged

    listed = relayline_cmd(tmp_path, "admin", "list-tenants", **env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {"id": tenant["id"], "name": "Acme Inc", "disabled": False}
    ]


def test_admin_errors_are_one_fatal_line(tmp_path: Path) -> None:
    unknown = relayline_cmd(tmp_path, "admin", "create-key", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert unknown.returncode == 1
    (line,) = fatal_lines(unknown.stderr)
    assert "tenant not found" in line
    assert "Traceback" not in unknown.stderr

    scopes = relayline_cmd(tmp_path, "admin", "create-key", "x", "--scopes", "chats,root")
    assert scopes.returncode == 2
    assert fatal_lines(scopes.stderr) and "root" in scopes.stderr


# --- serve ----------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(tmp_path: Path, **settings: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``relayline serve`` on a free port, killed at exit if still running."""
    port = free_port()
    env = clean_env(tmp_path, RELAYLINE_ADMIN_KEY=STRONG, RELAYLINE_SECRET_KEY=STRONG, **settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relayline", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=RUN_TIMEOUT_S)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with serving(tmp_path) as running:
        yield running


def wait_until_serving(proc: subprocess.Popen[str], base: str, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("server did not answer /health in time")


def test_serve_answers_and_stops_cleanly_on_sigterm(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    proc, base = server
    wait_until_serving(proc, base)

    ready = httpx.get(f"{base}/health/ready", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    r = httpx.get(f"{base}/v1/admin/tenants", headers={"Authorization": f"Bearer {STRONG}"})
    assert r.status_code == 200
    assert r.headers["X-Request-ID"]
    assert "server" not in r.headers  # no banner

    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)

    assert proc.returncode == 0, stderr
    # The log queue was flushed: the last lines of the shutdown made it out.
    assert "relay_stopped" in stderr
    assert r.headers["X-Request-ID"] in stderr
    assert STRONG not in stderr


def test_serve_says_at_start_up_what_stays_per_process_with_several_instances(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, RELAYLINE_INSTANCES="3", RELAYLINE_LOG_FORMAT="json") as (proc, base):
        wait_until_serving(proc, base)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    warnings = [
        json.loads(line)["detail"]
        for line in stderr.splitlines()
        if line.startswith("{") and '"config_warning"' in line
    ]
    assert any("RELAYLINE_REDIS_URL is unset" in w for w in warnings), stderr
    assert any("SQLite cannot be shared" in w for w in warnings), stderr


# --- demo -----------------------------------------------------------------------------------


def test_demo_prints_an_admin_key_that_signs_in(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relayline", "demo", "--port", str(port), "--workspace", "ws"],
        env=clean_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:  # bounded by the test's timeout
            lines.append(line.strip())
            if "Press Ctrl+C" in line:
                break
        out = "\n".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert f"Chat:   {base}/#session=" in out
        assert f"Admin:  {base}/admin" in out
        key = next(ln for ln in lines if ln.startswith("admin key:")).split()[2]
        r = httpx.get(f"{base}/v1/admin/tenants", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        assert "Demo" in [t["name"] for t in r.json()["items"]]
        page = httpx.get(f"{base}/admin")
        assert page.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=RUN_TIMEOUT_S)


def test_demo_never_prints_an_admin_key_of_the_operators_own() -> None:
    from relayline.config import Settings
    from relayline.demo import banner

    own = Settings(_env_file=None, admin_key=STRONG)  # type: ignore[call-arg]
    text = banner("http://127.0.0.1:8080", "tok", own)
    assert STRONG not in text
    assert "admin key: the one set in RELAYLINE_ADMIN_KEY" in text
