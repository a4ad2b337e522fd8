"""Which client sent a request, and which bucket its rate limits count against.

The address is taken from the TCP peer unless that peer is a trusted proxy; only then is
``X-Forwarded-For`` read, from the right, because every proxy *appends* the address it saw and
only the entries added by our own proxies can be believed. Anything to the left of the first
untrusted entry was written by the client and may be forged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, NamedTuple

from relayline.config import Settings

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

UNKNOWN = "unknown"
"""Address reported for a peer that is not an IP address (a Unix socket, a test client)."""

_FORWARDED_FOR = b"x-forwarded-for"


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse proxy networks such as ``10.0.0.0/8`` or ``::1``; host bits are ignored.

    Raises ``ValueError`` on a malformed entry (the settings validate the same way at start-up).
    """
    return tuple(ip_network(value.strip(), strict=False) for value in values)


def _parse_address(text: str) -> IPAddress | None:
    # The zone ("%eth0") only names the local interface; it must not split one client into
    # several buckets, so it is dropped before parsing.
    try:
        address = ip_address(text.strip().partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; they must share the key
        # (and the trusted-proxy checks) of the plain IPv4 form.
        return address.ipv4_mapped
    return address


def _parse_forwarded_entry(entry: str) -> IPAddress | None:
    # Some proxies append the client port ("203.0.113.7:5123", "[2001:db8::1]:443"). Refusing
    # those would stop the walk at our own proxy and put every client in the proxy's bucket.
    text = entry.strip()
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not _is_port_suffix(port)):
            return None
        return _parse_address(host)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _is_port_suffix(":" + port):
            return None
        text = host
    return _parse_address(text)


def _is_port_suffix(text: str) -> bool:
    port = text[1:]
    return text.startswith(":") and port.isascii() and port.isdigit() and len(port) <= 5


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    # ``in`` across IP versions is simply False, so mixed lists need no special case.
    return any(address in network for network in trusted)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> str:
    """The client's IP address as a canonical string, or ``"unknown"``.

    Guarantees:

    * ``forwarded_for`` is ignored unless ``peer`` lies inside one of the ``trusted`` networks,
      so a client connecting directly cannot choose its own address.
    * From a trusted peer the ``X-Forwarded-For`` list is walked from the right, skipping
      trusted proxies; the first untrusted address is the client. If every entry is trusted,
      the leftmost one is returned.
    * A malformed entry stops the walk: the last good address seen (at worst the peer) is
      returned, because nothing left of a garbled entry can be attributed to a known hop.
    * IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) are returned as IPv4.
    * A peer that is missing or not an IP address yields ``"unknown"``.
    """
    if peer is None:
        return UNKNOWN
    current = _parse_address(peer)
    if current is None:
        return UNKNOWN
    if not forwarded_for or not _is_trusted(current, trusted):
        return str(current)
    for entry in reversed(forwarded_for.split(",")):
        hop = _parse_forwarded_entry(entry)
        if hop is None:
            break
        current = hop
        if not _is_trusted(hop, trusted):
            break
    return str(current)


def rate_key(address: str, ipv6_prefix: int) -> str:
    """The rate-limit bucket for ``address``.

    IPv4 addresses are their own bucket. An IPv6 address is widened to its ``/ipv6_prefix``
    network (e.g. ``2001:db8:1:2::/64``), because one subscriber is usually handed a whole /64
    and could otherwise rotate through 2**64 fresh buckets. IPv4-mapped IPv6 is keyed as IPv4.
    Anything that is not an IP address (``"unknown"``) is returned unchanged, so all such
    clients share one bucket. Raises ``ValueError`` if ``ipv6_prefix`` is not in 0..128.
    """
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be between 0 and 128, not {ipv6_prefix}")
    parsed = _parse_address(address)
    if parsed is None:
        return address
    if isinstance(parsed, IPv4Address):
        return str(parsed)
    return str(IPv6Network((parsed, ipv6_prefix), strict=False))


class ClientIp(NamedTuple):
    """A resolved client: its ``address`` and the rate-limit ``key`` derived from it."""

    address: str
    key: str


class ClientIpResolver:
    """Resolves the client of an ASGI HTTP or WebSocket scope with the configured proxies.

    The trusted networks and the IPv6 prefix are read once from the settings; ``resolve`` does
    no I/O and is safe to call from any task.
    """

    def __init__(self, settings: Settings) -> None:
        self._trusted = parse_networks(settings.trusted_proxies)
        self._ipv6_prefix = settings.ipv6_prefix

    @property
    def trusted(self) -> tuple[IPNetwork, ...]:
        """The trusted proxy networks."""
        return self._trusted

    def resolve(self, scope: Mapping[str, Any]) -> ClientIp:
        """The client address and rate key for ``scope`` (see :func:`client_address`)."""
        client = scope.get("client")
        peer = str(client[0]) if client else None
        forwarded_for: str | None = None
        if self._trusted:
            # A request may carry the header several times; RFC 9110 makes that equivalent to
            # one comma-joined value in order of appearance.
            values = [
                value.decode("latin-1")
                for name, value in scope.get("headers", ())
                if name.lower() == _FORWARDED_FOR
            ]
            forwarded_for = ",".join(values) or None
        address = client_address(peer, forwarded_for, self._trusted)
        return ClientIp(address, rate_key(address, self._ipv6_prefix))

    def __repr__(self) -> str:
        trusted = ", ".join(str(network) for network in self._trusted)
        return f"ClientIpResolver(trusted=[{trusted}], ipv6_prefix={self._ipv6_prefix})"
