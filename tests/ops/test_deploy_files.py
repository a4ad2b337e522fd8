"""The shipped deployment files: the systemd units parse (``systemd-analyze verify`` where it
is installed, and a structural check everywhere), run the ``relayline`` commands they name, stop
the way the relay and the worker drain; the nginx site passes WebSockets, does not buffer SSE and
agrees with the relay's settings; docs/deployment.md points at all of them."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from relayline.cli import build_parser
from relayline.config import Settings
from relayline.worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
NGINX = ROOT / "deploy" / "nginx" / "relayline.conf"
UNITS = ["relayline-relay.service", "relayline-worker.service", "relayline-backup.service"]
RELAYLINE = "/opt/relayline/.venv/bin/relayline"
# Each unit and the relayline command its ExecStart runs (DESIGN.md's CLI).
COMMANDS = {
    "relayline-relay.service": ["serve", "--host", "127.0.0.1", "--port", "8080"],
    "relayline-worker.service": ["worker"],
    "relayline-backup.service": ["backup", "--verify"],
}
HARDENING = {
    "NoNewPrivileges": "true",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text())
    return parser


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    # verify also checks that ExecStart's program exists: point it at a stand-in.
    program = tmp_path / "relayline"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    names = [*UNITS, "relayline-backup.timer"]
    for name in names:
        text = (SYSTEMD / name).read_text().replace(RELAYLINE, str(program))
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # A directive systemd does not understand is only a warning, but a warning all the same.
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_runs_a_relayline_command_hardened(name: str) -> None:
    service = unit(name)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == RELAYLINE
    assert argv[1:] == COMMANDS[name]
    build_parser().parse_args(argv[1:])  # the CLI takes it as written
    for key, value in HARDENING.items():
        assert service[key] == value, key
    assert service["User"] == "relayline"
    assert service["EnvironmentFile"].startswith("/etc/relayline/")
    assert service["ReadWritePaths"].split()


@pytest.mark.parametrize("name", ["relayline-relay.service", "relayline-worker.service"])
def test_daemons_restart_on_failure_and_stop_after_draining(name: str) -> None:
    service = unit(name)["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    # SIGTERM to the daemon alone, so it drains; SIGKILL to whatever is left in the cgroup
    # once it has exited (terminal programs, tool jobs) or once the stop times out.
    assert service["KillMode"] == "mixed"
    stop_s = seconds(service["TimeoutStopSec"])
    if name == "relayline-worker.service":
        assert stop_s > WorkerSettings().shutdown_grace_s
    else:
        assert stop_s > Settings().shutdown_drain_s


def test_the_relay_writes_where_backups_go_and_migrates_before_it_starts() -> None:
    relay = unit("relayline-relay.service")["Service"]
    backup = unit("relayline-backup.service")["Service"]
    assert relay["EnvironmentFile"] == backup["EnvironmentFile"] == "/etc/relayline/relay.env"
    assert set(backup["ReadWritePaths"].split()) <= set(relay["ReadWritePaths"].split())
    assert shlex.split(relay["ExecStartPre"]) == [RELAYLINE, "migrate"]
    assert unit("relayline-worker.service")["Service"]["EnvironmentFile"] == (
        "/etc/relayline/worker.env"
    )


# nginx


def nginx_blocks(text: str) -> list[tuple[str, list[str], object]]:
    """The configuration as (name, args, children) for blocks, (name, args, None) for
    directives; comments and quotes handled, nothing else of nginx's grammar."""
    tokens = re.findall(r"'[^']*'|\"[^\"]*\"|[{};]|[^\s{};]+", re.sub(r"#[^\n]*", "", text))

    def parse(at: int) -> tuple[list[tuple[str, list[str], object]], int]:
        items: list[tuple[str, list[str], object]] = []
        words: list[str] = []
        while at < len(tokens):
            token = tokens[at]
            at += 1
            if token == ";":
                items.append((words[0], words[1:], None))
                words = []
            elif token == "{":
                children, at = parse(at)
                items.append((words[0], words[1:], children))
                words = []
            elif token == "}":
                return items, at
            else:
                words.append(token.strip("'\""))
        return items, at

    return parse(0)[0]


def directives(block: object, name: str) -> list[list[str]]:
    assert isinstance(block, list)
    return [args for n, args, children in block if n == name and children is None]


def one(block: object, name: str) -> list[str]:
    found = directives(block, name)
    assert len(found) == 1, (name, found)
    return found[0]


def https_server() -> list[tuple[str, list[str], object]]:
    for name, _, children in nginx_blocks(NGINX.read_text()):
        if (
            name == "server"
            and isinstance(children, list)
            and any("443" in args[0] for args in directives(children, "listen"))
        ):
            return children
    raise AssertionError("no server listening on 443")


def location(server: list[tuple[str, list[str], object]], path: str) -> object:
    """The location nginx picks for ``path``: an exact match, else the first regex that
    matches, else the longest prefix."""
    locations = [(args, children) for name, args, children in server if name == "location"]
    for args, children in locations:
        if args[0] == "=" and args[1] == path:
            return children
    for args, children in locations:
        if args[0] == "~" and re.search(args[1], path):
            return children
    prefixes = [(a[0], c) for a, c in locations if len(a) == 1 and path.startswith(a[0])]
    return max(prefixes, key=lambda p: len(p[0]))[1]


def timeout_s(block: object, name: str) -> float:
    return seconds(one(block, name)[0])


def test_nginx_upgrades_the_websockets_and_keeps_them_past_the_heartbeat() -> None:
    server = https_server()
    settings = Settings()
    assert one(server, "proxy_http_version") == ["1.1"]
    assert ["Upgrade", "$http_upgrade"] in directives(server, "proxy_set_header")
    for path in ("/v1/ws", "/v1/worker/ws"):
        block = location(server, path)
        assert timeout_s(block, "proxy_read_timeout") > settings.heartbeat_timeout_s
        assert timeout_s(block, "proxy_send_timeout") > settings.heartbeat_timeout_s
    # The map sends "Connection: upgrade" for an upgrade and nothing otherwise.
    maps = [c for n, a, c in nginx_blocks(NGINX.read_text()) if n == "map"]
    assert maps and ["default", "upgrade"] in [[n, *a] for n, a, _ in maps[0]]  # type: ignore[union-attr]
    assert ["Connection", "$relayline_connection"] in directives(server, "proxy_set_header")
    assert location(server, "/v1/wsx") is location(server, "/")


def test_no_location_drops_the_servers_headers() -> None:
    # nginx inherits proxy_set_header only into a block that sets none of its own: one
    # Upgrade header set in a location would send WebSockets without Host, Connection and
    # X-Forwarded-For.
    server = https_server()
    for name, args, children in server:
        if name == "location":
            assert directives(children, "proxy_set_header") == [], args


def test_nginx_does_not_buffer_server_sent_events() -> None:
    server = https_server()
    sse = location(server, "/v1/events")
    assert sse is not location(server, "/")
    assert one(sse, "proxy_buffering") == ["off"]
    assert timeout_s(sse, "proxy_read_timeout") > Settings().heartbeat_interval_s
    assert timeout_s(sse, "proxy_read_timeout") > Settings().heartbeat_timeout_s


def test_nginx_agrees_with_the_relays_limits_and_client_address() -> None:
    server = https_server()
    settings = Settings()
    size = one(server, "client_max_body_size")[0]
    assert size.endswith("m") and int(size[:-1]) * 1024 * 1024 == settings.max_body_bytes
    assert timeout_s(server, "client_header_timeout") == settings.request_head_timeout_s
    # Appended, not replaced: the relay reads the list from the right, skipping its trusted
    # proxies (relayline/limits/client_ip.py), so the entry nginx adds is the client.
    assert ["X-Forwarded-For", "$proxy_add_x_forwarded_for"] in directives(
        server, "proxy_set_header"
    )
    upstream = next(c for n, a, c in nginx_blocks(NGINX.read_text()) if n == "upstream")
    assert one(upstream, "server")[0] == "127.0.0.1:8080"  # where the relay unit listens
    assert one(location(server, "/metrics"), "return") == ["404"]


TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
NGINX_BIN = shutil.which("nginx") or str(ROOT / ".tools" / "nginx" / "usr" / "sbin" / "nginx")


@pytest.mark.skipif(
    not Path(NGINX_BIN).is_file(),
    reason="nginx is not installed (scripts/deploy_tools.sh unpacks it into .tools/)",
)
def test_nginx_accepts_the_site(tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=chat.example.com", "-keyout", str(tmp_path / "key.pem"), "-out",
         str(tmp_path / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    live = "/etc/letsencrypt/live/chat.example.com"
    site = NGINX.read_text()
    site = site.replace(f"{live}/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace(f"{live}/privkey.pem", str(tmp_path / "key.pem"))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        "http {\n  access_log off;\n"
        + "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n" for kind in TEMP_PATHS)
        + f"  include {tmp_path}/site.conf;\n}}\n"
    )
    done = subprocess.run(
        [NGINX_BIN, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


# The documentation


def test_the_deployment_guide_points_at_the_shipped_files() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for path in (
        "deploy/systemd/relayline-relay.service",
        "deploy/systemd/relayline-worker.service",
        "deploy/systemd/relayline-backup.service",
        "deploy/nginx/relayline.conf",
        "scripts/deploy.sh",
    ):
        assert path in guide, path
    # One copy of each file: the guide quotes excerpts, never a whole unit or site.
    assert guide.count("[Service]") == 0
    assert guide.count("upstream relayline {") == 0
    # Every setting of the deploy script is explained.
    script = (ROOT / "scripts" / "deploy.sh").read_text()
    for name in sorted(set(re.findall(r"RELAYLINE_DEPLOY_[A-Z_]+", script))):
        assert name in guide, name
