"""WebSocket close codes, with what a client does next (the design's catalogue).

The 4xxx range is relayline's own; 1xxx codes are RFC 6455's. :data:`ACTIONS` is the one
table of what a client does after each code; the web UI's copy is generated from it
(``relayline/web/static/js/protocol.js``, see :mod:`relayline.protocol.jsmodule`).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Close(IntEnum):
    NORMAL = 1000
    PROTOCOL_ERROR = 1002  # the peer broke RFC 6455 (unmasked frame, bad opcode, …)
    INVALID_DATA = 1007  # e.g. a text frame that is not UTF-8
    TOO_BIG = 1009  # frame too big: fix the sender, do not resend the same frame
    INTERNAL = 1011
    RESTARTING = 1012  # relay restarting: reconnect (to any instance), resume with epoch/seq
    SLOW = 4009  # outbound queue overflowed: reconnect, resume with epoch/seq
    UNAUTHENTICATED = 4401  # missing/expired/revoked credentials: new token, then reconnect
    FORBIDDEN = 4403  # origin or topic not allowed: do not reconnect
    HEARTBEAT_TIMEOUT = 4408  # silent past the timeout: reconnect at once, resume
    RATE_LIMITED = 4429  # op rate (or connection count) exceeded: reconnect after a backoff


class ClientAction(StrEnum):
    """What a client does after a close; every reconnect resumes with ``(epoch, seq)``."""

    STOP = "stop"  # do not reconnect; show the error
    NEW_TOKEN = "new_token"  # noqa: S105 - get a new credential first; never loop on the same
    NOW = "now"  # reconnect at once (then back off if that fails too)
    # Reconnect after a random delay within the restart spread: every client of a restarting
    # instance comes back, to any instance, but not all in the same instant.
    JITTERED = "jittered"
    BACKOFF = "backoff"  # reconnect after an exponential, jittered backoff


ACTIONS: dict[Close, ClientAction] = {
    Close.NORMAL: ClientAction.STOP,
    Close.PROTOCOL_ERROR: ClientAction.STOP,
    Close.INVALID_DATA: ClientAction.STOP,
    # The frame itself must not be sent again (the client fails that one op); the connection
    # comes back, or one oversized message would strand the whole page.
    Close.TOO_BIG: ClientAction.BACKOFF,
    Close.INTERNAL: ClientAction.BACKOFF,
    Close.RESTARTING: ClientAction.JITTERED,
    Close.SLOW: ClientAction.NOW,
    Close.UNAUTHENTICATED: ClientAction.NEW_TOKEN,
    Close.FORBIDDEN: ClientAction.STOP,
    Close.HEARTBEAT_TIMEOUT: ClientAction.NOW,
    Close.RATE_LIMITED: ClientAction.BACKOFF,
}
# Any other code (1006 for a dropped connection, say): back off.
DEFAULT_ACTION = ClientAction.BACKOFF
# How long the clients of a restarting relay spread their reconnects over.
RESTART_SPREAD_MS = 3000
