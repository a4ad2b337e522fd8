"""WebSocket close codes, with what a client does next (the design's catalogue).

The 4xxx range is relayline's own; 1xxx codes are RFC 6455's. ``RECONNECT`` tells a client
library which codes are worth a reconnect, and how.
"""

from __future__ import annotations

from enum import IntEnum


class Close(IntEnum):
    NORMAL = 1000
    PROTOCOL_ERROR = 1002  # the peer broke RFC 6455 (unmasked frame, bad opcode, …)
    INVALID_DATA = 1007  # e.g. a text frame that is not UTF-8
    TOO_BIG = 1009  # frame too big: fix the sender, do not resend the same frame
    INTERNAL = 1011
    RESTARTING = 1012  # relay restarting: reconnect (to any instance), resume with epoch/seq
    SLOW = 4009  # outbound queue overflowed: reconnect, resume with epoch/seq
    UNAUTHENTICATED = 4401  # missing/expired credentials: get a new token, then reconnect
    FORBIDDEN = 4403  # origin or topic not allowed: do not reconnect
    HEARTBEAT_TIMEOUT = 4408  # silent past the timeout: reconnect at once, resume
    RATE_LIMITED = 4429  # op rate (or connection count) exceeded: reconnect after a backoff


RECONNECT: dict[int, str] = {
    Close.NORMAL: "no",
    Close.PROTOCOL_ERROR: "no",
    Close.INVALID_DATA: "no",
    Close.TOO_BIG: "no",
    Close.INTERNAL: "backoff",
    Close.RESTARTING: "resume",
    Close.SLOW: "resume",
    Close.UNAUTHENTICATED: "new_token",
    Close.FORBIDDEN: "no",
    Close.HEARTBEAT_TIMEOUT: "resume",
    Close.RATE_LIMITED: "backoff",
}
