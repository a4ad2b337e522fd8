"""The shipped nginx site in front of a real relay: WebSockets upgrade, server-sent events
stream, the relay counts the client's address (not nginx's, not a forged ``X-Forwarded-For``)
against its limits, and nginx refuses a body the relay would. nginx is the one
scripts/deploy_tools.sh provides; only the listening addresses, the upstream's port and TLS
(left out) differ from deploy/nginx/relayline.conf."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from relayline.ops.smoke import smoke
from relayline.testing import RelayServer, free_port
from tests.conftest import ADMIN_KEY
from tests.fixtures import RelayFactory, new_tenant
from tests.ops.test_deploy_files import NGINX, NGINX_BIN, TEMP_PATHS

pytestmark = pytest.mark.skipif(
    not Path(NGINX_BIN).is_file(),
    reason="nginx is not installed (scripts/deploy_tools.sh unpacks it into .tools/)",
)

NGINX_ADDRESS = "127.0.0.2"  # the relay trusts 127.0.0.1, where nginx connects from


def site_for(relay_port: int, port: int) -> str:
    site = NGINX.read_text()
    site = site.replace("server 127.0.0.1:8080", f"server 127.0.0.1:{relay_port}")
    site = re.sub(r"\n\s*listen \[::\][^;]*;", "", site)
    site = re.sub(r"\n\s*ssl_certificate(_key)? [^;]*;", "", site)
    site = site.replace("listen 80;", f"listen {NGINX_ADDRESS}:{free_port()};")
    site = site.replace("listen 443 ssl http2;", f"listen {NGINX_ADDRESS}:{port};")
    assert f"{NGINX_ADDRESS}:{port}" in site and "ssl_certificate" not in site
    return site


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((NGINX_ADDRESS, port)) == 0


@pytest.fixture
def run_nginx(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(relay: RelayServer) -> str:
        port = free_port()
        (tmp_path / "site.conf").write_text(site_for(relay.port, port))
        (tmp_path / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\n"
            f"error_log {tmp_path}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n"
            + "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n" for kind in TEMP_PATHS)
            + f"  include {tmp_path}/site.conf;\n}}\n"
        )
        proc = subprocess.Popen(
            [NGINX_BIN, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "error.log").read_text())
            time.sleep(0.05)
        return f"http://{NGINX_ADDRESS}:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def proxied(
    start_relay: RelayFactory, run_nginx: object
) -> AsyncIterator[tuple[RelayServer, str]]:
    relay = await start_relay(trusted_proxies=["127.0.0.1/32"])
    yield relay, run_nginx(relay)  # type: ignore[operator]


def client_from(address: str, base_url: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=10)


async def test_a_websocket_opens_through_nginx(proxied: tuple[RelayServer, str]) -> None:
    _, url = proxied
    report = await smoke(url, ADMIN_KEY)
    assert [s["step"] for s in report.steps] == ["ready", "connect", "ping", "subscribe"]


async def test_server_sent_events_stream_through_nginx(proxied: tuple[RelayServer, str]) -> None:
    relay, url = proxied
    async with httpx.AsyncClient(base_url=relay.url) as direct:
        tenant = await new_tenant(relay, direct)
        chat = await tenant.chat()
        token = await tenant.session([chat])
        async with (
            client_from("127.0.0.5", url) as client,
            client.stream(
                "GET",
                "/v1/events",
                params={"topics": f"chat:{chat}"},
                headers={"Authorization": f"Bearer {token}"},
            ) as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            # The stream is open; an event published now must arrive while it stays open.
            await tenant.publish(f"chat:{chat}", [{"type": "custom.hello", "data": {"n": 1}}])
            async with asyncio.timeout(10):
                async for line in stream.aiter_lines():
                    if line.startswith("data:") and "custom.hello" in line:
                        assert json.loads(line[5:])["data"] == {"n": 1}
                        break


async def test_the_relay_limits_the_client_not_nginx_nor_a_forged_address(
    start_relay: RelayFactory, run_nginx: object
) -> None:
    relay = await start_relay(trusted_proxies=["127.0.0.1/32"], rate_limit_ip="4/minute")
    url = run_nginx(relay)  # type: ignore[operator]
    async with client_from("127.0.0.3", url) as client:
        # Each request claims another address: the relay must not believe the claims.
        for n in range(4):
            r = await client.get("/v1/chats", headers={"X-Forwarded-For": f"203.0.113.{n}"})
            assert r.status_code == 401, r.text
        r = await client.get("/v1/chats", headers={"X-Forwarded-For": "198.51.100.7"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    # Another client through the same nginx has its own budget: the relay did not count nginx.
    async with client_from("127.0.0.4", url) as other:
        assert (await other.get("/v1/chats")).status_code == 401


async def test_nginx_refuses_a_body_the_relay_would(proxied: tuple[RelayServer, str]) -> None:
    relay, url = proxied
    body = b"x" * (relay.settings.max_body_bytes + 1)
    async with client_from("127.0.0.6", url) as client:
        r = await client.post("/v1/chats", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 413
