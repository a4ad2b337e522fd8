"""One JSON shape for every HTTP error: ``{"error": {"code", "detail", "request_id"}}``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from relayline.completions import wire
from relayline.errors import RateLimited, RelaylineError, Unavailable
from relayline.observability.redaction import redact_text

log = structlog.get_logger("relayline.api")

# The OpenAI-compatible gateway's routes: their errors carry OpenAI's fields too.
OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/models"})

_STATUS_CODES = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "validation_error",
    422: "validation_error",
    429: "rate_limited",
}


def request_id_of(scope: Any) -> str:
    state = scope.get("state") or {}
    return str(state.get("request_id", ""))


def error_response(
    status: int,
    code: str,
    detail: str,
    request_id: str,
    headers: dict[str, str] | None = None,
    *,
    path: str | None = None,
) -> JSONResponse:
    """The error shape; on the OpenAI-compatible routes (``path``) the one error object also
    carries OpenAI's fields, so OpenAI clients read it too."""
    body: dict[str, Any]
    if path is not None and path in OPENAI_PATHS:
        body = wire.error_body(status, code, detail, request_id)
    else:
        body = {"error": {"code": code, "detail": detail, "request_id": request_id}}
    all_headers = {"X-Request-ID": request_id} if request_id else {}
    all_headers.update(headers or {})
    return JSONResponse(body, status_code=status, headers=all_headers)


def render(exc: RelaylineError, request_id: str, path: str | None = None) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    if isinstance(exc, Unavailable) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s)}
    return error_response(exc.status, exc.code, exc.detail, request_id, headers, path=path)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


async def _relayline_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelaylineError)
    return render(exc, request_id_of(request.scope), request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{_field(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:10]]
    return error_response(
        422,
        "validation_error",
        "; ".join(problems) or "invalid request",
        request_id_of(request.scope),
        path=request.url.path,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(
        exc.status_code, "internal" if exc.status_code >= 500 else "validation_error"
    )
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(
        exc.status_code,
        code,
        detail,
        request_id_of(request.scope),
        dict(exc.headers or {}),
        path=request.url.path,
    )


# SQLite: SQLITE_BUSY ("database is locked") past the busy timeout, SQLITE_LOCKED ("database
# table is locked"), SQLITE_FULL ("database or disk is full": the write is rolled back whole,
# and writes work again once the disk has room).
_SQLITE_TRANSIENT: Final = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "database or disk is full",
)
# PostgreSQL SQLSTATEs worth a retry: connection exceptions (class 08), too many connections,
# a server shutting down or starting up, lock not available, serialization failure, deadlock.
_PG_TRANSIENT_CLASSES: Final = ("08",)
_PG_TRANSIENT_STATES: Final = frozenset(
    {"53300", "57P01", "57P02", "57P03", "55P03", "40001", "40P01"}
)
# Packages whose frames mark a bare OSError as the database driver's (asyncpg does not wrap a
# refused or timed-out connect: SQLAlchemy lets the OSError / TimeoutError through as is).
_STORE_PACKAGES: Final = ("asyncpg", "aiosqlite", "sqlalchemy")
_CAUSE_CHARS: Final = 300


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_transient(exc: DBAPIError) -> bool:
    """True when the store fault may clear by itself (busy, locked, unreachable, restarting).

    Everything else (a missing table or column after a skipped migration, a disk I/O error, a
    constraint) is permanent: retrying cannot help, so it is an internal error, not a 503.
    """
    if exc.connection_invalidated:
        return True
    for cause in _chain(exc.orig):
        if isinstance(cause, OSError):  # ConnectionError, TimeoutError (asyncio's too)
            return True
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str) and (
            state in _PG_TRANSIENT_STATES or state.startswith(_PG_TRANSIENT_CLASSES)
        ):
            return True
        if any(text in str(cause).lower() for text in _SQLITE_TRANSIENT):
            return True
    return False


def _raised_by_store(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if isinstance(module, str) and module.split(".", 1)[0] in _STORE_PACKAGES:
            return True
        tb = tb.tb_next
    return False


def _cause_of(exc: BaseException) -> str:
    """The driver's message for the log: truncated and redacted (it may quote a DSN)."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    text = f"{type(orig).__name__}: {orig}" if orig is not None else type(exc).__name__
    return redact_text(text[:_CAUSE_CHARS])


def _store_unavailable(request: Request, exc: BaseException) -> Response:
    # A locked SQLite file (past its busy timeout) or an unreachable PostgreSQL: the request
    # may succeed on a retry, so say so instead of answering 500.
    log.warning(
        "store_unavailable",
        error=type(exc).__name__,
        cause=_cause_of(exc),
        path=request.url.path,
        request_id=request_id_of(request.scope),
    )
    return error_response(
        503,
        "unavailable",
        "the store is busy or unreachable; retry",
        request_id_of(request.scope),
        {"Retry-After": "1"},
        path=request.url.path,
    )


async def _store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DBAPIError)
    if _is_transient(exc):
        return _store_unavailable(request, exc)
    # Permanent: on to the generic 500 handler (``_unhandled``), which logs the cause.
    raise exc


async def _os_error(request: Request, exc: Exception) -> Response:
    # asyncpg raises a refused or timed-out connect as a bare OSError / TimeoutError, which
    # SQLAlchemy does not wrap. Only those raised inside the database stack mean "unreachable".
    if _raised_by_store(exc):
        return _store_unavailable(request, exc)
    raise exc


async def _unhandled(request: Request, exc: Exception) -> Response:
    # The cause goes to the log (redacted), never to the client.
    extra = {"cause": _cause_of(exc)} if isinstance(exc, DBAPIError) else {}
    log.error(
        "unhandled_error",
        exc_info=exc,
        path=request.url.path,
        request_id=request_id_of(request.scope),
        **extra,
    )
    return error_response(
        500, "internal", "internal error", request_id_of(request.scope), path=request.url.path
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RelaylineError, _relayline_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _store_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unhandled)
