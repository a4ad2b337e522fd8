"""Who is calling: admin key, tenant API key, browser session token or metrics token.

``Authenticator.authenticate`` turns a bearer credential into a :class:`Principal` or raises
``Unauthorized``. Tenant keys and tenant status are cached for ``CACHE_TTL_S`` so a busy
client does not cost a database round-trip per request; a revoked key or disabled tenant is
refused at the latest that long after the change.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from relayline import api_keys, session_tokens
from relayline.clock import now_ms
from relayline.config import Settings
from relayline.errors import Forbidden, Unauthorized
from relayline.store import tenants
from relayline.store.database import Database
from relayline.store.models import Tenant

CACHE_TTL_S = 5.0
CACHE_SIZE = 10_000
Kind = Literal["admin", "tenant", "session", "metrics"]
SESSION_COOKIE = "relayline_session"
# The query parameter that may carry a session token (SSE and WebSocket handshakes), and what a
# key found there is told.
URL_CREDENTIAL = "access_token"
KEY_IN_URL = "only a session token may be sent in a URL; send keys in the Authorization header"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Kind
    tenant_id: str | None = None
    key_id: str | None = None
    chat_ids: frozenset[str] | None = None  # a session's chats; None: every chat of the tenant
    scopes: frozenset[str] = frozenset()
    can_create_chats: bool = False  # a session allowed to open chats of its own
    can_read_analytics: bool = False  # a session allowed to read its tenant's daily figures
    can_use_completions: bool = False  # a session allowed to use the OpenAI-compatible gateway
    expires_at: int | None = None  # a session's expiry (unix seconds)
    # A session's reach into terminal sessions (see relayline.session_tokens); keys: scopes.
    terminals: session_tokens.TerminalAccess | None = None
    terminal_ids: frozenset[str] = frozenset()

    @property
    def rate_key(self) -> str:
        """The identity a rate limit counts against (never the secret itself)."""
        return f"{self.kind}:{self.key_id or self.tenant_id or '-'}"

    def allows_chat(self, chat_id: str) -> bool:
        return self.chat_ids is None or chat_id in self.chat_ids

    def require_tenant(self) -> str:
        if self.tenant_id is None:
            raise Forbidden("this credential does not act for a tenant")
        return self.tenant_id


class _TtlCache:
    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[float, object]] = OrderedDict()

    def get(self, key: str) -> object | None:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        return item[1]

    def put(self, key: str, value: object) -> None:
        self._items[key] = (time.monotonic() + CACHE_TTL_S, value)
        self._items.move_to_end(key)
        while len(self._items) > CACHE_SIZE:
            self._items.popitem(last=False)


class Authenticator:
    def __init__(self, settings: Settings, db: Database) -> None:
        self._admin = settings.admin_key.get_secret_value().encode()
        self._metrics = (
            settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None
        )
        self._sessions = session_tokens.VerifiedTokens(settings.secret_key.get_secret_value())
        self._db = db
        self._keys = _TtlCache()
        self._tenants = _TtlCache()

    async def authenticate(self, credential: str | None) -> Principal:
        if not credential:
            raise Unauthorized("missing credentials")
        raw = credential.encode()
        if hmac.compare_digest(raw, self._admin):
            return Principal(kind="admin")
        if self._metrics is not None and hmac.compare_digest(raw, self._metrics):
            return Principal(kind="metrics")
        if credential.startswith("rl_"):
            return await self._tenant_key(credential)
        return await self._session(credential)

    def is_long_lived(self, credential: str) -> bool:
        """Whether this is a key (admin, metrics or tenant) rather than a session token: keys
        may not travel in a URL, where proxy logs, history and ``Referer`` keep them."""
        raw = credential.encode()
        if hmac.compare_digest(raw, self._admin):
            return True
        if self._metrics is not None and hmac.compare_digest(raw, self._metrics):
            return True
        return credential.startswith("rl_")

    async def _tenant_key(self, key: str) -> Principal:
        cache_key = api_keys.hash_key(key)
        cached = self._keys.get(cache_key)
        if isinstance(cached, Principal):
            return cached
        # Looked up in a read: a wrong key must not take the write lock (SQLite's only one).
        async with self._db.read() as session:
            found = await tenants.find_key(session, key)
        if found is None:
            raise Unauthorized("invalid API key")
        row, tenant = found
        now = now_ms()
        if row.last_used_at is None or row.last_used_at < now - tenants.LAST_USED_RESOLUTION_MS:
            async with self._db.write() as session:
                await tenants.touch_key(session, row.id, now)
        principal = Principal(
            kind="tenant", tenant_id=tenant.id, key_id=row.id, scopes=frozenset(row.scopes)
        )
        self._keys.put(cache_key, principal)
        return principal

    async def _session(self, token: str) -> Principal:
        claims = self._sessions.verify(token)
        if not await self._tenant_enabled(claims.tenant_id):
            raise Unauthorized("tenant disabled")
        return Principal(
            kind="session",
            tenant_id=claims.tenant_id,
            key_id=claims.token_id,
            chat_ids=claims.chat_ids,
            can_create_chats=claims.can_create_chats,
            can_read_analytics=claims.can_read_analytics,
            can_use_completions=claims.can_use_completions,
            expires_at=claims.expires_at,
            terminals=claims.terminals,
            terminal_ids=claims.terminal_ids,
        )

    async def _tenant_enabled(self, tenant_id: str) -> bool:
        cached = self._tenants.get(tenant_id)
        if isinstance(cached, bool):
            return cached
        async with self._db.read() as session:
            tenant = await session.get(Tenant, tenant_id)
            enabled = tenant is not None and not tenant.disabled
        self._tenants.put(tenant_id, enabled)
        return enabled

    async def still_valid(
        self, key_ids: Collection[str], tenant_ids: Collection[str]
    ) -> tuple[set[str], set[str]]:
        """Which of these tenant keys and tenants are still good, read from the store (never
        from the cache): the re-validation of live connections."""
        async with self._db.read() as session:
            return await tenants.still_valid(session, key_ids, tenant_ids)

    def forget(self) -> None:
        """Drop cached decisions (after a key revocation or tenant change on this instance)."""
        self._keys = _TtlCache()
        self._tenants = _TtlCache()
