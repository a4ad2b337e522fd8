"""The public chat widget: access codes, proof-of-work challenges, visitor sessions.

A tenant enables a public chat by minting an access code (``POST /v1/public/codes`` with a
tenant key holding the ``sessions`` scope) and putting it in the widget's address,
``/widget#code=…``. A visitor trades the code for a session token that covers one new chat of
their own and nothing else (``POST /v1/public/sessions``). With
``RELAYLINE_PUBLIC_CHALLENGE=on`` the trade first needs a solved proof-of-work challenge
(``GET /v1/public/challenge``): signed, expiring, single-use, solved when
``sha256(challenge + ":" + solution)`` starts with ``RELAYLINE_PUBLIC_CHALLENGE_BITS`` zero bits.

Codes and challenges are signed tokens, so nothing is stored for them: a code is valid until
it expires or its tenant is disabled, so the visitor sessions traded per tenant are
rate-limited (``RELAYLINE_RATE_LIMIT_PUBLIC_SESSIONS``, 429 ``rate_limited``). Spent challenges
go into the shared nonce store (in-process, or Redis when configured), which makes each one
single-use across instances.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

import jwt
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from relayline import session_tokens
from relayline.api.deps import State, TenantSessions
from relayline.api.state import RelayState
from relayline.errors import Conflict, RateLimited, Unauthorized, ValidationFailed
from relayline.observability.metrics import RATE_LIMITED
from relayline.store import chats
from relayline.store.models import Tenant

router = APIRouter(prefix="/v1/public", tags=["public"])

_ALG = "HS256"
CODE_TYPE = "relayline.widget"
CHALLENGE_TYPE = "relayline.pow"
VISITOR_CHAT_TITLE = "Website visitor"
NONCE_SCOPE = "public-challenge"


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_s: int | None = Field(default=None, ge=60, description="Default: the maximum allowed.")


class CodeOut(BaseModel):
    code: str = Field(description="The access code; anyone holding it may open visitor chats.")
    expires_at: int
    widget_path: str


class ChallengeOut(BaseModel):
    required: bool
    challenge: str | None = None
    bits: int | None = None
    expires_at: int | None = None


class VisitorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=2048)
    challenge: str | None = Field(default=None, max_length=2048)
    solution: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{1,64}$")


class VisitorOut(BaseModel):
    token: str
    expires_at: int
    chat_id: str


def _key(secret: str) -> bytes:
    # A key of its own: a leaked widget code can never be replayed as a session token.
    return hmac.new(secret.encode(), b"relayline.public.v1", hashlib.sha256).digest()


def _decode(secret: str, token: str, kind: str, what: str) -> dict[str, Any]:
    try:
        payload: dict[str, Any] = jwt.decode(
            token, _key(secret), algorithms=[_ALG], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized(f"{what} expired") from None
    except jwt.PyJWTError:
        raise Unauthorized(f"invalid {what}") from None
    if payload.get("typ") != kind:
        raise Unauthorized(f"invalid {what}")
    return payload


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte == 0:
            bits += 8
            continue
        return bits + 8 - byte.bit_length()
    return bits


def solves(challenge: str, solution: str, bits: int) -> bool:
    digest = hashlib.sha256(f"{challenge}:{solution}".encode()).digest()
    return leading_zero_bits(digest) >= bits


@router.post("/codes", status_code=201)
async def create_code(body: CodeIn, who: TenantSessions, st: State) -> CodeOut:
    """Enable the public chat for a while: an access code to put in the widget's address."""
    settings = st.settings
    ttl = body.ttl_s if body.ttl_s is not None else settings.public_code_max_ttl_s
    if ttl > settings.public_code_max_ttl_s:
        raise ValidationFailed(f"ttl_s: at most {settings.public_code_max_ttl_s}")
    now = int(time.time())
    payload = {
        "typ": CODE_TYPE,
        "sub": who.require_tenant(),
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(9),
    }
    code = jwt.encode(payload, _key(settings.secret_key.get_secret_value()), algorithm=_ALG)
    return CodeOut(code=code, expires_at=now + ttl, widget_path=f"/widget#code={code}")


@router.get("/challenge")
async def challenge(st: State) -> ChallengeOut:
    """A fresh proof-of-work challenge when the relay asks for one, else ``required: false``."""
    settings = st.settings
    if settings.public_challenge != "on":
        return ChallengeOut(required=False)
    now = int(time.time())
    expires = now + settings.public_challenge_ttl_s
    payload = {
        "typ": CHALLENGE_TYPE,
        "sub": secrets.token_urlsafe(12),
        "bits": settings.public_challenge_bits,
        "iat": now,
        "exp": expires,
    }
    token = jwt.encode(payload, _key(settings.secret_key.get_secret_value()), algorithm=_ALG)
    return ChallengeOut(
        required=True, challenge=token, bits=settings.public_challenge_bits, expires_at=expires
    )


async def _check_challenge(st: RelayState, body: VisitorIn) -> None:
    settings = st.settings
    if not body.challenge or not body.solution:
        raise ValidationFailed("challenge and solution: required (GET /v1/public/challenge)")
    claims = _decode(
        settings.secret_key.get_secret_value(), body.challenge, CHALLENGE_TYPE, "challenge"
    )
    bits = int(claims.get("bits", settings.public_challenge_bits))
    # A challenge issued before the difficulty was raised is held to the current one.
    if not solves(body.challenge, body.solution, max(bits, settings.public_challenge_bits)):
        raise ValidationFailed("solution: does not meet the challenge's difficulty")
    ttl = max(1, int(claims["exp"]) - int(time.time()) + 1)
    if not await st.backends.nonces.add(NONCE_SCOPE, str(claims["sub"]), ttl):
        raise Conflict("challenge already used; fetch a new one")


@router.post("/sessions", status_code=201)
async def visitor_session(body: VisitorIn, st: State) -> VisitorOut:
    """Trade an access code (and a solved challenge) for a chat of the visitor's own."""
    settings = st.settings
    secret = settings.secret_key.get_secret_value()
    claims = _decode(secret, body.code, CODE_TYPE, "access code")
    tenant_id = str(claims["sub"])
    if settings.public_challenge == "on":
        await _check_challenge(st, body)
    # A code is long-lived and cannot be revoked short of disabling the tenant, and every trade
    # creates a chat that stays: the tenant's budget bounds that, whoever holds the code and
    # from however many addresses. Counted after the challenge, so a caller who has not solved
    # one cannot spend the tenant's budget.
    try:
        await st.limiter.hit("public_sessions", tenant_id)
    except RateLimited:
        RATE_LIMITED.labels("public").inc()
        raise
    async with st.db.write() as session:
        tenant = await session.get(Tenant, tenant_id)
        if tenant is None or tenant.disabled:
            raise Unauthorized("this public chat is not available")
        chat = await chats.create_chat(session, tenant_id, VISITOR_CHAT_TITLE)
    token, expires_at = session_tokens.mint(
        secret, tenant_id, [chat.id], settings.public_session_ttl_s, int(time.time())
    )
    return VisitorOut(token=token, expires_at=expires_at, chat_id=chat.id)
