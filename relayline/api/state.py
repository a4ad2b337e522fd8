"""What the HTTP and WebSocket handlers share for the life of the process."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from relayline.auth import Authenticator
from relayline.config import Settings
from relayline.limits import ClientIpResolver, RateLimiter
from relayline.store.database import Database


@dataclass(slots=True)
class RelayState:
    settings: Settings
    db: Database
    limiter: RateLimiter
    resolver: ClientIpResolver
    auth: Authenticator


def relay_state(conn: HTTPConnection) -> RelayState:
    state: RelayState = conn.app.state.relay
    return state
