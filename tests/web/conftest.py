"""Browser tests: a real relay and worker on 127.0.0.1, driven through headless Chromium.

The relay and its worker run on an event loop of their own in a background thread, so the
tests can use Playwright's synchronous API and still stop and restart the relay (same port,
same database) while a page is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from relayline.api.routes.web import VENDOR_BUNDLE
from relayline.clock import now_ms
from relayline.config import Settings
from relayline.ids import new_id
from relayline.store.models import Chat, Message
from relayline.testing import RelayServer
from relayline.testing.server import free_port
from relayline.worker.daemon import build_connection
from relayline.worker.llm.local import LocalModel
from relayline.worker.settings import WorkerSettings
from tests.conftest import ADMIN_KEY, SettingsFactory

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Playwright adds --headless and a fresh temporary --user-data-dir of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
TOOLS = ["read_file", "list_dir", "edit_file", "run_command"]
T = TypeVar("T")


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if not VENDOR_BUNDLE.is_file():
        return "the web vendor bundle is not built (bash scripts/build_web.sh)"
    return None


SKIP_REASON = _skip_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if SKIP_REASON is None:
        return
    here = Path(__file__).parent
    for item in items:
        if item.path.parent == here and item.path.name.startswith("test_browser_"):
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


class LiveRelay:
    """A relay plus one worker (built-in local model), restartable on the same port and DB."""

    def __init__(
        self, make_settings: SettingsFactory, tmp_path: Path, delay_s: float, **overrides: Any
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        secret = secrets.token_urlsafe(24)
        self.settings: Settings = make_settings(
            allowed_origins=[self.url],
            worker_keys=[f"browser:{secret}"],
            shutdown_drain_s=0.5,
            turn_lease_s=5,
            **overrides,
        )
        self.workspace = tmp_path / "workspace"
        self.workspace.mkdir()
        (self.workspace / "README.md").write_text("# Workspace\n\nHello from the tests.\n")
        self.worker_settings = WorkerSettings(
            _env_file=None,  # type: ignore[call-arg]
            relay_url=self.url,
            worker_key_id="browser",
            worker_secret=secret,
            worker_id="browser-worker",
            workspace_roots=[self.workspace],
            local_model_delay_s=delay_s,
            worker_capacity=4,
            shutdown_grace_s=0.5,
            reconnect_base_s=0.1,
            reconnect_max_s=0.5,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-relay", daemon=True)
        self.thread.start()
        self.relay: RelayServer | None = None
        self.worker_stop: asyncio.Event | None = None
        self.worker_task: asyncio.Task[None] | None = None
        self.llm: Any = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    @property
    def model(self) -> LocalModel:
        assert isinstance(self.llm, LocalModel)
        return self.llm

    def start_relay(self) -> None:
        async def start() -> None:
            self.relay = RelayServer(self.settings, port=self.port)
            await self.relay.start()

        self.call(start())

    def stop_relay(self) -> None:
        async def stop() -> None:
            if self.relay is not None:
                await self.relay.stop()
                self.relay = None

        self.call(stop())

    def start_worker(self, **overrides: Any) -> None:
        """Start the worker; ``overrides`` change its settings for this start only (say, a
        model server of the test's own in place of the built-in model)."""
        settings = self.worker_settings.model_copy(update=overrides)

        async def start() -> None:
            connection, self.llm = build_connection(settings)
            self.worker_stop = asyncio.Event()
            self.worker_task = asyncio.get_running_loop().create_task(
                connection.run(self.worker_stop)
            )
            async with asyncio.timeout(10):
                await connection.connected.wait()

        self.call(start())

    def stop_worker(self) -> None:
        async def stop() -> None:
            if self.worker_stop is not None and self.worker_task is not None:
                self.worker_stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.worker_task, 10)
                await self.llm.aclose()
            self.worker_task = None

        self.call(stop())

    def close(self) -> None:
        try:
            self.stop_worker()
            self.stop_relay()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    # REST helpers (admin and tenant side, straight to the relay)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def tenant_session(self, name: str = "acme") -> tuple[str, str, str]:
        """A tenant with every tool enabled: (tenant_id, key, session token that may create
        chats)."""
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with self.http() as http:
            r = http.post("/v1/admin/tenants", json={"name": name}, headers=admin)
            r.raise_for_status()
            tenant_id = r.json()["id"]
            r = http.put(
                f"/v1/admin/tenants/{tenant_id}/agent",
                json={"tools": TOOLS, "model": "local"},
                headers=admin,
            )
            r.raise_for_status()
            r = http.post(f"/v1/admin/tenants/{tenant_id}/keys", json={}, headers=admin)
            r.raise_for_status()
            key = r.json()["key"]
            r = http.post(
                "/v1/sessions",
                json={"can_create_chats": True, "ttl_s": 3600},
                headers={"Authorization": f"Bearer {key}"},
            )
            r.raise_for_status()
            return tenant_id, key, r.json()["token"]

    def seed_messages(self, chat_id: str, count: int) -> None:
        """Store ``count`` finished messages in a chat straight through the relay's store."""

        async def seed() -> None:
            assert self.relay is not None
            db = self.relay.app.http.state.relay.db
            now = now_ms()
            async with db.write() as session:
                for seq in range(1, count + 1):
                    role = "user" if seq % 2 else "assistant"
                    text = (
                        f"Question {seq}: what about item {seq}?"
                        if role == "user"
                        else f"Answer {seq}.\n\n- point one\n- point two\n\n`code {seq}`"
                    )
                    session.add(
                        Message(
                            id=new_id(),
                            chat_id=chat_id,
                            seq=seq,
                            role=role,
                            content=text,
                            status="complete",
                            created_at=now - (count - seq) * 1000,
                        )
                    )
                chat = await session.get(Chat, chat_id)
                assert chat is not None
                chat.last_seq = count

        self.call(seed(), timeout=60)

    def chats(self, key: str) -> list[dict[str, Any]]:
        with self.http() as http:
            r = http.get("/v1/chats", headers={"Authorization": f"Bearer {key}"})
            r.raise_for_status()
            items: list[dict[str, Any]] = r.json()["items"]
            return items

    def messages(self, key: str, chat_id: str) -> list[dict[str, Any]]:
        with self.http() as http:
            r = http.get(
                f"/v1/chats/{chat_id}/messages",
                params={"limit": 200},
                headers={"Authorization": f"Bearer {key}"},
            )
            r.raise_for_status()
            items: list[dict[str, Any]] = r.json()["items"]
            return items


@pytest.fixture
def live(make_settings: SettingsFactory, tmp_path: Path) -> Iterator[LiveRelay]:
    relay = LiveRelay(make_settings, tmp_path, delay_s=0.004)
    try:
        relay.start_relay()
        relay.start_worker()
        yield relay
    finally:
        relay.close()


@pytest.fixture
def live_with_challenge(make_settings: SettingsFactory, tmp_path: Path) -> Iterator[LiveRelay]:
    """A relay whose public widget asks for a (cheap) proof of work."""
    relay = LiveRelay(
        make_settings, tmp_path, delay_s=0.004, public_challenge="on", public_challenge_bits=10
    )
    try:
        relay.start_relay()
        relay.start_worker()
        yield relay
    finally:
        relay.close()


# Module scope, not session: Playwright's synchronous API keeps an event loop running in this
# thread while it is open, and async tests in later modules need the thread to themselves.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """``new_page(color_scheme="dark", viewport=...)``: pages closed after the test."""
    contexts: list[Any] = []

    def make(**options: Any) -> Any:
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(**options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors
        return page

    yield make
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
