"""The servers ``bench/fanout.py`` compares: each started as its own process pinned to CPU 0,
listening on 127.0.0.1 only, and stopped again (SIGINT, then SIGKILL after a timeout)."""

from __future__ import annotations

import os
import resource
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
ADMIN_KEY = "bench-admin-" + secrets.token_hex(24)
SECRET_KEY = "bench-secret-" + secrets.token_hex(24)

# Limits meant for browsers on the open internet, lifted so one load generator on one address
# can open thousands of sockets and publish as fast as it likes. Everything on the delivery
# path (envelope, seq, per-connection outbox and its bound) stays as shipped.
RELAY_ENV = {
    "RELAYLINE_ENV": "development",
    "RELAYLINE_ADMIN_KEY": ADMIN_KEY,
    "RELAYLINE_SECRET_KEY": SECRET_KEY,
    "RELAYLINE_LOG_LEVEL": "WARNING",
    "RELAYLINE_RATE_LIMIT_IP": "1000000/second",
    "RELAYLINE_RATE_LIMIT_IDENTITY": "1000000/second",
    "RELAYLINE_RATE_LIMIT_CHAT": "1000000/second",
    "RELAYLINE_RATE_LIMIT_HEALTH": "1000000/second",
    "RELAYLINE_MAX_WS_PER_IDENTITY": "100000",
    "RELAYLINE_MAX_WS_PER_IP": "100000",
    "RELAYLINE_MAX_BODY_BYTES": str(4 * 1024 * 1024),
}


def pin_to_server_cpu() -> None:
    """preexec for servers: CPU 0 only, file descriptors up to the hard limit."""
    os.sched_setaffinity(0, {0})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Server:
    """A running server and what the load generator needs to drive it."""

    name: str
    dialect: str
    port: int
    proc: subprocess.Popen[bytes]
    token: str
    publish_token: str
    publish_path: str
    topic: str
    metrics_token: str = ""
    log: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def spec(self) -> dict[str, Any]:
        return {
            "dialect": self.dialect,
            "host": HOST,
            "port": self.port,
            "server_pid": self.proc.pid,
            "token": self.token,
            "publish_token": self.publish_token,
            "publish_path": self.publish_path,
            "topic": self.topic,
            "metrics_token": self.metrics_token,
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=pin_to_server_cpu,
        )


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0
) -> None:
    """Until ``url``/health answers 200; raises when ``proc`` exits or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} not healthy after {timeout_s:.0f} s; see {log}")


def spawn_relay(
    port: int, workdir: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """A healthy ``relayline serve`` process (a fresh SQLite database unless ``env`` names
    another) and its log."""
    db = workdir / f"relay-{port}.db"
    log = workdir / f"relay-{port}.log"
    full_env = {**RELAY_ENV, "RELAYLINE_DATABASE_URL": f"sqlite:///{db}", **(env or {})}
    cmd = [sys.executable, "-m", "relayline", "serve", "--host", HOST, "--port", str(port)]
    proc = _spawn(cmd, full_env, log)
    try:
        wait_healthy(f"http://{HOST}:{port}", proc, log)
    except BaseException:
        proc.kill()
        raise
    return proc, log


def provision(url: str) -> tuple[str, str, str]:
    """A tenant, its API key, a chat and a session token for it: (token, key, chat id)."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, timeout=10) as client:
        tenant = client.post("/v1/admin/tenants", json={"name": "bench"}, headers=admin)
        tenant.raise_for_status()
        tenant_id = tenant.json()["id"]
        made = client.post(f"/v1/admin/tenants/{tenant_id}/keys", json={}, headers=admin)
        made.raise_for_status()
        key = made.json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        chat = client.post("/v1/chats", json={"title": "fan-out"}, headers=auth)
        chat.raise_for_status()
        chat_id = chat.json()["id"]
        session = client.post(
            "/v1/sessions", json={"chat_ids": [chat_id], "ttl_s": 86_400}, headers=auth
        )
        session.raise_for_status()
        return session.json()["token"], key, chat_id


def start_relay(port: int, workdir: Path, env: dict[str, str] | None = None) -> Server:
    """``relayline serve`` with a fresh SQLite database, a tenant, a chat and a session token."""
    proc, log = spawn_relay(port, workdir, env)
    try:
        token, key, chat_id = provision(f"http://{HOST}:{port}")
    except BaseException:
        proc.kill()
        raise
    return Server(
        name="relayline",
        dialect="relay",
        port=port,
        proc=proc,
        token=token,
        publish_token=key,
        publish_path="/v1/publish",
        topic=f"chat:{chat_id}",
        metrics_token=ADMIN_KEY,
        log=log,
        extra={"env": env or {}},
    )


def start_node(port: int, workdir: Path) -> Server:
    token = secrets.token_hex(16)
    log = workdir / f"node-{port}.log"
    script = BENCH / "node" / "socketio_server.js"
    if not (BENCH / "node" / "node_modules" / "socket.io").is_dir():
        raise RuntimeError("run `npm ci` in bench/node first")
    proc = _spawn(["node", str(script), "--port", str(port), "--token", token], {}, log)
    wait_healthy(f"http://{HOST}:{port}", proc, log)
    return Server("node-socket.io", "sio", port, proc, token, token, "/publish", "room-1", log=log)


def start_pyio(port: int, workdir: Path) -> Server:
    token = secrets.token_hex(16)
    log = workdir / f"pyio-{port}.log"
    cmd = [sys.executable, str(BENCH / "pyio_server.py"), "--port", str(port), "--token", token]
    proc = _spawn(cmd, {}, log)
    wait_healthy(f"http://{HOST}:{port}", proc, log)
    return Server("python-socketio", "sio", port, proc, token, token, "/publish", "room-1", log=log)


def versions() -> dict[str, str]:
    """Versions of everything a figure depends on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("uvicorn", "uvloop", "httptools", "websockets", "fastapi", "python-socketio"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "-"
    try:
        found["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        pkg = BENCH / "node" / "node_modules" / "socket.io" / "package.json"
        import json

        found["socket.io"] = json.loads(pkg.read_text())["version"]
    except (OSError, subprocess.CalledProcessError, ValueError):
        found["node"] = found.get("node", "-")
    return found


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as fh:
        mem_kb = int(fh.readline().split()[1])
    return (
        f"{os.cpu_count()} x {model}, {mem_kb / 1024 / 1024:.0f} GiB RAM, "
        f"Linux {os.uname().release}"
    )


def gc_collections(port: int) -> dict[str, int]:
    """The relay's garbage collections so far, by generation (its ``/metrics``)."""
    r = httpx.get(
        f"http://{HOST}:{port}/metrics",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    r.raise_for_status()
    found = {}
    for line in r.text.splitlines():
        if line.startswith('python_gc_collections_total{generation="'):
            name, _, value = line.rpartition(" ")
            found[name.split('"')[1]] = int(float(value))
    return found
