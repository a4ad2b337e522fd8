"""Tenant API keys: ``rl_<prefix>_<secret>``; only a SHA-256 of the whole key is stored.

The prefix finds the row without scanning; the secret carries 256 bits, so a fast hash is
enough (nothing to brute-force) and the comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_KEY = re.compile(r"^rl_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
SCOPES = frozenset({"chats", "sessions", "publish", "terminals"})


@dataclass(frozen=True, slots=True)
class NewKey:
    prefix: str
    key: str
    key_hash: str


def generate() -> NewKey:
    prefix = secrets.token_hex(6)
    key = f"rl_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(prefix=prefix, key=key, key_hash=hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str) -> str | None:
    """The lookup prefix, or None when the value is not shaped like a tenant key."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def matches(key: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), key_hash)
