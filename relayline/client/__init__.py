"""The Python client of relayline: the client half of the protocol (resume from
``(epoch, seq)``, a snapshot reload on ``events.missed``, resends by ``client_msg_id``, the
close-code policy). Like :mod:`relayline.worker` it stands alone: it imports only
:mod:`relayline.protocol`, its own modules, httpx and websockets. See docs/clients.md."""

from relayline.client.backoff import Backoff
from relayline.client.chat import Answer, Chat
from relayline.client.client import RelayClient
from relayline.client.connection import Connection, TokenCallback
from relayline.client.events import (
    ClientError,
    ConnectionStopped,
    Delta,
    Event,
    OpError,
    Reset,
    Snapshot,
    TurnCancelled,
    TurnFailed,
)
from relayline.client.subscription import Subscription

__all__ = [
    "Answer",
    "Backoff",
    "Chat",
    "ClientError",
    "Connection",
    "ConnectionStopped",
    "Delta",
    "Event",
    "OpError",
    "RelayClient",
    "Reset",
    "Snapshot",
    "Subscription",
    "TokenCallback",
    "TurnCancelled",
    "TurnFailed",
]
