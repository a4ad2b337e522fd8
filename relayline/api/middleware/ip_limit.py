"""Per-client-IP rate limit for every HTTP request; probes and metrics have their own budget."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from relayline.api.errors import render, request_id_of
from relayline.errors import RateLimited
from relayline.limits import ClientIpResolver, RateLimiter
from relayline.observability.metrics import RATE_LIMITED

_PROBES = ("/health", "/health/ready", "/metrics")


class IpRateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter, resolver: ClientIpResolver) -> None:
        self.app = app
        self.limiter = limiter
        self.resolver = resolver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address, key = self.resolver.resolve(scope)
        scope.setdefault("state", {})["client_ip"] = address
        category = "health" if scope.get("path") in _PROBES else "ip"
        try:
            await self.limiter.hit(category, key)
        except RateLimited as exc:
            RATE_LIMITED.labels(category).inc()
            await render(exc, request_id_of(scope), scope.get("path"))(scope, receive, send)
            return
        await self.app(scope, receive, send)
