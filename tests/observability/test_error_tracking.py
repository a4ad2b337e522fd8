"""Error tracking: with RELAYLINE_SENTRY_DSN set, errors of the relay and of the worker reach a
Sentry ingest endpoint (a fake one on 127.0.0.1 here) tagged with the request id or the turn's
correlation id, and nothing secret does; with no DSN nothing is initialised."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import re
import subprocess
import sys
import threading
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sentry_sdk
import structlog
from pydantic import SecretStr

from relayline import __version__, chat_service
from relayline.api import app as app_module
from relayline.observability import error_tracking
from relayline.observability.error_tracking import init_error_tracking
from relayline.observability.logging import LogRuntime, configure_logging
from relayline.protocol.generation import Generation
from relayline.testing import RelayServer
from relayline.worker.llm.base import ChatMessage, StreamChunk, ToolSpec
from tests.conftest import ADMIN_KEY, SettingsFactory
from tests.fixtures import RelayFactory, Tenants, Workers, new_tenant

CONTENT = "my-private-question-about-Q3-numbers-7f3a"
COOKIE = "cookie-value-Zk81Lq0Vx3Rt"
TOUCHED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi", "uvicorn.access")
TOUCHED_LOGGERS += ("aiosqlite", "websockets", "httpcore", "hpack")
ENVELOPE_PATH = re.compile(r"^/api/(\d+)/envelope/$")


class FakeSentry:
    """A Sentry ingest endpoint: accepts ``POST /api/<project>/envelope/`` (gzip, deflate or
    brotli per Content-Encoding) and keeps each envelope, decoded and parsed."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []  # decompressed, as received
        self.items: list[tuple[dict[str, Any], bytes]] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if not ENVELOPE_PATH.match(self.path):
                    with fake._lock:
                        fake.refused.append(self.path)
                    self.send_error(404)
                    return
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = decompress(raw, self.headers.get("Content-Encoding", ""))
                _, items = parse_envelope(body)
                with fake._lock:
                    fake.bodies.append(body)
                    fake.items.extend(items)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(payload) for header, payload in self.items if is_event(header)]

    def everything(self) -> str:
        """Every byte received, as text, to look for what must not be there."""
        with self._lock:
            return b"\n".join(self.bodies).decode("utf-8", "replace")

    async def wait_for(self, message: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first event of the log line *message*, flushing the SDK's queue meanwhile."""
        async with asyncio.timeout(timeout):
            while True:
                await asyncio.to_thread(sentry_sdk.flush, 2)
                for event in self.events():
                    if event.get("logentry", {}).get("message") == message:
                        return event
                await asyncio.sleep(0.05)


def is_event(header: dict[str, Any]) -> bool:
    return header.get("type") == "event"


def decompress(raw: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # only when the SDK found it

        return bytes(brotli.decompress(raw))
    assert encoding in ("", "identity"), encoding
    return raw


def parse_envelope(body: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """An envelope: a JSON header line, then items, each a JSON header line and a payload of
    ``length`` bytes (or up to the next newline when the header gives no length)."""
    header_line, _, rest = body.partition(b"\n")
    header = json.loads(header_line)
    items = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        if not item_line.strip():
            continue
        item_header = json.loads(item_line)
        length = item_header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            rest = rest.removeprefix(b"\n")
        items.append((item_header, payload))
    return header, items


@pytest.fixture
def fake_sentry() -> Iterator[FakeSentry]:
    fake = FakeSentry()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture(autouse=True)
def sentry_off() -> Iterator[None]:
    """Whatever a test left running, no Sentry client outlives it: the other tests share this
    interpreter."""
    yield
    active = error_tracking._active
    if active is not None:
        error_tracking.ErrorTracking(active).close(timeout=1)
    assert not sentry_sdk.get_client().is_active()


@pytest.fixture
def logging_pipeline(make_settings: SettingsFactory) -> Iterator[LogRuntime]:
    """The CLI's logging pipeline (errors reach Sentry through it), writing to a buffer; the
    process-wide logging state is put back afterwards."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
        for name in TOUCHED_LOGGERS
        for logger in [logging.getLogger(name)]
    }
    runtime = configure_logging(make_settings(log_format="json"), stream=io.StringIO())
    yield runtime
    runtime.close()
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = saved_root[0]
    root.setLevel(saved_root[1])
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


def assert_absent(fake: FakeSentry, secrets: Sequence[str]) -> None:
    everything = fake.everything()
    assert everything  # something was received, or the check below proves nothing
    for secret in secrets:
        assert secret not in everything, secret


async def test_a_500_reaches_sentry_with_its_request_id_and_no_secret(
    fake_sentry: FakeSentry,
    logging_pipeline: LogRuntime,
    start_relay: RelayFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay = await start_relay(sentry_dsn=fake_sentry.dsn)
    assert sentry_sdk.get_client().is_active()  # started by the relay's lifespan
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        tenant = await new_tenant(relay, http)
        chat_id = await tenant.chat()
        key_secret = tenant.key.split("_", 2)[2]  # rl_<prefix>_<secret>; "_" may be in it

        async def store_fails(*args: Any, **kwargs: Any) -> None:
            # An error message quoting a credential, as a careless driver's might.
            raise RuntimeError(f"store refused the write for Authorization: Bearer {tenant.key}")

        monkeypatch.setattr(chat_service.chats, "post_user_message", store_fails)
        r = await http.post(
            f"/v1/chats/{chat_id}/messages",
            json={"content": CONTENT},
            headers={**tenant.auth, "Cookie": f"relayline_session={COOKIE}"},
        )
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal"
    request_id = r.headers["X-Request-ID"]

    event = await fake_sentry.wait_for("unhandled_error")
    assert event["tags"]["request_id"] == request_id
    assert event["tags"]["component"] == "relay"
    assert event["level"] == "error"
    assert event["environment"] == "test"
    assert event["release"] == f"relayline@{__version__}"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert "[redacted]" in exception["value"]
    frames = exception["stacktrace"]["frames"]
    assert any(frame.get("function") == "store_fails" for frame in frames)
    assert not any("vars" in frame for frame in frames)  # locals are never sent
    # The Starlette/FastAPI integration described the request, without its credentials.
    assert event["request"]["url"].endswith(f"/v1/chats/{chat_id}/messages")
    assert event["request"]["method"] == "POST"
    assert event["request"]["headers"]["authorization"] == "[redacted]"
    assert not event["request"].get("data")  # bodies are never read
    # The same exception escaped the app after it was logged: sent once.
    await asyncio.to_thread(sentry_sdk.flush, 2)
    crashes = [e for e in fake_sentry.events() if "exception" in e]
    assert len(crashes) == 1, [e.get("logentry") for e in crashes]
    assert_absent(fake_sentry, [tenant.key, key_secret, ADMIN_KEY, COOKIE, CONTENT])
    assert fake_sentry.refused == []


async def test_a_failed_start_up_is_sent_before_the_relay_gives_up(
    fake_sentry: FakeSentry,
    logging_pipeline: LogRuntime,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def unreachable(*args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("shared state unreachable")

    monkeypatch.setattr(app_module, "open_shared_state", unreachable)
    server = RelayServer(make_settings(sentry_dsn=fake_sentry.dsn))
    with pytest.raises(RuntimeError, match="exited during start-up"):
        await server.start()
    # No flush here: the lifespan sent what was queued before its last message.
    (event,) = [e for e in fake_sentry.events() if e["logentry"]["message"] == "relay_start_failed"]
    assert event["extra"]["error"] == "ConnectionRefusedError: shared state unreachable"
    assert not sentry_sdk.get_client().is_active()


class ExplodingModel:
    """A model client with a bug: raises what no LLMError describes."""

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        model: str,
        options: Generation | None = None,
    ) -> AsyncIterator[StreamChunk]:
        raise KeyError("choices")
        yield  # an async generator, as the real clients

    async def aclose(self) -> None:
        pass


async def test_a_crashed_turn_reaches_sentry_with_its_correlation_id_and_no_content(
    fake_sentry: FakeSentry,
    logging_pipeline: LogRuntime,
    make_settings: SettingsFactory,
    turn_relay: RelayFactory,
    workers: Workers,
    tenants: Tenants,
) -> None:
    relay = await turn_relay()  # no DSN: only the worker reports here
    settings = make_settings()
    worker_settings = workers.settings(relay, sentry_dsn=fake_sentry.dsn)
    # What `relayline worker` does once logging is configured.
    tracking = init_error_tracking(worker_settings.sentry_dsn, settings, component="worker")
    assert tracking is not None
    try:
        worker = await workers.start(relay, sentry_dsn=fake_sentry.dsn)
        worker.model.inner = ExplodingModel()  # type: ignore[assignment]
        tenant = await tenants.new(relay)
        chat_id = await tenant.chat()
        r = await tenant.http.post(
            f"/v1/chats/{chat_id}/messages", json={"content": CONTENT}, headers=tenant.auth
        )
        assert r.status_code == 202, r.text
        correlation_id = r.headers["X-Request-ID"]
        turn_id = r.json()["turn_id"]

        event = await fake_sentry.wait_for("turn_crashed")
    finally:
        tracking.close()
    # Bound in the turn's task (structlog context variables), not passed to the line.
    assert event["tags"]["correlation_id"] == correlation_id
    assert "correlation_id" in event["extra"]
    assert event["tags"]["turn_id"] == turn_id
    assert event["tags"]["component"] == "worker"
    assert event["logger"] == "relayline.worker"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "KeyError"
    assert any(f.get("function") == "stream" for f in exception["stacktrace"]["frames"])
    assert_absent(fake_sentry, [CONTENT, worker_settings.worker_secret.get_secret_value()])


async def test_events_the_sdk_raises_carry_the_ids_bound_in_their_task(
    fake_sentry: FakeSentry, make_settings: SettingsFactory
) -> None:
    tracking = init_error_tracking(SecretStr(fake_sentry.dsn), make_settings(), component="worker")
    assert tracking is not None

    async def turn(correlation_id: str) -> None:
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        await asyncio.sleep(0.01)  # both tasks bound before either reports
        try:
            raise ValueError(f"failed {correlation_id}")
        except ValueError:
            sentry_sdk.capture_exception()

    try:
        await asyncio.gather(turn("corr-a"), turn("corr-b"))
        await asyncio.to_thread(sentry_sdk.flush, 5)
    finally:
        tracking.close()
    tagged = {e["exception"]["values"][0]["value"]: e["tags"] for e in fake_sentry.events()}
    assert tagged["failed corr-a"]["correlation_id"] == "corr-a"
    assert tagged["failed corr-b"]["correlation_id"] == "corr-b"
    assert structlog.contextvars.get_contextvars() == {}  # the tasks' own contexts


async def test_no_dsn_initialises_nothing(
    make_settings: SettingsFactory, start_relay: RelayFactory
) -> None:
    settings = make_settings()
    for dsn in (None, SecretStr(""), SecretStr("  ")):
        assert init_error_tracking(dsn, settings, component="relay") is None
        assert init_error_tracking(dsn, settings, component="worker") is None
    relay = await start_relay()
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        assert (await http.get("/health")).status_code == 200
    assert not sentry_sdk.get_client().is_active()
    assert error_tracking._active is None
    # Not even imported: a process without a DSN pays nothing for the SDK.
    probe = (
        "import sys\n"
        "from relayline.config import Settings\n"
        "from relayline.observability.error_tracking import init_error_tracking\n"
        "from relayline.observability.logging import configure_logging\n"
        "settings = Settings(_env_file=None)\n"
        "runtime = configure_logging(settings)\n"
        "assert init_error_tracking(settings.sentry_dsn, settings, component='worker') is None\n"
        "runtime.close()\n"
        "print('sentry_sdk' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "RELAYLINE_ENV": "test"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
