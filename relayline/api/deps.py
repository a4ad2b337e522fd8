"""FastAPI dependencies: authentication, per-identity rate limit, scope checks, limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from relayline.api.state import RelayState, relay_state
from relayline.auth import KEY_IN_URL, SESSION_COOKIE, URL_CREDENTIAL, Principal
from relayline.errors import Forbidden, RateLimited, Unauthorized, ValidationFailed
from relayline.observability.metrics import RATE_LIMITED

bearer = HTTPBearer(auto_error=False, description="admin key, tenant API key or session token")


async def _relay_state(request: Request) -> RelayState:
    """:func:`relay_state` as a dependency: a coroutine, since FastAPI runs a plain function
    dependency on a worker thread (a thread round trip per request for a dictionary lookup)."""
    return relay_state(request)


State = Annotated[RelayState, Depends(_relay_state)]


async def principal(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> Principal:
    state = relay_state(request)
    credential = creds.credentials if creds else request.cookies.get(SESSION_COOKIE)
    in_url = request.query_params.get(URL_CREDENTIAL)
    if in_url is not None:
        # EventSource cannot set headers, so a session token may ride in the query string
        # (redacted from every log line); a key never may, wherever it is sent.
        if state.auth.is_long_lived(in_url):
            raise Unauthorized(KEY_IN_URL)
        if credential is None and request.url.path == "/v1/events":
            credential = in_url
    who = await state.auth.authenticate(credential)
    try:
        await state.limiter.hit("identity", who.rate_key)
    except RateLimited:
        RATE_LIMITED.labels("identity").inc()
        raise
    return who


Caller = Annotated[Principal, Depends(principal)]


async def admin(who: Caller) -> Principal:
    if who.kind != "admin":
        raise Forbidden("admin key required")
    return who


def tenant(scope: str, *, sessions: bool) -> Callable[[Principal], Awaitable[Principal]]:
    """A tenant key holding ``scope``, or (when ``sessions``) a browser session token."""

    async def check(who: Caller) -> Principal:
        if who.kind == "session" and sessions:
            return who
        if who.kind == "tenant" and (not who.scopes or scope in who.scopes):
            return who
        if who.kind == "tenant":
            raise Forbidden(f"this key lacks the {scope!r} scope")
        raise Forbidden(
            "tenant API key required" if not sessions else "tenant key or session token required"
        )

    return check


async def analytics_reader(who: Caller) -> Principal:
    """A tenant key holding the ``chats`` scope, or a session token minted with
    ``analytics``: either reads its own tenant's figures only."""
    if who.kind == "session":
        if who.can_read_analytics:
            return who
        raise Forbidden("this session token may not read analytics (mint it with analytics: true)")
    return await tenant("chats", sessions=False)(who)


async def completions_user(who: Caller) -> Principal:
    """A tenant key holding the ``chats`` scope, or a session token minted with
    ``completions``: the OpenAI-compatible gateway."""
    if who.kind == "session":
        if who.can_use_completions:
            return who
        raise Forbidden(
            "this session token may not use completions (mint it with completions: true)"
        )
    return await tenant("chats", sessions=False)(who)


Admin = Annotated[Principal, Depends(admin)]
TenantAnalytics = Annotated[Principal, Depends(analytics_reader)]
TenantCompletions = Annotated[Principal, Depends(completions_user)]
TenantChats = Annotated[Principal, Depends(tenant("chats", sessions=True))]
TenantOnlyChats = Annotated[Principal, Depends(tenant("chats", sessions=False))]
TenantSessions = Annotated[Principal, Depends(tenant("sessions", sessions=False))]
TenantPublish = Annotated[Principal, Depends(tenant("publish", sessions=False))]
TenantTerminals = Annotated[Principal, Depends(tenant("terminals", sessions=True))]


def check_max_len(field: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise ValidationFailed(f"{field}: at most {limit} characters")


def check_max(field: str, value: int, limit: int) -> None:
    if value > limit:
        raise ValidationFailed(f"{field}: at most {limit}")


DEFAULT_PAGE_SIZE = 50


def page_size(limit: int | None, max_page_size: int) -> int:
    """The requested page size, or the default capped by ``RELAYLINE_MAX_PAGE_SIZE`` (a fixed
    default above a lowered maximum would make every request without ``limit`` a 422)."""
    if limit is None:
        return min(DEFAULT_PAGE_SIZE, max_page_size)
    check_max("limit", limit, max_page_size)
    return limit
