"""The API's OpenAPI document in production: for the admin key only.

In development the relay serves ``/openapi.json`` and the Swagger UI at ``/docs`` to anyone.
In production neither is public (the explorer loads scripts from a CDN, and the schema maps
the attack surface): ``/docs`` does not exist, and ``/openapi.json`` answers only a request
carrying the admin key — 404 ``not_found`` to anything else, so its presence is not revealed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from relayline.api.deps import bearer
from relayline.api.state import relay_state
from relayline.errors import NotFound, Unauthorized

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
async def openapi_for_admin(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> JSONResponse:
    try:
        who = await relay_state(request).auth.authenticate(creds.credentials if creds else None)
    except Unauthorized:
        who = None
    if who is None or who.kind != "admin":
        raise NotFound("not found")
    return JSONResponse(request.app.openapi())
