"""The event bus family: pick a backend by URL scheme with :func:`create_bus`.

``memory://`` (or no URL) gives the in-process :class:`~relayline.bus.memory.MemoryBus`;
``redis://`` and ``rediss://`` give :class:`~relayline.bus.redis_streams.RedisStreamsBus`.
Backends are imported only when chosen, so the Redis client loads only when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any, cast
from urllib.parse import urlsplit

from relayline.bus.base import EVENTS_MISSED, Bus, History, Listener, Subscription

__all__ = ["EVENTS_MISSED", "Bus", "History", "Listener", "Subscription", "create_bus"]

# scheme -> ("module:Class", whether the constructor takes the URL)
_BACKENDS: dict[str, tuple[str, bool]] = {
    "memory": ("relayline.bus.memory:MemoryBus", False),
    "redis": ("relayline.bus.redis_streams:RedisStreamsBus", True),
    "rediss": ("relayline.bus.redis_streams:RedisStreamsBus", True),
}


def create_bus(url: str | None, **opts: Any) -> Bus:
    """Build the bus for ``url``; ``opts`` go to the backend's constructor.

    Raises :class:`ValueError` naming the supported schemes when the scheme is unknown.
    """
    scheme = urlsplit(url).scheme.lower() if url else "memory"
    try:
        target, takes_url = _BACKENDS[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in _BACKENDS)
        raise ValueError(
            f"unsupported bus URL scheme {scheme + '://' if scheme else repr(url)}; "
            f"use one of: {known}"
        ) from None
    module_name, _, class_name = target.partition(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    return cast(Bus, backend(url, **opts) if takes_url else backend(**opts))
