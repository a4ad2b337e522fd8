"""The redactor on its own: what counts as a secret, what is kept, and what is left uncopied."""

from __future__ import annotations

import time
from typing import Any

import pytest

from relayline.observability.redaction import (
    CONTENT_OMITTED,
    REDACTED,
    REDACTED_JWT,
    Redactor,
    redact_text,
)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123", "Authorization: Bearer [redacted]"),
        ("authorization=Basic dXNlcjpwYXNz", "authorization=Basic [redacted]"),
        ("sent bearer tok_123 upstream", "sent bearer [redacted] upstream"),
        ("GET /v1/x?token=s3cret&x=1", "GET /v1/x?token=[redacted]&x=1"),
        (
            "/cb?code=abc&state=ok&X-Amz-Signature=ff00",
            "/cb?code=[redacted]&state=ok&X-Amz-Signature=[redacted]",
        ),
        (
            "/ws?access_token=a&apiKey=b&sig=c#frag",
            "/ws?access_token=[redacted]&apiKey=[redacted]&sig=[redacted]#frag",
        ),
        ("key rl_AbC-def_12345 in use", "key rl_[redacted] in use"),
        ("tenant=RL_ABCDEFGHIJ", "tenant=RL_[redacted]"),
        (f"session {JWT} ok", f"session {REDACTED_JWT} ok"),
        ("protocols: relayline.v1, bearer.abc123", "protocols: relayline.v1, bearer.[redacted]"),
        ("postgresql://relay:pa55@db:5432/x", "postgresql://relay:[redacted]@db:5432/x"),
        ("redis://:pa55@cache/0", "redis://:[redacted]@cache/0"),
        ("Set-Cookie: sid=abc; Path=/; HttpOnly", "Set-Cookie: [redacted]"),
        (
            "{'password': 'hunter2', \"api_key\": \"k1\"}",
            "{'password': '[redacted]', \"api_key\": \"[redacted]\"}",
        ),
        ("x-relay-signature: sha256=ab12", "x-relay-signature: [redacted]"),
        ("İstanbul token=abc", "İstanbul token=[redacted]"),  # lower() changes the length
    ],
)
def test_secrets_in_text_are_replaced(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact_text(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "request.done GET /v1/chats/01HX3Z5Q7V8W9Y0A1B2C3D4E5F/messages status=200",
        "max_tokens=512 tokens: 20 keyboard layout",
        "close code=1006 reason=going away",  # "code" is secret only as a URL parameter
        "url_encoded_parameters and curl_options",
        "https://example.com:8443/path?page=2&sort=desc",
    ],
)
def test_ordinary_text_is_returned_untouched(text: str) -> None:
    assert redact_text(text) is text


def test_pathological_input_stays_linear() -> None:
    text = "://a:" + "b" * 50_000 + " token " * 5_000 + "?" + "c" * 50_000 + "&d" * 20_000
    started = time.monotonic()
    redact_text(text)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "key",
    [
        "authorization",
        "Authorization",
        "cookie",
        "Set-Cookie",
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "key",
        "access_token",
        "refresh_token",
        "X-Relay-Signature",
        "Sec-WebSocket-Protocol",
        "admin_key",
        "session_token",
        "client_secret",
        "x-api-key",
    ],
)
def test_secret_keys_are_redacted_at_any_depth(key: str) -> None:
    redactor = Redactor()
    event = {"event": "x", key: "v", "nested": {"deeper": [{key: "v"}]}}

    result = redactor(None, "info", event)

    assert result[key] == REDACTED
    assert result["nested"]["deeper"][0][key] == REDACTED


@pytest.mark.parametrize(
    "key", ["max_tokens", "token_count", "key_id", "tokens", "monkey_business"]
)
def test_lookalike_keys_are_kept(key: str) -> None:
    assert Redactor()(None, "info", {key: "v"})[key] == "v"


def test_header_pairs_are_judged_by_name() -> None:
    headers: list[Any] = [
        (b"authorization", b"Bearer abc"),
        (b"host", b"relay.example"),
        ("Cookie", "sid=1"),
        ["x-api-key", "k"],
        ("user-agent", "curl rl_abcdefghij"),
    ]

    result = Redactor().redact(headers)

    assert result == [
        (b"authorization", REDACTED),
        (b"host", b"relay.example"),
        ("Cookie", REDACTED),
        ["x-api-key", REDACTED],
        ("user-agent", "curl rl_[redacted]"),
    ]
    assert headers[0] == (b"authorization", b"Bearer abc")  # the caller's list is not modified


def test_clean_values_are_not_copied() -> None:
    value = {"chat": {"id": "c1", "tags": ["a", "b"], "sizes": (1, 2.5, None, True)}}
    assert Redactor().redact(value) is value


def test_only_the_changed_branch_is_copied() -> None:
    clean = {"id": "c1"}
    value = {"clean": clean, "dirty": {"token": "t"}}

    result = Redactor().redact(value)

    assert result is not value
    assert result["clean"] is clean
    assert result["dirty"] == {"token": REDACTED}
    assert value["dirty"] == {"token": "t"}


def test_none_secret_stays_none() -> None:
    # "no token was sent" is worth logging and reveals nothing.
    assert Redactor()(None, "info", {"token": None})["token"] is None


def test_objects_are_redacted_through_their_repr() -> None:
    class Upstream:
        def __repr__(self) -> str:
            return "Upstream(url='https://llm.example/v1?api_key=zzz')"

    plain = object()
    result = Redactor().redact([Upstream(), plain, b"Bearer abc", {"tokens"}])

    assert result[0] == "Upstream(url='https://llm.example/v1?api_key=[redacted]')"
    assert result[1] is plain
    assert result[2] == "Bearer [redacted]"
    assert result[3] == {"tokens"}


def test_deep_nesting_is_still_redacted() -> None:
    value: Any = {"password": "deep-secret"}
    for _ in range(20):
        value = {"level": [value]}

    assert "deep-secret" not in repr(Redactor().redact(value))


def test_content_is_omitted_only_when_asked() -> None:
    event = {
        "content": "hello",
        "text": "hi",
        "delta": "h",
        "messages": [{"role": "user", "content": "x"}],
        "prompt": "p",
        "count": {"messages": 4},
    }

    omitted = Redactor(omit_content=True)(None, "info", dict(event))
    kept = Redactor(omit_content=False)(None, "info", dict(event))

    for key in ("content", "text", "delta", "messages", "prompt"):
        assert omitted[key] == CONTENT_OMITTED
    assert omitted["count"] == {"messages": 4}
    assert kept == event


def test_content_does_not_hide_secrets_when_logged() -> None:
    result = Redactor(omit_content=False)(None, "info", {"content": "my key is rl_abcdefghijk"})
    assert result["content"] == "my key is rl_[redacted]"


def test_secrets_used_as_nested_keys_are_redacted() -> None:
    usage = {"rl_abcdefghijk": 3, "anonymous": 1}
    result = Redactor()(None, "info", {"usage": usage})
    assert result["usage"] == {"rl_[redacted]": 3, "anonymous": 1}
