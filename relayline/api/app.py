"""The ASGI application: HTTP API, middleware, and the process-wide resources' lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from relayline import __version__
from relayline.api import openapi_links
from relayline.api.errors import install_error_handlers
from relayline.api.middleware.body_limit import BodyLimitMiddleware
from relayline.api.middleware.ip_limit import IpRateLimitMiddleware
from relayline.api.middleware.request_context import RequestContextMiddleware
from relayline.api.routes import (
    admin,
    admin_turns,
    agents,
    analytics,
    chats,
    completions,
    events,
    health,
    public,
    publish,
    schema,
    sessions,
    terminals,
    web,
)
from relayline.api.schemas import ErrorOut
from relayline.api.state import RelayState
from relayline.auth import Authenticator
from relayline.backends import open_shared_state
from relayline.chat_service import ChatService
from relayline.completions.service import CompletionService
from relayline.config import Settings
from relayline.errors import Unavailable
from relayline.hub.acl import TopicAcl
from relayline.hub.gateway import Gateway
from relayline.hub.hub import Hub
from relayline.limits import ClientIpResolver, ConnectionCaps, RateLimiter
from relayline.live_credentials import CONTROL_KIND, LiveCredentials
from relayline.observability.error_tracking import init_error_tracking
from relayline.observability.store_metrics import instrument_engine
from relayline.ops.scheduled_analytics import ScheduledAnalytics
from relayline.ops.scheduled_backups import ScheduledBackups
from relayline.store import migrate
from relayline.store.database import Database
from relayline.terminals.directory import create_directory
from relayline.terminals.remote import CONTROL_KIND as TERMINAL_CONTROL
from relayline.terminals.service import TerminalService
from relayline.turns.dispatcher import TurnDispatcher
from relayline.turns.signing import SignatureVerifier
from relayline.turns.worker_gateway import WorkerGateway

log = structlog.get_logger("relayline.app")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422, 429)
}


async def open_store(settings: Settings) -> Database:
    """Create the engine, check the database answers, and migrate when configured to."""
    db = Database(settings)
    for engine in db.sync_engines:
        instrument_engine(engine)
    try:
        await db.ping()
    except Exception as exc:
        await db.dispose()
        raise Unavailable(f"database unreachable: {type(exc).__name__}") from exc
    if settings.auto_migrate:
        try:
            await migrate.upgrade(db.engine)
        except BaseException:
            await db.dispose()
            raise
    return db


class RelayApp:
    """The relay's ASGI entry: the WebSocket endpoints go straight to their handlers (plain
    ASGI callables, so an idle socket carries no framework state); everything else is FastAPI."""

    # path -> the RelayState attribute that serves it
    SOCKETS = {"/v1/ws": "gateway", "/v1/worker/ws": "workers"}

    def __init__(self, http: FastAPI, settings: Settings | None = None) -> None:
        self.http = http
        self.settings = settings
        self.startup_error: str | None = None  # why start-up failed, in one line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        handler_name = self.SOCKETS.get(scope["path"]) if scope["type"] == "websocket" else None
        if handler_name is None:
            await self.http(scope, receive, send)
            return
        state: RelayState | None = getattr(self.http.state, "relay", None)
        if state is None:  # not started yet, or already stopped: try again later
            await send({"type": "websocket.close", "code": 1013})
            return
        await getattr(state, handler_name)(scope, receive, send)

    def stopping(self) -> None:
        """The server stops: every connection is about to close. Their cap holds end together
        (one step for a shared store, when it closes) instead of a release each: a relay with
        10,000 sockets on Redis took seconds to exit, one round trip per socket."""
        state: RelayState | None = getattr(self.http.state, "relay", None)
        if state is not None:
            state.backends.caps.drop_all()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Error tracking (``RELAYLINE_SENTRY_DSN``) for as long as the relay runs, start-up and
        shutdown included. What it has queued is sent before the lifespan's last message: the
        server stops waiting for the lifespan once that is sent."""
        settings = self.settings
        tracking = None
        if settings is not None:
            tracking = init_error_tracking(settings.sentry_dsn, settings, component="relay")

        async def send_last(message: Message) -> None:
            if tracking is not None:
                await asyncio.to_thread(tracking.close)
            await send(message)

        try:
            await self._run_lifespan(receive, send, send_last)
        finally:
            if tracking is not None:  # cancelled: leave no client behind
                tracking.close(timeout=0)

    async def _run_lifespan(self, receive: Receive, send: Send, send_last: Send) -> None:
        """The ASGI lifespan protocol around the FastAPI app's lifespan, reporting a failed
        start-up or shutdown as one log line naming the cause (the lifespan has already closed
        what it had opened) instead of a traceback."""
        await receive()  # lifespan.startup
        context = self.http.router.lifespan_context(self.http)
        try:
            await context.__aenter__()
        except Exception as exc:
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log.error("relay_start_failed", error=self.startup_error)
            await send_last({"type": "lifespan.startup.failed", "message": ""})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self.stopping()
        try:
            await context.__aexit__(None, None, None)
        except Exception as exc:
            log.error("relay_stop_failed", error=f"{type(exc).__name__}: {exc}")
            await send_last({"type": "lifespan.shutdown.failed", "message": ""})
            return
        await send_last({"type": "lifespan.shutdown.complete"})


def create_http_app(settings: Settings) -> FastAPI:
    """Build the relay's FastAPI app. Resources are opened in the lifespan, once per process."""
    # Instances sharing a Redis share counters; the prefix keeps deployments apart.
    limiter = RateLimiter(settings, key_prefix=settings.redis_prefix.rstrip(":"))
    resolver = ClientIpResolver(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every part is registered on the stack as soon as it is open, so a failure half-way
        # through start-up closes exactly what was opened, in reverse order.
        async with AsyncExitStack() as stack:
            stack.push_async_callback(limiter.close)
            db = await open_store(settings)
            stack.push_async_callback(db.dispose)
            shared = await open_shared_state(settings, stack)
            bus = shared.bus
            auth = Authenticator(settings, db)
            hub = Hub(bus, replay_max_events=settings.replay_max_events)
            terminal_service = TerminalService(
                settings,
                bus,
                directory=create_directory(shared.redis, settings.redis_prefix),
                instance_id=shared.instance_id,
                broadcast=shared.coordinator.broadcast,
            )
            stack.push_async_callback(terminal_service.stop)
            terminal_service.start()
            hub.on_missed = terminal_service.topic_missed
            acl = TopicAcl(db, terminal_service)
            dispatcher = TurnDispatcher(settings, db, bus, shared.coordinator)
            credentials = LiveCredentials(
                revalidate_s=settings.auth_revalidate_s,
                check=auth.still_valid,
                broadcast=shared.coordinator.broadcast,
                on_change=auth.forget,
            )
            dispatcher.control_handlers[CONTROL_KIND] = credentials.on_control
            dispatcher.control_handlers[TERMINAL_CONTROL] = terminal_service.on_control
            stack.push_async_callback(dispatcher.stop)
            await dispatcher.start()
            stack.push_async_callback(credentials.close)
            credentials.start()
            scheduled_backups = ScheduledBackups(settings, shared.coordinator)
            stack.push_async_callback(scheduled_backups.stop)
            scheduled_backups.start()
            scheduled_analytics = ScheduledAnalytics(settings, db, shared.coordinator)
            stack.push_async_callback(scheduled_analytics.stop)
            scheduled_analytics.start()
            verifier = SignatureVerifier(
                settings.worker_key_map, shared.nonces, settings.worker_signature_window_s
            )
            workers = WorkerGateway(
                settings, dispatcher, verifier, bus, observers=[terminal_service.local]
            )
            chats_service = ChatService(settings, db, bus, limiter, dispatcher, acl.chat_owner)
            completion_service = CompletionService(settings, db, bus, dispatcher, shared.caps)
            gateway = Gateway(
                settings,
                hub,
                auth,
                acl,
                chats_service,
                resolver,
                ConnectionCaps(shared.caps),
                credentials,
                terminal_service,
            )
            stack.push_async_callback(gateway.stop)
            gateway.start()
            app.state.relay = RelayState(
                settings=settings,
                db=db,
                limiter=limiter,
                resolver=resolver,
                auth=auth,
                bus=bus,
                hub=hub,
                acl=acl,
                chats=chats_service,
                gateway=gateway,
                dispatcher=dispatcher,
                workers=workers,
                backends=shared,
                credentials=credentials,
                terminals=terminal_service,
                completions=completion_service,
            )
            log.info(
                "relay_started",
                version=__version__,
                database=db.engine.dialect.name,
                shared_state=shared.kind,
                instance=shared.instance_id,
            )
            stack.callback(log.info, "relay_stopped")
            yield

    app = FastAPI(
        title="relayline",
        version=__version__,
        lifespan=lifespan,
        responses=_ERRORS,
        # Production serves no API explorer, and the schema only to the admin key.
        docs_url=None if settings.is_production else "/docs",
        openapi_url=None if settings.is_production else "/openapi.json",
        redoc_url=None,
    )
    install_error_handlers(app)
    if settings.is_production:
        app.include_router(schema.router)
    for router in (
        admin.router,
        admin_turns.router,
        agents.router,
        analytics.router,
        chats.router,
        completions.router,
        sessions.router,
        terminals.router,
        publish.router,
        events.router,
        health.router,
        public.router,
        web.router,
    ):
        app.include_router(router)
    app.mount("/static", web.static_files(), name="static")
    openapi_links.install(app)
    # Added innermost first: the request context wraps everything, so even a refused request
    # gets an id and an access log line.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(IpRateLimitMiddleware, limiter=limiter, resolver=resolver)
    app.add_middleware(RequestContextMiddleware)
    return app


def create_app(settings: Settings) -> RelayApp:
    """The whole relay as one ASGI app (``.http`` is the FastAPI part)."""
    return RelayApp(create_http_app(settings), settings)
