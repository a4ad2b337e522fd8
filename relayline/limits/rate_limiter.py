"""Request rate limits per category (``ip``, ``identity``, ``chat``, ``health``,
``public_sessions``).

Built on the asynchronous API of :pypi:`limits`. The storage is picked by URL scheme from
``Settings.limits_storage_url``: ``memory://`` keeps counters in this process (the library's
storage with its clean-up run in the event loop: :mod:`relayline.limits.memory_storage`),
``redis://`` (``async+redis://``, ``rediss://``, ``redis+unix://``) shares them between
instances.

The limiter protects the relay; it must never be the reason the relay is down. When the storage
fails (Redis unreachable, a timeout) a request is let through, a throttled warning is logged and
``relayline_rate_limit_storage_errors_total`` is incremented.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Final

import structlog
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from prometheus_client import Counter

from relayline.config import ConfigError, Settings
from relayline.errors import RateLimited
from relayline.limits.memory_storage import InlineExpiryMemoryStorage

CATEGORIES: Final = ("ip", "identity", "chat", "health", "public_sessions")
"""The rate-limit categories; each reads ``Settings.rate_limit_<category>``."""

STORAGE_ERRORS: Final = Counter(
    "relayline_rate_limit_storage_errors_total",
    "Rate-limit checks that failed open because the limiter storage raised or timed out.",
    ["category"],
)

_log = structlog.get_logger(__name__)

# Warnings about a failing storage are emitted at most this often: during an outage every
# request fails open, and one line per request would drown the logs (the counter still counts
# each one).
_WARN_INTERVAL_S: Final = 10.0

_STORAGE_SETTING = "RELAYLINE_RATE_LIMIT_STORAGE_URL (or RELAYLINE_REDIS_URL)"

# limits defaults to the coredis client for async Redis; relayline depends on redis-py, so the
# redis-py bridge is selected explicitly. Socket timeouts keep a stalled Redis from holding
# requests longer than the limiter's own deadline.
_REDIS_OPTIONS: Final[dict[str, float | str | bool]] = {
    "implementation": "redispy",
    "socket_timeout": 1.0,
    "socket_connect_timeout": 1.0,
}
_STORAGE_OPTIONS: Final[dict[str, dict[str, float | str | bool]]] = {
    "async+memory": {},
    "async+redis": _REDIS_OPTIONS,
    "async+rediss": _REDIS_OPTIONS,
    "async+redis+unix": _REDIS_OPTIONS,
}


def storage_for_url(url: str) -> Storage:
    """An asynchronous ``limits`` storage for ``url``; ``async+`` is added when missing.

    Raises :class:`~relayline.config.ConfigError` at start-up for an unsupported scheme, a
    missing client library or a malformed URL. The message never repeats the URL, which may
    hold a password.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not scheme.startswith("async+"):
        scheme = "async+" + scheme
    options = _STORAGE_OPTIONS.get(scheme) if sep else None
    if options is None:
        supported = ", ".join(s.removeprefix("async+") + "://" for s in _STORAGE_OPTIONS)
        raise ConfigError(f"{_STORAGE_SETTING}: unsupported storage URL; use one of {supported}")
    if scheme == "async+memory":
        return InlineExpiryMemoryStorage()
    try:
        storage = storage_from_string(f"{scheme}://{rest}", **options)
    except ConfigurationError as exc:
        raise ConfigError(f"{_STORAGE_SETTING}: {exc}") from None
    except ValueError:
        raise ConfigError(f"{_STORAGE_SETTING}: malformed {scheme} URL") from None
    if not isinstance(storage, Storage):  # pragma: no cover - every scheme above is async
        raise ConfigError(f"{_STORAGE_SETTING}: {scheme} is not an asynchronous storage")
    return storage


def _parse_limits(text: str) -> tuple[RateLimitItem, ...]:
    # Shortest window first: a burst is refused by the per-second limit before it can consume
    # slots of the per-minute one, so a client that backs off gets its longer budget back sooner.
    return tuple(sorted(parse_many(text), key=lambda item: item.get_expiry()))


class RateLimiter:
    """Counts requests per ``(category, key)`` against the configured limits.

    Strategy: *moving window*. It is exact: a "60/minute" limit never admits more than 60
    requests in any 60 seconds, whereas a fixed window admits up to twice the limit around a
    window boundary. The cost is one stored timestamp per admitted request, so memory per key is
    bounded by the limit's amount. Fixed-window-elastic is not used: ``limits`` 5 no longer
    ships it, and it extends a lock-out on every refused request, which would keep an entire
    NAT or IPv6 /64 locked out while a single client there keeps retrying.

    Guarantees:

    * Keys are namespaced as ``[key_prefix:]rl:<category>:<key>``, so categories never share a
      counter and instances or tests given different prefixes never collide in one Redis.
    * A request is admitted only if every limit of its category admits it; a refusal raises
      :class:`~relayline.errors.RateLimited` with ``retry_after`` = whole seconds until the
      exhausted windows free a slot (at least 1).
    * Storage failures never propagate: the request is admitted (fail open), the failure is
      counted and logged. Programming errors (unknown category, ``cost < 1``) do raise.

    Use it as an async context manager, or call :meth:`close`, so the storage's connections and
    background task are released.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        key_prefix: str = "",
        storage: Storage | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        """Build the limiter from ``settings``.

        ``storage`` replaces the one chosen from ``settings.limits_storage_url`` (the caller then
        keeps ownership and closes it). ``timeout_s`` bounds the storage work of one call; past
        it the call fails open.
        """
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._owns_storage = storage is None
        self._storage = (
            storage if storage is not None else storage_for_url(settings.limits_storage_url)
        )
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._limits: dict[str, tuple[RateLimitItem, ...]] = {
            "ip": _parse_limits(settings.rate_limit_ip),
            "identity": _parse_limits(settings.rate_limit_identity),
            "chat": _parse_limits(settings.rate_limit_chat),
            "health": _parse_limits(settings.rate_limit_health),
            "public_sessions": _parse_limits(settings.rate_limit_public_sessions),
        }
        self._namespace = f"{key_prefix}:rl" if key_prefix else "rl"
        self._timeout_s = timeout_s
        self._last_warning = -math.inf
        self._suppressed_warnings = 0

    def limits_for(self, category: str) -> tuple[RateLimitItem, ...]:
        """The parsed limits of ``category``, shortest window first; ``ValueError`` if unknown."""
        try:
            return self._limits[category]
        except KeyError:
            raise ValueError(f"unknown rate-limit category {category!r}") from None

    def storage_key(self, category: str, key: str) -> str:
        """The namespaced identifier under which ``key`` is counted in ``category``."""
        return f"{self._namespace}:{category}:{key}"

    async def hit(self, category: str, key: str, cost: int = 1) -> None:
        """Count ``cost`` requests for ``key`` in ``category``.

        Raises :class:`~relayline.errors.RateLimited` when one of the category's limits is
        exhausted. Returns normally when admitted, and also when the storage failed.
        """
        items = self.limits_for(category)
        if cost < 1:
            raise ValueError("cost must be at least 1")
        identifier = self.storage_key(category, key)
        refused_by: RateLimitItem | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                for item in items:
                    if not await self._strategy.hit(item, identifier, cost=cost):
                        refused_by = item
                        break
        except Exception as exc:  # any storage fault; cancellation is not an Exception
            self._storage_failed(category, exc)
            return
        if refused_by is None:
            return
        raise RateLimited(
            retry_after=await self._retry_after(category, items, identifier, cost, refused_by)
        )

    async def _retry_after(
        self,
        category: str,
        items: Sequence[RateLimitItem],
        identifier: str,
        cost: int,
        refused_by: RateLimitItem,
    ) -> int:
        # Several windows may be exhausted at once (the second and the minute); advertising only
        # the shortest would invite a retry that is certain to be refused again.
        try:
            async with asyncio.timeout(self._timeout_s):
                now = time.time()
                wait = 0.0
                for item in items:
                    stats = await self._strategy.get_window_stats(item, identifier)
                    if stats.remaining < cost:
                        wait = max(wait, stats.reset_time - now)
        except Exception as exc:
            # The refusal stands; a full window is the longest a slot can take to free up.
            self._storage_failed(category, exc)
            wait = float(refused_by.get_expiry())
        return max(1, math.ceil(wait))

    def _storage_failed(self, category: str, exc: Exception) -> None:
        STORAGE_ERRORS.labels(category=category).inc()
        now = time.monotonic()
        if now - self._last_warning < _WARN_INTERVAL_S:
            self._suppressed_warnings += 1
            return
        _log.warning(
            "rate_limit_storage_failed",
            category=category,
            error=type(exc).__name__,
            detail=str(exc)[:200],
            suppressed=self._suppressed_warnings,
            action="request admitted without a rate-limit check",
        )
        self._last_warning = now
        self._suppressed_warnings = 0

    async def check_ready(self) -> bool:
        """True when the storage answers its health check within the timeout; never raises."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return bool(await self._storage.check())
        except Exception as exc:
            _log.warning("rate_limit_storage_not_ready", error=type(exc).__name__)
            return False

    async def close(self) -> None:
        """Release the storage's connections and background task; safe to call twice.

        An injected storage is left open for its owner.
        """
        if not self._owns_storage:
            return
        # ``limits`` storages have no close(): the Redis bridge keeps a redis-py client that
        # must be closed explicitly (or it leaks sockets and warns when collected), and the
        # memory storage keeps an expiry task that must not outlive the event loop.
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            await aclose()
        if isinstance(self._storage, MemoryStorage):
            timer = self._storage.timer
            if timer is not None and not timer.done():
                timer.cancel()
                await asyncio.gather(timer, return_exceptions=True)

    async def __aenter__(self) -> RateLimiter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"RateLimiter(storage={type(self._storage).__name__}, "
            f"namespace={self._namespace!r}, strategy=moving-window)"
        )
