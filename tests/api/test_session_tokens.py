"""Session tokens remembered once verified: the same answers as verifying each time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from relayline import session_tokens
from relayline.errors import Unauthorized
from relayline.session_tokens import SessionClaims, VerifiedTokens

SECRET = "s" * 40
TENANT = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens actually decoded (signature checked), in order."""
    seen: list[str] = []
    real = session_tokens.verify

    def counting(secret: str, token: str) -> SessionClaims:
        seen.append(token)
        return real(secret, token)

    monkeypatch.setattr(session_tokens, "verify", counting)
    return seen


def _token(chat: str = "c1", ttl_s: int = 600, **kw: Any) -> str:
    token, _ = session_tokens.mint(SECRET, TENANT, [chat], ttl_s, int(time.time()), **kw)
    return token


def test_a_token_is_decoded_once_and_answers_the_same_claims(decodes: list[str]) -> None:
    tokens = VerifiedTokens(SECRET)
    token = _token(can_create_chats=True, terminals="read")

    first = tokens.verify(token)
    again = tokens.verify(token)

    assert again == first == session_tokens.verify(SECRET, token)
    assert first.tenant_id == TENANT and first.chat_ids == {"c1"} and first.can_create_chats
    assert decodes == [token, token]  # twice: the remembered use and the direct call above


def test_a_remembered_token_is_refused_once_it_expires(
    decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = VerifiedTokens(SECRET)
    token = _token(ttl_s=60)
    claims = tokens.verify(token)

    monkeypatch.setattr(session_tokens.time, "time", lambda: claims.expires_at - 0.5)
    assert tokens.verify(token) == claims
    monkeypatch.setattr(session_tokens.time, "time", lambda: float(claims.expires_at))
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(token)
    monkeypatch.setattr(session_tokens.time, "time", lambda: claims.expires_at - 30.0)
    # Forgotten with its expiry: the next use decodes it again (and the real clock accepts it).
    assert tokens.verify(token) == claims
    assert len(decodes) == 2


def test_refused_tokens_are_decoded_every_time_and_not_remembered(decodes: list[str]) -> None:
    tokens = VerifiedTokens(SECRET, size=2)
    good = _token()
    tokens.verify(good)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    other_secret, _ = session_tokens.mint("t" * 40, TENANT, ["c1"], 600, int(time.time()))
    for bad in (forged, other_secret, "not-a-token", forged):
        with pytest.raises(Unauthorized):
            tokens.verify(bad)
    # The good token is still remembered: bad ones took no room.
    tokens.verify(good)
    assert decodes == [good, forged, other_secret, "not-a-token", forged]


def test_at_most_size_tokens_are_remembered_least_recently_used_first_out(
    decodes: list[str],
) -> None:
    tokens = VerifiedTokens(SECRET, size=2)
    a, b, c = _token("a"), _token("b"), _token("c")
    tokens.verify(a)
    tokens.verify(b)
    tokens.verify(a)  # a is now the most recently used
    tokens.verify(c)  # b goes
    tokens.verify(a)
    tokens.verify(c)
    assert decodes == [a, b, c]
    tokens.verify(b)
    assert decodes == [a, b, c, b]
