"""What the HTTP and WebSocket handlers share for the life of the process."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from relayline.auth import Authenticator
from relayline.backends import SharedState
from relayline.bus.base import Bus
from relayline.chat_service import ChatService
from relayline.completions.service import CompletionService
from relayline.config import Settings
from relayline.hub.acl import TopicAcl
from relayline.hub.gateway import Gateway
from relayline.hub.hub import Hub
from relayline.limits import ClientIpResolver, RateLimiter
from relayline.live_credentials import LiveCredentials
from relayline.store.database import Database
from relayline.terminals.service import TerminalService
from relayline.turns.dispatcher import TurnDispatcher
from relayline.turns.worker_gateway import WorkerGateway


@dataclass(slots=True)
class RelayState:
    settings: Settings
    db: Database
    limiter: RateLimiter
    resolver: ClientIpResolver
    auth: Authenticator
    bus: Bus
    hub: Hub
    acl: TopicAcl
    chats: ChatService
    gateway: Gateway
    dispatcher: TurnDispatcher
    workers: WorkerGateway
    backends: SharedState
    credentials: LiveCredentials
    terminals: TerminalService
    completions: CompletionService


def relay_state(conn: HTTPConnection) -> RelayState:
    state: RelayState = conn.app.state.relay
    return state
