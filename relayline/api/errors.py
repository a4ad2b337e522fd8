"""One JSON shape for every HTTP error: ``{"error": {"code", "detail", "request_id"}}``."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from relayline.errors import RateLimited, RelaylineError

log = structlog.get_logger("relayline.api")

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
    status: int, code: str, detail: str, request_id: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "detail": detail, "request_id": request_id}}
    all_headers = {"X-Request-ID": request_id} if request_id else {}
    all_headers.update(headers or {})
    return JSONResponse(body, status_code=status, headers=all_headers)


def render(exc: RelaylineError, request_id: str) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    return error_response(exc.status, exc.code, exc.detail, request_id, headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


async def _relayline_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelaylineError)
    return render(exc, request_id_of(request.scope))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{_field(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:10]]
    return error_response(
        422,
        "validation_error",
        "; ".join(problems) or "invalid request",
        request_id_of(request.scope),
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(
        exc.status_code, "internal" if exc.status_code >= 500 else "validation_error"
    )
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(
        exc.status_code, code, detail, request_id_of(request.scope), dict(exc.headers or {})
    )


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    # A locked SQLite file (past its busy timeout) or an unreachable PostgreSQL: the request
    # may succeed on a retry, so say so instead of answering 500.
    log.warning(
        "store_unavailable",
        error=type(exc).__name__,
        path=request.url.path,
        request_id=request_id_of(request.scope),
    )
    return error_response(
        503,
        "unavailable",
        "the store is busy or unreachable; retry",
        request_id_of(request.scope),
        {"Retry-After": "1"},
    )


async def _unhandled(request: Request, exc: Exception) -> Response:
    # The cause goes to the log (redacted), never to the client.
    log.error(
        "unhandled_error",
        exc_info=exc,
        path=request.url.path,
        request_id=request_id_of(request.scope),
    )
    return error_response(500, "internal", "internal error", request_id_of(request.scope))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RelaylineError, _relayline_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _store_unavailable)
    app.add_exception_handler(Exception, _unhandled)
