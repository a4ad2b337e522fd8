"""The ASGI application: HTTP API, middleware, and the process-wide resources' lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI

from relayline import __version__
from relayline.api.errors import install_error_handlers
from relayline.api.middleware.body_limit import BodyLimitMiddleware
from relayline.api.middleware.ip_limit import IpRateLimitMiddleware
from relayline.api.middleware.request_context import RequestContextMiddleware
from relayline.api.routes import admin, chats, health, sessions
from relayline.api.schemas import ErrorOut
from relayline.api.state import RelayState
from relayline.auth import Authenticator
from relayline.config import Settings
from relayline.errors import Unavailable
from relayline.limits import ClientIpResolver, RateLimiter
from relayline.store import migrate
from relayline.store.database import Database

log = structlog.get_logger("relayline.app")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422, 429)
}


async def open_store(settings: Settings) -> Database:
    """Create the engine, check the database answers, and migrate when configured to."""
    db = Database(settings)
    try:
        await db.ping()
    except Exception as exc:
        await db.dispose()
        raise Unavailable(f"database unreachable: {type(exc).__name__}") from exc
    if settings.auto_migrate:
        await migrate.upgrade(db.engine)
    return db


def create_app(settings: Settings) -> FastAPI:
    """Build the relay. Resources are opened in the lifespan, once per process."""
    limiter = RateLimiter(settings)
    resolver = ClientIpResolver(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await open_store(settings)
        app.state.relay = RelayState(
            settings=settings,
            db=db,
            limiter=limiter,
            resolver=resolver,
            auth=Authenticator(settings, db),
        )
        log.info("relay_started", version=__version__, database=db.engine.dialect.name)
        try:
            yield
        finally:
            await limiter.close()
            await db.dispose()
            log.info("relay_stopped")

    app = FastAPI(
        title="relayline",
        version=__version__,
        lifespan=lifespan,
        responses=_ERRORS,
        docs_url="/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    for router in (admin.router, chats.router, sessions.router, health.router):
        app.include_router(router)
    # Added innermost first: the request context wraps everything, so even a refused request
    # gets an id and an access log line.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(IpRateLimitMiddleware, limiter=limiter, resolver=resolver)
    app.add_middleware(RequestContextMiddleware)
    return app
