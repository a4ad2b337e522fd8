"""Rate limits, client addresses and concurrent-connection caps.

* :mod:`.client_ip` — the real client address behind trusted proxies, and its rate key.
* :mod:`.rate_limiter` — request rate limits per category on top of :pypi:`limits`.
* :mod:`.connection_caps` — caps on WebSockets/SSE held open per identity and per IP.
"""

from __future__ import annotations

from relayline.limits.client_ip import (
    UNKNOWN,
    ClientIp,
    ClientIpResolver,
    IPNetwork,
    client_address,
    parse_networks,
    rate_key,
)
from relayline.limits.connection_caps import (
    TOO_MANY_CONNECTIONS,
    ConnectionCaps,
    ConnectionCapStore,
    MemoryConnectionCapStore,
    create_cap_store,
)
from relayline.limits.rate_limiter import (
    CATEGORIES,
    STORAGE_ERRORS,
    RateLimiter,
    storage_for_url,
)

__all__ = [
    "CATEGORIES",
    "STORAGE_ERRORS",
    "TOO_MANY_CONNECTIONS",
    "UNKNOWN",
    "ClientIp",
    "ClientIpResolver",
    "ConnectionCapStore",
    "ConnectionCaps",
    "IPNetwork",
    "MemoryConnectionCapStore",
    "RateLimiter",
    "client_address",
    "create_cap_store",
    "parse_networks",
    "rate_key",
    "storage_for_url",
]
