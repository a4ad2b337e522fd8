"""Client address resolution behind proxies, and the rate-limit key derived from it."""

from __future__ import annotations

from typing import Any

import pytest

from relayline.config import Settings
from relayline.limits import (
    UNKNOWN,
    ClientIp,
    ClientIpResolver,
    client_address,
    parse_networks,
    rate_key,
)

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


# --- rate_key --------------------------------------------------------------------------------


def test_ipv4_is_its_own_key() -> None:
    assert rate_key("203.0.113.7", 64) == "203.0.113.7"
    assert rate_key("203.0.113.8", 64) != rate_key("203.0.113.7", 64)


def test_ipv6_in_one_64_share_a_key() -> None:
    a = rate_key("2001:db8:1:2::1", 64)
    b = rate_key("2001:db8:1:2:ffff:ffff:ffff:ffff", 64)
    assert a == b == "2001:db8:1:2::/64"


def test_ipv6_in_different_64s_do_not_share_a_key() -> None:
    assert rate_key("2001:db8:1:2::1", 64) != rate_key("2001:db8:1:3::1", 64)


def test_ipv6_prefix_is_configurable() -> None:
    # Under /48 the two /64s above fall into one bucket; under /128 each address is its own.
    assert rate_key("2001:db8:1:2::1", 48) == rate_key("2001:db8:1:3::1", 48) == "2001:db8:1::/48"
    assert rate_key("2001:db8:1:2::1", 128) == "2001:db8:1:2::1/128"
    assert rate_key("2001:db8:1:2::1", 128) != rate_key("2001:db8:1:2::2", 128)


def test_ipv4_mapped_ipv6_is_keyed_as_ipv4() -> None:
    assert rate_key("::ffff:203.0.113.7", 64) == "203.0.113.7"


def test_non_ip_addresses_share_their_literal_key() -> None:
    assert rate_key(UNKNOWN, 64) == UNKNOWN


def test_prefix_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="ipv6_prefix"):
        rate_key("2001:db8::1", 129)


# --- client_address --------------------------------------------------------------------------


def test_direct_peer_without_proxies() -> None:
    assert client_address("203.0.113.7", None, ()) == "203.0.113.7"


def test_missing_or_non_ip_peer_is_unknown() -> None:
    assert client_address(None, "203.0.113.7", PROXIES) == UNKNOWN
    assert client_address("testclient", "203.0.113.7", PROXIES) == UNKNOWN


def test_peer_is_normalised() -> None:
    assert client_address("::ffff:203.0.113.7", None, ()) == "203.0.113.7"
    assert client_address("2001:DB8:0:0::1", None, ()) == "2001:db8::1"


def test_forwarded_for_from_untrusted_peer_is_ignored() -> None:
    # A client connecting directly cannot pick another bucket by sending the header itself.
    assert client_address("198.51.100.9", "1.2.3.4", PROXIES) == "198.51.100.9"
    assert client_address("198.51.100.9", "1.2.3.4", ()) == "198.51.100.9"


def test_forwarded_for_from_trusted_peer_is_honoured() -> None:
    assert client_address("10.0.0.2", "203.0.113.7", PROXIES) == "203.0.113.7"


def test_ipv4_mapped_trusted_peer_is_recognised() -> None:
    assert client_address("::ffff:10.0.0.2", "203.0.113.7", PROXIES) == "203.0.113.7"


def test_chain_of_proxies_is_walked_from_the_right() -> None:
    # client -> 10.1.1.1 (edge) -> 10.2.2.2 (internal) -> us; the client forged "6.6.6.6".
    xff = "6.6.6.6, 203.0.113.7, 10.1.1.1, 10.2.2.2"
    assert client_address("10.3.3.3", xff, PROXIES) == "203.0.113.7"


def test_mixed_family_chain() -> None:
    assert client_address("fd00::1", "2001:db8::5, 10.0.0.9", PROXIES) == "2001:db8::5"


def test_all_trusted_chain_yields_leftmost() -> None:
    assert client_address("10.0.0.1", "10.0.0.3, 10.0.0.2", PROXIES) == "10.0.0.3"


def test_ipv4_mapped_forwarded_entry_is_normalised() -> None:
    assert client_address("10.0.0.1", "::ffff:203.0.113.7", PROXIES) == "203.0.113.7"


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("not-an-ip", "10.0.0.1"),  # garbage from the proxy: fall back to the peer
        ("203.0.113.7, garbage, 10.0.0.2", "10.0.0.2"),  # stop at the last good hop
        ("203.0.113.7,,10.0.0.2", "10.0.0.2"),  # empty entry
        ("203.0.113.7, unknown", "10.0.0.1"),
        ("203.0.113.7, 300.1.1.1", "10.0.0.1"),
        ("203.0.113.7, 010.0.0.2", "10.0.0.1"),  # ambiguous leading zero
        ("", "10.0.0.1"),
        (" , ", "10.0.0.1"),
    ],
)
def test_malformed_forwarded_for(xff: str, expected: str) -> None:
    assert client_address("10.0.0.1", xff, PROXIES) == expected


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("203.0.113.7:5123", "203.0.113.7"),
        ("[2001:db8::5]:443", "2001:db8::5"),
        ("[2001:db8::5]", "2001:db8::5"),
        ("[2001:db8::5]:https", "10.0.0.1"),
        ("203.0.113.7:", "10.0.0.1"),
    ],
)
def test_forwarded_entries_with_ports(xff: str, expected: str) -> None:
    assert client_address("10.0.0.1", xff, PROXIES) == expected


# --- ClientIpResolver ------------------------------------------------------------------------


def _scope(client: tuple[str, int] | None, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "client": client, "headers": list(headers)}


def test_resolver_reads_scope_with_trusted_proxy() -> None:
    resolver = ClientIpResolver(Settings(trusted_proxies=["10.0.0.0/8"], ipv6_prefix=56))
    scope = _scope(("10.0.0.2", 4321), (b"x-forwarded-for", b"2001:db8:0:1::7"))
    assert resolver.resolve(scope) == ClientIp("2001:db8:0:1::7", "2001:db8::/56")


def test_resolver_joins_repeated_headers_in_order() -> None:
    resolver = ClientIpResolver(Settings(trusted_proxies=["10.0.0.0/8"]))
    scope = _scope(
        ("10.0.0.2", 4321),
        (b"x-forwarded-for", b"6.6.6.6, 203.0.113.7"),
        (b"x-forwarded-for", b"10.0.0.5"),
    )
    address, key = resolver.resolve(scope)
    assert (address, key) == ("203.0.113.7", "203.0.113.7")


def test_resolver_ignores_header_without_trusted_proxies() -> None:
    resolver = ClientIpResolver(Settings(trusted_proxies=[]))
    scope = _scope(("198.51.100.9", 1), (b"x-forwarded-for", b"1.2.3.4"))
    assert resolver.resolve(scope).address == "198.51.100.9"


def test_resolver_without_client() -> None:
    resolver = ClientIpResolver(Settings())
    assert resolver.resolve({"type": "websocket", "headers": []}) == ClientIp(UNKNOWN, UNKNOWN)
    assert "ipv6_prefix=64" in repr(resolver)
