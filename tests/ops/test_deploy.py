"""``scripts/deploy.sh HOST``: the application folder synced and nothing else touched, the
install, ``relayline migrate`` on the host's database, the units restarted and ``relayline
smoke`` against a live relay; the first failing step named, and no later step run.

The "host" is a folder: a fake ``ssh`` on PATH runs the remote command locally with bash (and
serves as rsync's remote shell, so the copy goes through rsync's real protocol), a fake
``systemctl`` records what it was asked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from relayline.testing import RelayServer, free_port
from tests.conftest import ADMIN_KEY

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "scripts" / "deploy.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("rsync") is None,
    reason="rsync is not installed (scripts/deploy_tools.sh installs it from Debian's packages)",
)

FAKE_SSH = """#!/usr/bin/env bash
# ssh [options] HOST COMMAND...: runs COMMAND here with bash, in $HOME, as ssh would remotely.
while [ $# -gt 0 ]; do
  case $1 in
    -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
echo "$1" >>"$HOME/ssh-hosts.log"
shift
cd "$HOME"
exec bash -c "$*"
"""

FAKE_SYSTEMCTL = """#!/usr/bin/env bash
echo "$*" >>"$HOME/systemctl.log"
"""

# Instead of pip: a relayline command that runs the copy on the host with this interpreter's
# dependencies, so migrate and smoke run the code that was synced.
FAST_INSTALL = f"""mkdir -p "$RELAYLINE_DEPLOY_VENV/bin"
cat >"$RELAYLINE_DEPLOY_VENV/bin/relayline" <<EOF
#!/bin/sh
PYTHONPATH="$RELAYLINE_DEPLOY_DIR" exec {sys.executable} -m relayline "\\$@"
EOF
chmod +x "$RELAYLINE_DEPLOY_VENV/bin/relayline" && echo "$PWD" >>"$HOME/install.log"
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@dataclass
class Host:
    root: Path  # the host's "/" and the ssh user's home
    bin: Path

    @property
    def app(self) -> Path:
        return self.root / "opt" / "relayline" / "app"

    @property
    def venv(self) -> Path:
        return self.root / "opt" / "relayline" / ".venv"

    @property
    def env_file(self) -> Path:
        return self.root / "etc" / "relayline" / "relay.env"

    @property
    def database(self) -> Path:
        return self.root / "var" / "lib" / "relayline" / "relayline.db"

    def log(self, name: str) -> list[str]:
        path = self.root / f"{name}.log"
        return path.read_text().splitlines() if path.exists() else []

    def env(self, relay_url: str, **overrides: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "RELAYLINE_DEPLOY_DIR": str(self.app),
            "RELAYLINE_DEPLOY_ENV_FILE": str(self.env_file),
            "RELAYLINE_DEPLOY_RUN_AS": "",
            "RELAYLINE_DEPLOY_SMOKE_URL": relay_url,
            "RELAYLINE_DEPLOY_SMOKE_TOKEN": ADMIN_KEY,
            "RELAYLINE_DEPLOY_SMOKE_WAIT_S": "0",
            "RELAYLINE_DEPLOY_INSTALL": FAST_INSTALL,
        }
        env.update(overrides)
        return {k: v for k, v in env.items() if v is not None}


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = Host(tmp_path / "host", tmp_path / "bin")
    h.bin.mkdir()
    _executable(h.bin / "ssh", FAKE_SSH)
    _executable(h.bin / "systemctl", FAKE_SYSTEMCTL)
    h.app.mkdir(parents=True)
    (h.app / "stale.py").write_text("left by an older release\n")
    (h.app.parent / "keep-me.txt").write_text("next to the application folder\n")
    (h.root / "keep-me-too.txt").write_text("at the host's root\n")
    h.database.parent.mkdir(parents=True)
    h.env_file.parent.mkdir(parents=True)
    h.env_file.write_text(
        f"# the relay's settings\nRELAYLINE_DATABASE_URL=sqlite:///{h.database}\n"
    )
    return h


async def deploy(env: dict[str, str], target: str = "relay-1") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(DEPLOY),
        target,
        env=env,
        cwd=str(ROOT),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 150)
    return proc.returncode or 0, out.decode(), err.decode()


def _tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _steps(out: str) -> list[str]:
    return [line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("==> ")]


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_deploy_syncs_installs_migrates_restarts_and_smokes(
    host: Host, relay: RelayServer
) -> None:
    # The default install: a virtualenv made on the host and pip install of the synced folder.
    env = host.env(relay.url, RELAYLINE_DEPLOY_INSTALL=None)  # type: ignore[arg-type]
    rc, out, err = await deploy(env, "deploy@relay-1")
    assert rc == 0, out + err
    assert _steps(out) == ["check", "connect", "sync", "install", "migrate", "restart", "smoke"]

    # Only the application arrived, and only inside its folder did anything go.
    app = host.app
    for shipped in (
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "relayline/cli.py",
        "relayline/web/static/vendor/vendor.js",
        "relayline/store/migrations/env.py",
        "scripts/deploy.sh",
        "deploy/systemd/relayline-relay.service",
        "web/package.json",
    ):
        assert (app / shipped).is_file(), shipped
    for left_out in ("tests", ".git", ".venv", "web/node_modules", "web/tests", "bench", "docs"):
        assert not (app / left_out).exists(), left_out
    assert not list(app.rglob("__pycache__"))
    assert not (app / "stale.py").exists()
    assert (host.app.parent / "keep-me.txt").read_text() == "next to the application folder\n"
    assert (host.root / "keep-me-too.txt").exists()
    assert set(host.log("ssh-hosts")) == {"deploy@relay-1", "relay-1"}  # rsync passes -l deploy

    # Installed into the venv beside it, from the synced copy.
    relayline = host.venv / "bin" / "relayline"
    assert relayline.is_file()
    installed = await asyncio.create_subprocess_exec(
        str(host.venv / "bin" / "python"),
        "-c",
        "import relayline, sys; sys.stdout.write(relayline.__file__)",
        stdout=asyncio.subprocess.PIPE,
        cwd=str(host.root),
    )
    where = (await installed.communicate())[0].decode()
    assert where.startswith(str(host.venv)), where

    # Migrated the database the env file names, restarted the units, smoked the relay.
    assert {"alembic_version", "tenants", "chats", "messages", "turns"} <= _tables(host.database)
    assert host.log("systemctl") == ["restart relayline-relay relayline-worker"]
    assert "subscribed to admin" in out
    assert f"deployed to deploy@relay-1:{host.app}" in out

    # A second deploy passes again, and takes away the first install's build leftovers (a
    # stale module in build/ would otherwise be packaged again by the next pip install).
    stale = app / "build" / "lib" / "relayline" / "removed_since.py"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("")
    rc, out, err = await deploy(host.env(relay.url, RELAYLINE_DEPLOY_UNITS="relayline-relay"))
    assert rc == 0, out + err
    assert not (app / "build").exists() and not list(app.glob("*.egg-info"))
    assert host.log("systemctl")[-1] == "restart relayline-relay"


async def test_a_failed_migration_stops_before_the_restart(host: Host, relay: RelayServer) -> None:
    host.env_file.write_text(
        f"RELAYLINE_DATABASE_URL=sqlite:///{host.root}/no/such/folder/relayline.db\n"
    )
    rc, out, err = await deploy(host.env(relay.url))
    assert rc != 0
    assert _steps(out) == ["check", "connect", "sync", "install", "migrate"], out + err
    assert "deploy: step 'migrate' failed" in err
    assert host.log("install")  # the steps before it ran
    assert host.log("systemctl") == []  # no unit was restarted


async def test_a_missing_env_file_fails_the_migration(host: Host, relay: RelayServer) -> None:
    host.env_file.unlink()
    rc, _, err = await deploy(host.env(relay.url))
    assert rc != 0 and "deploy: step 'migrate' failed" in err
    assert "relay.env is missing or unreadable" in err


async def test_a_relay_that_does_not_answer_fails_the_smoke_step(host: Host) -> None:
    rc, out, err = await deploy(host.env(f"http://127.0.0.1:{free_port()}"))
    assert rc != 0
    assert _steps(out) == ["check", "connect", "sync", "install", "migrate", "restart", "smoke"]
    assert "smoke step 'ready' failed" in err
    assert "deploy: step 'smoke' failed" in err
    assert host.log("systemctl") == ["restart relayline-relay relayline-worker"]
    assert "deployed to" not in out


async def test_a_refused_token_fails_the_smoke_step(host: Host, relay: RelayServer) -> None:
    env = host.env(relay.url, RELAYLINE_DEPLOY_SMOKE_TOKEN="not-a-key-" + "x" * 30)
    rc, out, err = await deploy(env)
    assert rc != 0 and "deploy: step 'smoke' failed" in err
    assert "4401" in err
    assert "not-a-key-" not in out + err  # the token is not echoed


async def test_a_failed_install_stops_before_the_migration(host: Host, relay: RelayServer) -> None:
    rc, out, err = await deploy(host.env(relay.url, RELAYLINE_DEPLOY_INSTALL="exit 3"))
    assert rc != 0 and "deploy: step 'install' failed" in err
    assert _steps(out)[-1] == "install"
    assert not host.database.exists() and host.log("systemctl") == []


async def test_an_unreachable_host_fails_at_connect(host: Host, relay: RelayServer) -> None:
    env = host.env(relay.url, RELAYLINE_DEPLOY_SSH="false")
    rc, _, err = await deploy(env)
    assert rc != 0 and "deploy: step 'connect' failed" in err
    assert (host.app / "stale.py").exists()  # nothing was synced


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"RELAYLINE_DEPLOY_DIR": "/opt"}, "too close to /"),
        ({"RELAYLINE_DEPLOY_DIR": "relative/app"}, "must be an absolute path"),
        ({"RELAYLINE_DEPLOY_DIR": "/opt/relayline/../etc"}, "must be a plain path"),
        ({"RELAYLINE_DEPLOY_VENV": "{app}/.venv"}, "may not lie inside RELAYLINE_DEPLOY_DIR"),
        ({"RELAYLINE_DEPLOY_SMOKE_TOKEN": ""}, "RELAYLINE_DEPLOY_SMOKE_TOKEN is not set"),
        ({"RELAYLINE_DEPLOY_SMOKE_WAIT_S": "soon"}, "whole number of seconds"),
    ],
)
async def test_unsafe_or_missing_settings_fail_before_anything_runs(
    host: Host, overrides: dict[str, str], why: str
) -> None:
    overrides = {k: v.format(app=host.app) for k, v in overrides.items()}
    rc, _, err = await deploy(host.env("http://127.0.0.1:1", **overrides))
    assert rc != 0 and why in err
    assert "deploy: step 'check' failed" in err
    assert host.log("ssh-hosts") == []  # the host was never contacted


async def test_a_host_argument_is_required(host: Host) -> None:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(DEPLOY),
        env=host.env("http://127.0.0.1:1"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"usage: scripts/deploy.sh [user@]HOST" in err
