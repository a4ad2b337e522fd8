"""Stateful runs over the REST API: schemathesis follows the OpenAPI document's links (create ->
read, update, delete) against a running ``relayline serve`` (on SQLite and on PostgreSQL) with
a worker that answers turns (the built-in model) and hosts terminals, so that generated
sequences reach real objects.

Every response must be no 5xx (bar the 503s the API documents), match its documented schema
and status codes, and come within ``CALL_TIMEOUT_S`` (no hang); an object just created must be
readable where a link says it is. Admin operations carry the admin key, the others a tenant's
key. Apart from the generated runs, each link is also walked once with plain valid requests,
so a link that names a field the API does not answer, or a value it does not take, fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import schemathesis
from hypothesis import Phase, settings
from hypothesis.errors import Flaky
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    response_schema_conformance,
    status_code_conformance,
)

import relayline
from relayline.api.app import create_app
from relayline.config import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SOURCE_ROOT = str(Path(relayline.__file__).resolve().parents[1])
ADMIN_KEY = "stateful-admin-key-" + "a" * 32
WORKER_KEY_ID = "stateful"
WORKER_SECRET = "stateful-worker-secret-" + "w" * 32
GENEROUS = "1000000/minute"
CALL_TIMEOUT_S = 10.0
# Scenarios (per database) and steps: about a minute in all on a busy two-core machine.
MAX_SCENARIOS = 60
MAX_STEPS = 10
# Runs that end early (see ``test_api_statefully``) are followed by more, this many at most,
# none started after this many seconds.
MAX_ROUNDS = 10
RUN_BUDGET_S = 25.0
# A stream that never ends on its own; its handshake is covered by the hub's tests.
STREAMING_PATHS = ("/v1/events",)
# 503s the API promises, with their code.
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


CHECKS = [
    no_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    ensure_resource_availability,
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _poll(what: str, ready: Callable[[], bool], procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args!r} exited with {proc.returncode} before {what}")
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"no {what} within 30 s")


class Relay:
    def __init__(self, base_url: str, tenant_key: str) -> None:
        self.base_url = base_url
        self.tenant_key = tenant_key

    def headers_for(self, path: str) -> dict[str, str]:
        admin = path.startswith("/v1/admin") or path == "/metrics"
        return {"Authorization": f"Bearer {ADMIN_KEY if admin else self.tenant_key}"}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def relay(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Relay]:
    workdir = tmp_path_factory.mktemp("stateful")
    database_url = (
        f"sqlite:///{workdir / 'relay.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PYTHONPATH": SOURCE_ROOT,
        "RELAYLINE_DATABASE_URL": database_url,
        "RELAYLINE_ADMIN_KEY": ADMIN_KEY,
        "RELAYLINE_SECRET_KEY": "stateful-secret-key-" + "s" * 32,
        "RELAYLINE_LOG_LEVEL": "WARNING",
        "RELAYLINE_WORKER_KEYS": f"{WORKER_KEY_ID}:{WORKER_SECRET}",
        **{
            f"RELAYLINE_RATE_LIMIT_{category}": GENEROUS
            for category in ("IP", "IDENTITY", "CHAT", "HEALTH", "PUBLIC_SESSIONS")
        },
    }
    worker_env = {
        **env,
        "RELAYLINE_RELAY_URL": base_url,
        "RELAYLINE_WORKER_KEY_ID": WORKER_KEY_ID,
        "RELAYLINE_WORKER_SECRET": WORKER_SECRET,
        "RELAYLINE_TERMINAL_PROGRAMS": "cat=/bin/cat",
        "RELAYLINE_WORKSPACE_ROOTS": str(workdir),
        "RELAYLINE_TERMINAL_GRACE_S": "0.5",
    }
    logs: list[IO[bytes]] = []
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str], environment: dict[str, str]) -> None:
        log = (workdir / f"{name}.log").open("wb")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "relayline", *args],
                env=environment,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    try:
        start("relay", ["serve", "--port", str(port)], env)
        _poll(
            "answer on /health",
            lambda: httpx.get(f"{base_url}/health", timeout=1).status_code == 200,
            procs,
        )
        start("worker", ["worker", "--terminals"], worker_env)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=base_url, headers=admin, timeout=10) as client:
            tenant = client.post("/v1/admin/tenants", json={"name": "stateful"})
            assert tenant.status_code == 201, tenant.text
            key = client.post(f"/v1/admin/tenants/{tenant.json()['id']}/keys", json={})
            assert key.status_code == 201, key.text
            as_tenant = {"Authorization": f"Bearer {key.json()['key']}"}

            def worker_offers_cat() -> bool:
                listing = client.get("/v1/terminals", headers=as_tenant)
                return "cat" in listing.json()["programs"]

            _poll("terminal worker", worker_offers_cat, procs)
        yield Relay(base_url, key.json()["key"])
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()


def _openapi_document() -> dict[str, Any]:
    app = create_app(Settings(_env_file=None, admin_key=ADMIN_KEY))
    document: dict[str, Any] = app.http.openapi()
    return document


DOCUMENT = _openapi_document()
LINK_TARGETS = {
    link["operationId"]
    for item in DOCUMENT["paths"].values()
    for operation in item.values()
    for response in operation["responses"].values()
    for link in response.get("links", {}).values()
}
# Only the document's own links: automatic inference would hide a link that is missing.
CONFIG = {"seed": 20261206, "phases": {"stateful": {"inference": {"algorithms": []}}}}
schema = schemathesis.openapi.from_dict(
    DOCUMENT, config=schemathesis.Config.from_dict(CONFIG)
).exclude(path=list(STREAMING_PATHS))


def test_served_document_is_the_one_run(relay: Relay) -> None:
    served = httpx.get(f"{relay.base_url}/openapi.json", timeout=10).json()
    assert served == DOCUMENT


def test_api_statefully(relay: Relay) -> None:
    answered: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    # What failed, as it first failed: the relay's state moves on between scenarios, so
    # Hypothesis's replay of a failing sequence may not meet the same answers again.
    failures: list[str] = []
    scenarios = [0]

    class ApiWorkflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            scenarios[0] += 1
            self.terminals: list[str] = []

        def teardown(self) -> None:
            # Ends what the scenario opened: the tenant's count of terminals is bounded.
            with httpx.Client(base_url=relay.base_url, timeout=CALL_TIMEOUT_S) as client:
                for terminal_id in self.terminals:
                    path = f"/v1/terminals/{terminal_id}"
                    closed = client.delete(path, headers=relay.headers_for(path))
                    if closed.status_code != 202:
                        failures.append(f"DELETE {path} after the scenario: {closed.text}")

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            super().after_call(response, case)
            answered[(case.method.upper(), case.path)].add(response.status_code)
            opened = (case.method.upper(), case.path, response.status_code)
            if opened == ("POST", "/v1/terminals", 201):
                self.terminals.append(response.json()["id"])

        def before_call(self, case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), **relay.headers_for(case.path)}
            if case.path == "/v1/terminals" and isinstance(case.body, dict):
                # The one program the worker offers, in its default directory.
                case.body["program"] = "cat"
                case.body.pop("cwd", None)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": relay.base_url, "timeout": CALL_TIMEOUT_S}

        def call(self, case: schemathesis.Case, **kwargs: Any) -> Any:
            try:
                return super().call(case, **kwargs)
            except Exception as exc:  # a timeout (a hang) or a dropped connection
                failures.append(f"{case.method} {case.formatted_path}: {exc!r}")
                raise

        def validate_response(
            self,
            response: Any,
            case: schemathesis.Case,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            try:
                case.validate_response(
                    response, checks=CHECKS, transport_kwargs=kwargs, recorder=self.recorder
                )
            except Exception as exc:
                failures.append(f"{case.method} {case.formatted_path}: {exc}")
                raise

    # Hypothesis ends a run as "flaky" when the same draws meet other answers than before (a
    # chat archived meanwhile, a limit reached, a turn still running): the relay's state moves
    # on between scenarios. Such a run counts what it did, and the next one goes on, within
    # bounds of rounds and of time.
    started = time.monotonic()
    for _ in range(MAX_ROUNDS):
        if scenarios[0] >= MAX_SCENARIOS or time.monotonic() - started > RUN_BUDGET_S:
            break
        try:
            ApiWorkflow.run(
                settings=settings(
                    ApiWorkflow.TestCase.settings,
                    max_examples=MAX_SCENARIOS - scenarios[0],
                    stateful_step_count=MAX_STEPS,
                    deadline=None,
                    database=None,
                    phases=[Phase.generate],  # no shrinking: see ``failures``
                )
            )
        except Flaky:
            continue
        finally:
            assert not failures, "\n\n".join(failures[:5])
    # The run followed links: objects it created were used by the operations linked to them.
    assert any(
        code < 300 for (method, path), codes in answered.items() for code in codes if "{" in path
    ), dict(answered)


# Bodies that the relay accepts, for walking each link once; a link's own values go on top.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/admin/tenants"): {"name": "links"},
    ("POST", "/v1/chats"): {"title": "links"},
    ("POST", "/v1/chats/{chat_id}/messages"): {"content": "hello"},
    ("POST", "/v1/terminals"): {"program": "cat", "cols": 80, "rows": 24},
    ("POST", "/v1/publish"): {"events": [{"type": "custom.ping", "data": {}}]},
    ("POST", "/v1/sessions"): {"terminals": "read"},
}
OPERATIONS = {
    operation["operationId"]: (method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
}


class Link:
    def __init__(self, source: tuple[str, str], name: str, definition: dict[str, Any]) -> None:
        self.source = source
        self.name = name
        self.target = OPERATIONS[definition["operationId"]]
        self.parameters: dict[str, str] = definition.get("parameters", {})
        self.body: dict[str, Any] = definition.get("requestBody", {})

    def __repr__(self) -> str:
        return f"{' '.join(self.source)} -> {' '.join(self.target)}"


LINKS = [
    Link(OPERATIONS[operation["operationId"]], name, definition)
    for item in DOCUMENT["paths"].values()
    for operation in item.values()
    for name, definition in operation["responses"].get("201", {}).get("links", {}).items()
]


def _evaluate(expression: Any, params: dict[str, str], answer: dict[str, Any]) -> Any:
    if isinstance(expression, list):
        return [_evaluate(item, params, answer) for item in expression]
    if expression.startswith("$request.path."):
        return params[expression.removeprefix("$request.path.")]
    if expression.startswith("$response.body#/"):
        return answer[expression.removeprefix("$response.body#/")]
    prefix, _, rest = expression.partition("{")
    return prefix + str(_evaluate(rest.rstrip("}"), params, answer))


class Walker:
    """Creates objects the way the links say and follows each link once."""

    def __init__(self, relay: Relay, client: httpx.Client) -> None:
        self.relay = relay
        self.client = client
        self.terminals: list[str] = []

    def call(
        self, operation: tuple[str, str], params: dict[str, str], body: dict[str, Any] | None
    ) -> httpx.Response:
        method, template = operation
        path = template.format(**params)
        response = self.client.request(
            method,
            path,
            json=body if method in ("POST", "PUT") else None,
            headers=self.relay.headers_for(template),
        )
        if (method, template, response.status_code) == ("POST", "/v1/terminals", 201):
            self.terminals.append(response.json()["id"])
        return response

    def close_terminals(self) -> None:
        while self.terminals:
            path = f"/v1/terminals/{self.terminals.pop()}"
            closed = self.client.delete(path, headers=self.relay.headers_for(path))
            assert closed.status_code == 202, closed.text

    def follow(
        self, link: Link, params: dict[str, str], answer: dict[str, Any]
    ) -> tuple[dict[str, str], httpx.Response]:
        target_params = {
            name: str(_evaluate(expression, params, answer))
            for name, expression in link.parameters.items()
        }
        body = {**BODIES.get(link.target, {})}
        body.update({name: _evaluate(value, params, answer) for name, value in link.body.items()})
        return target_params, self.call(link.target, target_params, body)

    def produce(self, creator: tuple[str, str], depth: int = 0) -> tuple[dict[str, str], Any]:
        """A created object, made through a link into its creator when there is one (a key
        for a new tenant, a terminal in a new chat, a visitor's session with a new code)."""
        incoming = [link for link in LINKS if link.target == creator and link.source != creator]
        if incoming and depth < 3:
            params, answer = self.produce(incoming[0].source, depth + 1)
            params, response = self.follow(incoming[0], params, answer)
        else:
            params, response = {}, self.call(creator, {}, BODIES.get(creator, {}))
        assert response.status_code == 201, (creator, response.text)
        return params, response.json()


def test_every_link_leads_to_a_live_object(relay: Relay) -> None:
    """Each link of the document, followed once from a freshly created object, is answered
    with success: the links name what the API really answers and really takes."""
    assert LINKS
    with httpx.Client(base_url=relay.base_url, timeout=CALL_TIMEOUT_S) as client:
        walker = Walker(relay, client)
        refused = []
        for link in LINKS:
            try:
                params, answer = walker.produce(link.source)
                _, response = walker.follow(link, params, answer)
                if response.status_code >= 300:
                    refused.append(f"{link}: {response.status_code} {response.text}")
            finally:
                # The workers' terminals are few: each link's end before the next.
                walker.close_terminals()
        assert not refused, "\n".join(refused)
