"""HMAC-SHA256 request signing for workers (v1): what a worker sends and what the relay checks.

Headers: ``X-Relay-Key-Id``, ``X-Relay-Timestamp`` (unix seconds), ``X-Relay-Nonce`` and
``X-Relay-Signature: v1=<hex>``, where the signature is HMAC-SHA256 with the key's secret of::

    "{timestamp}\\n{nonce}\\n{METHOD}\\n{path_with_query}\\n{sha256_hex(body)}"

The relay's side of the check (window, nonce memory, key rotation) is
:mod:`relayline.turns.signing`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER_KEY_ID = "x-relay-key-id"
HEADER_TIMESTAMP = "x-relay-timestamp"
HEADER_NONCE = "x-relay-nonce"
HEADER_SIGNATURE = "x-relay-signature"
MAX_NONCE_LEN = 128


def canonical(timestamp: str, nonce: str, method: str, path_with_query: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{timestamp}\n{nonce}\n{method.upper()}\n{path_with_query}\n{digest}".encode()


def sign(
    secret: str, timestamp: str, nonce: str, method: str, path_with_query: str, body: bytes = b""
) -> str:
    mac = hmac.new(
        secret.encode(), canonical(timestamp, nonce, method, path_with_query, body), hashlib.sha256
    )
    return "v1=" + mac.hexdigest()


def signed_headers(
    key_id: str,
    secret: str,
    method: str,
    path_with_query: str,
    body: bytes = b"",
    now: float | None = None,
) -> dict[str, str]:
    """The headers a worker sends (used by the worker daemon and by tests)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(16)
    return {
        "X-Relay-Key-Id": key_id,
        "X-Relay-Timestamp": timestamp,
        "X-Relay-Nonce": nonce,
        "X-Relay-Signature": sign(secret, timestamp, nonce, method, path_with_query, body),
    }
