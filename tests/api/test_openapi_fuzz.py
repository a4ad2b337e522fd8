"""Property-based requests against a running ``relayline serve``, generated from its own OpenAPI
document: no request may cause a 5xx, and every documented response must match its schema."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

import relayline
from relayline.api.app import create_app
from relayline.config import Settings

pytestmark = pytest.mark.slow

SOURCE_ROOT = str(Path(relayline.__file__).resolve().parents[1])
ADMIN_KEY = "fuzz-admin-key-" + "a" * 32
GENEROUS = "1000000/minute"
# A stream that never ends on its own; its handshake is covered by the hub's tests.
STREAMING_PATHS = ("/v1/events",)
# 503s the API promises (with their code): this relay has no worker (for terminals or for
# completions).
DESIGNED_UNAVAILABLE = {
    ("POST", "/v1/terminals"): "no_terminal_worker",
    ("POST", "/v1/chat/completions"): "no_worker",
}


def no_server_error(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """``not_a_server_error``, less the 503s the API documents as its answer."""
    designed = DESIGNED_UNAVAILABLE.get((case.method.upper(), case.path))
    if designed is not None and response.status_code == 503:
        assert response.json()["error"]["code"] == designed
        return None
    return not_a_server_error(ctx, response, case)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveRelay:
    """The running server and real resources for path parameters, so that generated requests
    get past "not found" into the handlers (random ids would only ever meet a 404)."""

    def __init__(self, base_url: str, tenant_key: str, ids: dict[str, str]) -> None:
        self.base_url = base_url
        self.tenant_key = tenant_key
        self.ids = ids

    def headers_for(self, path: str) -> dict[str, str]:
        admin = path.startswith("/v1/admin") or path == "/metrics"
        return {"Authorization": f"Bearer {ADMIN_KEY if admin else self.tenant_key}"}

    def use_live_ids(self, case: schemathesis.Case) -> None:
        params = case.path_parameters
        if not params:
            return
        for name, generated in params.items():
            # Archiving and disabling are one-way for the run; they get resources of their own.
            if case.path.endswith("/archive"):
                params[name] = self.ids["archived_chat_id"]
            else:
                params[name] = self.ids.get(name, generated)


@pytest.fixture(scope="module")
def live_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRelay]:
    workdir = tmp_path_factory.mktemp("fuzz")
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PYTHONPATH": SOURCE_ROOT,
        "RELAYLINE_DATABASE_URL": f"sqlite:///{workdir / 'relay.db'}",
        "RELAYLINE_ADMIN_KEY": ADMIN_KEY,
        "RELAYLINE_SECRET_KEY": "fuzz-secret-key-" + "s" * 32,
        "RELAYLINE_LOG_LEVEL": "WARNING",
        **{
            f"RELAYLINE_RATE_LIMIT_{category}": GENEROUS
            for category in ("IP", "IDENTITY", "CHAT", "HEALTH")
        },
    }
    log = (workdir / "relay.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relayline", "serve", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(proc, base_url)
        yield _populate(base_url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _populate(base_url: str) -> LiveRelay:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base_url, headers=admin, timeout=10) as client:

        def created(response: httpx.Response) -> dict[str, Any]:
            assert response.status_code == 201, response.text
            body: dict[str, Any] = response.json()
            return body

        tenant = created(client.post("/v1/admin/tenants", json={"name": "fuzz"}))
        key = created(client.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={}))["key"]
        # The admin operations disable tenants and revoke keys: they act on a victim.
        victim = created(client.post("/v1/admin/tenants", json={"name": "victim"}))
        victim_key = created(client.post(f"/v1/admin/tenants/{victim['id']}/keys", json={}))
        as_tenant = {"Authorization": f"Bearer {key}"}
        chat = created(client.post("/v1/chats", json={"title": "fuzz"}, headers=as_tenant))
        archived = created(client.post("/v1/chats", json={"title": "old"}, headers=as_tenant))
        posted = client.post(
            f"/v1/chats/{chat['id']}/messages", json={"content": "hello"}, headers=as_tenant
        )
        assert posted.status_code == 202, posted.text
    ids = {
        "chat_id": chat["id"],
        "archived_chat_id": archived["id"],
        "tenant_id": victim["id"],
        "key_id": victim_key["id"],
    }
    return LiveRelay(base_url, key, ids)


def _wait_for(proc: subprocess.Popen[bytes], base_url: str, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"relayline serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("relayline serve did not answer /health in time")


def _openapi_document() -> dict[str, Any]:
    # Built in-process so that the operations are known when tests are collected; the fixture
    # checks that the running server publishes the same document.
    app = create_app(Settings(_env_file=None, admin_key=ADMIN_KEY))
    document: dict[str, Any] = app.http.openapi()
    return document


DOCUMENT = _openapi_document()
schema = schemathesis.openapi.from_dict(
    DOCUMENT, config=schemathesis.Config.from_dict({"seed": 20261121})
).exclude(path=list(STREAMING_PATHS))


def test_served_document_is_the_one_fuzzed(live_relay: LiveRelay) -> None:
    served = httpx.get(f"{live_relay.base_url}/openapi.json", timeout=10).json()
    assert served == DOCUMENT


@schema.parametrize()
@settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi_document(
    case: schemathesis.Case, live_relay: LiveRelay
) -> None:
    live_relay.use_live_ids(case)
    case.call_and_validate(
        base_url=live_relay.base_url,
        headers=live_relay.headers_for(case.path),
        checks=[no_server_error, response_schema_conformance],
        timeout=10,
    )
