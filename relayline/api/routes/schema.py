"""The API's OpenAPI document in production: for the admin key only.

In development the relay serves ``/openapi.json`` and the Swagger UI at ``/docs`` to anyone.
In production neither is public (the explorer loads scripts from a CDN, and the schema maps
the attack surface): ``/docs`` does not exist, and ``/openapi.json`` answers only a GET carrying
the admin key. Anything else gets the very 404 of a path that does not exist, whatever the
method, and without a store lookup (whose delay or failure would tell the path apart).
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from relayline.api.state import relay_state


def _bearer_token(request: Request) -> bytes:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""


async def _answer(request: Request) -> Response:
    admin_key = relay_state(request).settings.admin_key.get_secret_value().encode()
    if not hmac.compare_digest(_bearer_token(request), admin_key):
        raise HTTPException(404)  # what the router answers for an unknown path
    if request.method not in ("GET", "HEAD"):
        raise HTTPException(405, headers={"Allow": "GET, HEAD"})
    return JSONResponse(request.app.openapi())


class OpenApiForAdmin:
    """The endpoint, as an ASGI class rather than a function: a route to a function serves only
    its listed methods and answers the others 405, which would reveal the path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await _answer(Request(scope, receive))
        await response(scope, receive, send)


router = APIRouter()
router.routes.append(Route("/openapi.json", OpenApiForAdmin(), include_in_schema=False))
