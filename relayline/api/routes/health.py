"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from relayline.api.deps import Caller, State
from relayline.api.errors import request_id_of
from relayline.errors import Forbidden
from relayline.observability.metrics import READY, exposition

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_S = 2.0


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: answers while the event loop runs; touches nothing."""
    return {"status": "ok"}


@router.get("/health/ready", responses={503: {"description": "a dependency is unavailable"}})
async def ready(request: Request, st: State) -> JSONResponse:
    """Readiness: the store (and the shared bus and limits, when configured) answer."""

    async def store_ok() -> bool:
        await st.db.ping()
        return True

    probes = {
        "store": store_ok(),
        "bus": st.bus.ready(),
        "limits": st.limiter.check_ready(),
        "shared_state": st.backends.ready(),
    }
    checks: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            ok = await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
        except Exception:  # any failure means not ready; the cause is in that part's own logs
            ok = False
        checks[name] = "ok" if ok else "failed"
        READY.labels(name).set(1 if ok else 0)
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
