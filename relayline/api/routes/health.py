"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from relayline.api.deps import Caller, State
from relayline.api.errors import request_id_of
from relayline.errors import Forbidden
from relayline.observability.metrics import exposition

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_S = 2.0


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: answers while the event loop runs; touches nothing."""
    return {"status": "ok"}


@router.get("/health/ready", responses={503: {"description": "a dependency is unavailable"}})
async def ready(request: Request, st: State) -> JSONResponse:
    """Readiness: the store (and the shared bus and limits, when configured) answer."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(st.db.ping(), CHECK_TIMEOUT_S)
        checks["store"] = "ok"
    except Exception:  # any failure means not ready; the cause is in the store's own logs
        checks["store"] = "failed"
    try:
        limits_ok = await asyncio.wait_for(st.limiter.check_ready(), CHECK_TIMEOUT_S)
    except Exception:
        limits_ok = False
    checks["limits"] = "ok" if limits_ok else "failed"
    failed = [name for name, value in checks.items() if value != "ok"]
    if not failed:
        return JSONResponse({"status": "ready", "checks": checks})
    request_id = request_id_of(request.scope)
    return JSONResponse(
        {
            "status": "not_ready",
            "checks": checks,
            "error": {
                "code": "unavailable",
                "detail": f"unavailable: {', '.join(failed)}",
                "request_id": request_id,
            },
        },
        status_code=503,
    )


@router.get("/metrics", response_class=Response)
async def metrics(who: Caller) -> Response:
    """Prometheus exposition; needs the metrics token or the admin key."""
    if who.kind not in ("metrics", "admin"):
        raise Forbidden("metrics token required")
    body, content_type = exposition()
    return Response(body, media_type=content_type)
