"""Browser session tokens: short-lived HS256 JWTs scoped to one tenant and a list of chats.

A token may also reach terminal sessions (``terms``): ``"read"`` lets its holder watch the
terminals attached to its chats, those it lists (``tids``) and those it opened itself;
``"write"`` also lets it open terminals, type into them, resize and end them. Without the
claim a token reaches no terminal.

Tokens are never stored; revoking a tenant (disable) invalidates its tokens because every
use re-checks the tenant.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import jwt

from relayline.errors import Unauthorized

_ALG = "HS256"
_TYPE = "relayline.session"
TerminalAccess = Literal["read", "write"]


@dataclass(frozen=True, slots=True)
class SessionClaims:
    tenant_id: str
    chat_ids: frozenset[str]
    expires_at: int  # unix seconds
    token_id: str
    can_create_chats: bool = False
    can_read_analytics: bool = False
    terminals: TerminalAccess | None = None
    terminal_ids: frozenset[str] = frozenset()
    can_use_completions: bool = False


def mint(
    secret: str,
    tenant_id: str,
    chat_ids: list[str],
    ttl_s: int,
    now_s: int,
    *,
    can_create_chats: bool = False,
    can_read_analytics: bool = False,
    terminals: TerminalAccess | None = None,
    terminal_ids: list[str] | None = None,
    can_use_completions: bool = False,
) -> tuple[str, int]:
    """Return the token and its expiry (unix seconds).

    ``can_create_chats`` lets the holder create chats of its own (a visitor of a public chat,
    the demo); each creation returns a new token that also covers the new chat.
    ``can_read_analytics`` lets it read its tenant's daily figures (``GET /v1/analytics``);
    a visitor of a public chat never gets it. ``can_use_completions`` lets it use the
    OpenAI-compatible gateway (``/v1/chat/completions``, ``/v1/models``).
    """
    exp = now_s + ttl_s
    payload: dict[str, object] = {
        "typ": _TYPE,
        "sub": tenant_id,
        "chats": chat_ids,
        "iat": now_s,
        "exp": exp,
        "jti": secrets.token_urlsafe(12),
    }
    if can_create_chats:
        payload["mk"] = True
    if can_read_analytics:
        payload["an"] = True
    if can_use_completions:
        payload["cp"] = True
    if terminals is not None:
        payload["terms"] = terminals
        if terminal_ids:
            payload["tids"] = sorted(set(terminal_ids))
    return jwt.encode(payload, secret, algorithm=_ALG), exp


def verify(secret: str, token: str) -> SessionClaims:
    """Decode and check signature, expiry and type; raises ``Unauthorized`` otherwise."""
    try:
        payload = jwt.decode(token, secret, algorithms=[_ALG], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("session token expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("invalid session token") from None
    chats = payload.get("chats")
    tids = payload.get("tids")
    if payload.get("typ") != _TYPE or not isinstance(chats, list):
        raise Unauthorized("invalid session token")
    return SessionClaims(
        tenant_id=str(payload["sub"]),
        chat_ids=frozenset(str(c) for c in chats),
        expires_at=int(payload["exp"]),
        token_id=str(payload.get("jti", "")),
        can_create_chats=payload.get("mk") is True,
        can_read_analytics=payload.get("an") is True,
        terminals=_terminal_access(payload.get("terms")),
        terminal_ids=frozenset(str(t) for t in tids) if isinstance(tids, list) else frozenset(),
        can_use_completions=payload.get("cp") is True,
    )


def _terminal_access(value: object) -> TerminalAccess | None:
    if value == "read":
        return "read"
    if value == "write":
        return "write"
    return None


class VerifiedTokens:
    """:func:`verify` with the tokens it accepted remembered (at most ``size``, the least
    recently used dropped first).

    A token's claims are a function of the token and the secret, and of the only check that
    changes with time, its expiry: a remembered token is answered from memory until it
    expires, then refused as :func:`verify` refuses it. What else decides whether a session
    may act (the tenant enabled) is checked on every use by the caller, not here. Refused
    tokens are not remembered (a flood of bad tokens cannot push the good ones out). An entry
    is about 1 KB: 10,000 of them cost about what 1,300 idle WebSockets do (7.5 KB each), and a
    client that reconnects (handshake, then its chat's reload) is found again within a storm of
    that many.
    """

    def __init__(self, secret: str, size: int = 10_000) -> None:
        self._secret = secret
        self._size = size
        self._claims: OrderedDict[str, SessionClaims] = OrderedDict()

    def verify(self, token: str) -> SessionClaims:
        claims = self._claims.get(token)
        if claims is None:
            claims = verify(self._secret, token)
            self._claims[token] = claims
            if len(self._claims) > self._size:
                self._claims.popitem(last=False)
        elif claims.expires_at <= time.time():
            del self._claims[token]
            raise Unauthorized("session token expired")
        else:
            self._claims.move_to_end(token)
        return claims
