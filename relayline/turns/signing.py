"""The relay's side of worker request signing (the scheme itself, shared with the worker, is
:mod:`relayline.protocol.signing`).

The relay accepts ±``window`` seconds, refuses a nonce seen inside the window, compares in
constant time, and knows several keys at once (rotation). A failure names the check that
failed (``signature_invalid``, ``timestamp_out_of_window``, ``nonce_reused``, ``unknown_key``),
never where a signature differs.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

from relayline.errors import Unauthorized
from relayline.protocol.signing import (
    HEADER_KEY_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_NONCE_LEN,
    sign,
)


class NonceStore(Protocol):
    """Remembers nonces for the signature window.

    ``add`` returns False when the nonce was already seen within ``ttl_s`` (a replay) and
    True when it was recorded now; check-and-record is atomic.
    """

    async def add(self, key_id: str, nonce: str, ttl_s: int) -> bool: ...


class MemoryNonceStore:
    """In-process nonce memory, bounded; expired entries are dropped as time passes."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries

    async def add(self, key_id: str, nonce: str, ttl_s: int) -> bool:
        now = time.monotonic()
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self._max:
                break
            del self._seen[oldest]
        token = f"{key_id}\0{nonce}"
        if token in self._seen:
            return False
        self._seen[token] = now + ttl_s
        return True


class SignatureVerifier:
    def __init__(self, keys: Mapping[str, str], nonces: NonceStore, window_s: int = 300) -> None:
        self.keys = dict(keys)
        self.nonces = nonces
        self.window_s = window_s

    async def verify(
        self,
        headers: Mapping[str, str],
        method: str,
        path_with_query: str,
        body: bytes = b"",
        now: float | None = None,
    ) -> str:
        """Return the key id of a valid request; raise ``Unauthorized`` with the failed check."""
        key_id = headers.get(HEADER_KEY_ID, "")
        timestamp = headers.get(HEADER_TIMESTAMP, "")
        nonce = headers.get(HEADER_NONCE, "")
        signature = headers.get(HEADER_SIGNATURE, "")
        if not (key_id and timestamp and nonce and signature):
            raise Unauthorized("missing signature headers", code="signature_invalid")
        secret = self.keys.get(key_id)
        if secret is None:
            raise Unauthorized("unknown key id", code="unknown_key")
        if (
            not timestamp.isdigit()
            or abs(int(timestamp) - (time.time() if now is None else now)) > self.window_s
        ):
            raise Unauthorized(
                "timestamp outside the accepted window", code="timestamp_out_of_window"
            )
        if len(nonce) > MAX_NONCE_LEN:
            raise Unauthorized("nonce too long", code="signature_invalid")
        expected = sign(secret, timestamp, nonce, method, path_with_query, body)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise Unauthorized("signature does not match", code="signature_invalid")
        # Record the nonce only for a valid signature, so garbage cannot fill the store.
        if not await self.nonces.add(key_id, nonce, 2 * self.window_s):
            raise Unauthorized("nonce already used", code="nonce_reused")
        return key_id


def create_nonce_store(redis: Any | None, key_prefix: str) -> NonceStore:
    """The nonce memory of this process's shared-state backend: Redis when the process has a
    Redis client (every instance must refuse a nonce any of them has seen), else in-process."""
    if redis is None:
        return MemoryNonceStore()
    from relayline.turns.redis_nonces import RedisNonceStore

    return RedisNonceStore(redis, key_prefix)
