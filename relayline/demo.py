"""``relayline demo``: relay + worker + built-in model in one process, on the embedded
defaults, with a demo tenant and a sign-in link for the browser."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path

import structlog
from sqlalchemy import select

from relayline import session_tokens
from relayline.api.app import open_store
from relayline.config import DEV_ADMIN_KEY, Settings
from relayline.server import RelayServerProcess, server_config
from relayline.store import tenants
from relayline.store.models import Chat, Tenant
from relayline.worker.daemon import build_connection, probe_upstream
from relayline.worker.settings import WorkerSettings

log = structlog.get_logger("relayline.demo")

DEMO_TENANT = "Demo"
DEMO_PROMPT = "You are relayline's demo agent. Be brief, friendly and use Markdown."
DEMO_TOOLS = ["read_file", "list_dir", "edit_file", "run_command"]
WORKSPACE_README = """# Demo workspace

The demo agent's tools can read, list and (with your approval) edit files here and run
commands in this folder. Try `/ls`, `/read README.md`, `/edit notes.md` or `/run ls -la`.
"""


def prepare(settings: Settings, host: str, port: int) -> tuple[Settings, str, str]:
    """Settings for the demo: a worker key of its own and the demo's origin allowed."""
    key_id, secret = "demo", secrets.token_urlsafe(32)
    origin = f"http://{host}:{port}"
    updates: dict[str, object] = {"worker_keys": [*settings.worker_keys, f"{key_id}:{secret}"]}
    if origin not in settings.allowed_origins:
        updates["allowed_origins"] = [*settings.allowed_origins, origin]
    return settings.model_copy(update=updates), key_id, secret


def prepare_workspace(workspace: Path) -> None:
    workspace.mkdir(parents=True, exist_ok=True)
    readme = workspace / "README.md"
    if not readme.exists():
        readme.write_text(WORKSPACE_README, encoding="utf-8")


async def demo_session(
    settings: Settings, workspace: Path, *, tools: bool = True, terminals: bool = False
) -> str:
    """Make sure the demo tenant exists; return a session token covering its chats (and,
    with ``terminals``, allowed to open and use terminal sessions)."""
    db = await open_store(settings)
    try:
        async with db.write() as session:
            tenant = (
                await session.scalars(select(Tenant).where(Tenant.name == DEMO_TENANT))
            ).first()
            if tenant is None:
                tenant = await tenants.create_tenant(session, DEMO_TENANT)
            tenant.agent_settings = {
                "system_prompt": DEMO_PROMPT,
                "model": None,  # the worker's own
                "tools": DEMO_TOOLS if tools else [],
            }
            query = (
                select(Chat.id)
                .where(Chat.tenant_id == tenant.id, Chat.archived_at.is_(None))
                .order_by(Chat.id.desc())
                .limit(settings.max_session_chats - 1)
            )
            chat_ids = list((await session.scalars(query)).all())
            tenant_id = tenant.id
    finally:
        await db.dispose()
    await asyncio.to_thread(prepare_workspace, workspace)
    token, _ = session_tokens.mint(
        settings.secret_key.get_secret_value(),
        tenant_id,
        chat_ids,
        settings.max_session_ttl_s,
        int(time.time()),
        can_create_chats=True,
        can_read_analytics=True,  # the demo's person runs it: the Usage view works
        terminals="write" if terminals else None,
    )
    return token


def admin_sign_in(settings: Settings) -> str:
    """How to sign in to the admin console: the development admin key in full (the built-in,
    published value, so printing it gives nothing away), or where the operator's own key lives
    (a key of their own is never printed)."""
    key = settings.admin_key.get_secret_value()
    if key == DEV_ADMIN_KEY:
        return f"{key}  (paste it on the sign-in page)"
    return "the one set in RELAYLINE_ADMIN_KEY"


def banner(base: str, token: str, settings: Settings) -> str:
    """What the demo prints once it serves: the chat link, the admin console and the key that
    signs in to it, the readiness check."""
    return (
        f"\n  relayline demo is running\n\n  Chat:   {base}/#session={token}\n"
        f"  Admin:  {base}/admin\n"
        f"          admin key: {admin_sign_in(settings)}\n"
        f"  Health: {base}/health/ready\n\n  Press Ctrl+C to stop.\n"
    )


async def run_demo(
    settings: Settings,
    host: str,
    port: int,
    workspace: Path,
    *,
    llm_url: str | None = None,
    model: str = "local",
) -> None:
    """Relay, worker and a demo tenant in one process. ``llm_url``: the worker's model server
    (OpenAI-compatible) instead of the built-in model; the demo agent then gets no tools (a
    small model does not call them reliably)."""
    settings, key_id, secret = prepare(settings, host, port)
    worker_settings = WorkerSettings(
        _env_file=None,
        relay_url=f"http://{host}:{port}",
        worker_key_id=key_id,
        worker_secret=secret,
        worker_id="demo-worker",
        workspace_roots=[workspace],
        local_model_delay_s=0.03,
        worker_capacity=4,
        shutdown_grace_s=2,
        llm_url=llm_url,
        model=model,
    )
    if worker_settings.terminal_program_map:
        # RELAYLINE_TERMINAL_PROGRAMS set: the demo's worker runs terminals of those programs.
        worker_settings = worker_settings.model_copy(update={"terminals": True})
    token = await demo_session(
        settings, workspace, tools=llm_url is None, terminals=worker_settings.terminals
    )
    server = RelayServerProcess(server_config(settings, host, port))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            return
        await asyncio.sleep(0.05)
    connection, llm = build_connection(worker_settings)
    await probe_upstream(worker_settings, llm)
    stop = asyncio.Event()
    worker = asyncio.create_task(connection.run(stop))
    base = f"http://{host}:{port}"
    print(banner(base, token, settings), flush=True)
    try:
        await serving
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker, 10)
        await llm.aclose()
