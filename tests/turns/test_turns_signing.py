"""Worker request signing: the verifier's checks one by one, then the same checks over real
sockets against ``/v1/worker/ws`` (a refused handshake is HTTP 401 naming the check)."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relayline.errors import Unauthorized
from relayline.protocol.signing import sign, signed_headers
from relayline.testing import RelayServer
from relayline.turns import signing
from relayline.turns.signing import MemoryNonceStore, SignatureVerifier
from relayline.worker.connection import PATH
from tests.fixtures import KEY_ID, SECRET, RelayFactory

OTHER_ID = "rotated-key"
OTHER_SECRET = "another-secret-" + "q" * 20
NOW = 1_763_730_000.0


def verifier(keys: dict[str, str] | None = None, window_s: int = 300) -> SignatureVerifier:
    return SignatureVerifier(keys or {KEY_ID: SECRET}, MemoryNonceStore(), window_s)


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def refused(check: SignatureVerifier, headers: dict[str, str], **kw: Any) -> str:
    with pytest.raises(Unauthorized) as err:
        await check.verify(
            lower(headers), kw.pop("method", "GET"), kw.pop("path", PATH), now=NOW, **kw
        )
    return err.value.code


# The verifier


async def test_valid_signature_names_its_key() -> None:
    check = verifier()
    body = b'{"hello": 1}'
    headers = signed_headers(KEY_ID, SECRET, "POST", "/v1/x?a=1", body, now=NOW)
    assert await check.verify(lower(headers), "POST", "/v1/x?a=1", body, now=NOW) == KEY_ID


def test_signature_is_hmac_sha256_of_the_documented_string() -> None:
    body = b"payload"
    digest = "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5"
    text = f"1700000000\nabc\nPOST\n/p?q=1\n{digest}"
    import hashlib

    assert hashlib.sha256(body).hexdigest() == digest
    expected = hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", "abc", "post", "/p?q=1", body) == "v1=" + expected


@pytest.mark.parametrize(
    "tamper",
    ["signature", "body", "method", "path", "nonce", "timestamp_within_window", "other_secret"],
)
async def test_anything_changed_after_signing_is_signature_invalid(tamper: str) -> None:
    headers = signed_headers(KEY_ID, SECRET, "POST", "/v1/x", b"body", now=NOW)
    method, path, body = "POST", "/v1/x", b"body"
    if tamper == "signature":
        sig = headers["X-Relay-Signature"]
        headers["X-Relay-Signature"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    elif tamper == "body":
        body = b"bodY"
    elif tamper == "method":
        method = "PUT"
    elif tamper == "path":
        path = "/v1/x?admin=1"
    elif tamper == "nonce":
        headers["X-Relay-Nonce"] += "x"
    elif tamper == "timestamp_within_window":
        headers["X-Relay-Timestamp"] = str(int(NOW) + 1)
    else:
        headers = signed_headers(KEY_ID, OTHER_SECRET, "POST", "/v1/x", b"body", now=NOW)
    code = await refused(verifier(), headers, method=method, path=path, body=body)
    assert code == "signature_invalid"


@pytest.mark.parametrize(
    "missing", ["X-Relay-Key-Id", "X-Relay-Timestamp", "X-Relay-Nonce", "X-Relay-Signature"]
)
async def test_missing_header_is_signature_invalid(missing: str) -> None:
    headers = signed_headers(KEY_ID, SECRET, "GET", PATH, now=NOW)
    del headers[missing]
    assert await refused(verifier(), headers) == "signature_invalid"


@pytest.mark.parametrize("skew", [-301, 301, -10_000, 10_000])
async def test_old_or_future_timestamp_is_out_of_window(skew: int) -> None:
    headers = signed_headers(KEY_ID, SECRET, "GET", PATH, now=NOW + skew)
    assert await refused(verifier(), headers) == "timestamp_out_of_window"


@pytest.mark.parametrize("skew", [-300, 300])
async def test_edges_of_the_window_are_accepted(skew: int) -> None:
    headers = signed_headers(KEY_ID, SECRET, "GET", PATH, now=NOW + skew)
    assert await verifier().verify(lower(headers), "GET", PATH, now=NOW) == KEY_ID


@pytest.mark.parametrize("timestamp", ["-5", "17e8", "1.5", "abc", " 1763730000"])
async def test_malformed_timestamp_is_out_of_window(timestamp: str) -> None:
    headers = signed_headers(KEY_ID, SECRET, "GET", PATH, now=NOW)
    headers["X-Relay-Timestamp"] = timestamp
    assert await refused(verifier(), headers) == "timestamp_out_of_window"


async def test_replayed_nonce_is_refused_but_a_fresh_one_passes() -> None:
    check = verifier()
    headers = signed_headers(KEY_ID, SECRET, "GET", PATH, now=NOW)
    assert await check.verify(lower(headers), "GET", PATH, now=NOW) == KEY_ID
    assert await refused(check, headers) == "nonce_reused"
    fresh = signed_headers(KEY_ID, SECRET, "GET", PATH, now=NOW)
    assert await check.verify(lower(fresh), "GET", PATH, now=NOW) == KEY_ID


async def test_a_forged_request_does_not_burn_the_nonce() -> None:
    check = verifier()
    headers = signed_headers(KEY_ID, SECRET, "GET", PATH, now=NOW)
    forged = dict(headers, **{"X-Relay-Signature": "v1=" + "0" * 64})
    assert await refused(check, forged) == "signature_invalid"
    assert await check.verify(lower(headers), "GET", PATH, now=NOW) == KEY_ID


async def test_unknown_key_is_refused() -> None:
    headers = signed_headers("nobody", SECRET, "GET", PATH, now=NOW)
    assert await refused(verifier(), headers) == "unknown_key"


async def test_rotation_accepts_every_active_key_and_refuses_a_removed_one() -> None:
    both = verifier({KEY_ID: SECRET, OTHER_ID: OTHER_SECRET})
    for key_id, secret in ((KEY_ID, SECRET), (OTHER_ID, OTHER_SECRET)):
        headers = signed_headers(key_id, secret, "GET", PATH, now=NOW)
        assert await both.verify(lower(headers), "GET", PATH, now=NOW) == key_id
    rotated = verifier({OTHER_ID: OTHER_SECRET})
    old = signed_headers(KEY_ID, SECRET, "GET", PATH, now=NOW)
    assert await refused(rotated, old) == "unknown_key"
    # A key id cannot be used with another key's secret.
    crossed = signed_headers(OTHER_ID, SECRET, "GET", PATH, now=NOW)
    assert await refused(rotated, crossed) == "signature_invalid"


async def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    headers = signed_headers(KEY_ID, SECRET, "GET", PATH, now=NOW)
    forged = dict(headers, **{"X-Relay-Signature": "v1=" + "f" * 64})
    assert await refused(verifier(), forged) == "signature_invalid"
    await verifier().verify(lower(headers), "GET", PATH, now=NOW)
    sent = [forged["X-Relay-Signature"].encode(), headers["X-Relay-Signature"].encode()]
    assert [b for _, b in compared] == sent


async def test_nonce_memory_forgets_after_its_ttl_and_stays_bounded() -> None:
    store = MemoryNonceStore(max_entries=3)
    assert await store.add("k", "n1", 0)
    assert await store.add("k", "n1", 60)  # the first entry had already expired
    assert not await store.add("k", "n1", 60)
    assert await store.add("other", "n1", 60)  # nonces are per key
    for i in range(10):
        assert await store.add("k", f"m{i}", 60)
    assert len(store._seen) <= 3


# Over real sockets


def worker_url(relay: RelayServer) -> str:
    return relay.url.replace("http", "ws", 1) + PATH


async def handshake(relay: RelayServer, headers: dict[str, str]) -> str:
    """Open the worker socket and say hello; return the worker id the relay gives back."""
    async with connect(worker_url(relay), additional_headers=headers, open_timeout=5) as ws:
        await ws.send(json.dumps({"type": "hello", "worker_id": "w", "capacity": 1}))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        return str(welcome["worker_id"])


async def refusal(relay: RelayServer, headers: dict[str, str]) -> dict[str, str]:
    """The handshake is refused with 401; return the error object of the JSON body."""
    with pytest.raises(InvalidStatus) as err:
        async with connect(worker_url(relay), additional_headers=headers, open_timeout=5):
            pass
    response = err.value.response
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    error: dict[str, str] = body["error"]
    assert set(error) == {"code", "detail", "request_id"}
    assert error["request_id"] and response.headers["X-Request-ID"] == error["request_id"]
    return error


def signed(key_id: str = KEY_ID, secret: str = SECRET, **kw: Any) -> dict[str, str]:
    return signed_headers(key_id, secret, "GET", PATH, **kw)


async def test_signed_handshake_over_a_socket(turn_relay: RelayFactory) -> None:
    relay = await turn_relay()
    assert await handshake(relay, signed()) == "w"


async def test_refused_handshakes_name_the_failed_check(turn_relay: RelayFactory) -> None:
    relay = await turn_relay()
    good = signed()
    bad_signature = dict(good, **{"X-Relay-Signature": "v1=" + "0" * 64})
    assert (await refusal(relay, bad_signature))["code"] == "signature_invalid"
    assert (await refusal(relay, {}))["code"] == "signature_invalid"
    old = signed(now=time.time() - 1000)
    assert (await refusal(relay, old))["code"] == "timestamp_out_of_window"
    future = signed(now=time.time() + 1000)
    assert (await refusal(relay, future))["code"] == "timestamp_out_of_window"
    assert (await refusal(relay, signed("stranger")))["code"] == "unknown_key"
    # Signed for another path (a signature cannot be moved to another endpoint).
    moved = signed_headers(KEY_ID, SECRET, "GET", "/v1/ws")
    assert (await refusal(relay, moved))["code"] == "signature_invalid"
    assert await handshake(relay, good) == "w"
    replay = await refusal(relay, good)
    assert replay["code"] == "nonce_reused"
    assert SECRET not in json.dumps(replay)


async def test_rotated_keys_over_a_socket(turn_relay: RelayFactory) -> None:
    relay = await turn_relay(worker_keys=[f"{KEY_ID}:{SECRET}", f"{OTHER_ID}:{OTHER_SECRET}"])
    assert await handshake(relay, signed()) == "w"
    assert await handshake(relay, signed(OTHER_ID, OTHER_SECRET)) == "w"
    rotated = await turn_relay(worker_keys=[f"{OTHER_ID}:{OTHER_SECRET}"])
    assert (await refusal(rotated, signed()))["code"] == "unknown_key"
    assert await handshake(rotated, signed(OTHER_ID, OTHER_SECRET)) == "w"


def bearer(key_id: str = KEY_ID, secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_id}:{secret}"}


async def test_worker_auth_modes(turn_relay: RelayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    hmac_only = await turn_relay()
    assert (await refusal(hmac_only, bearer()))["code"] == "signature_invalid"

    monkeypatch.setenv("RELAYLINE_WORKER_AUTH", "token")
    token_only = await turn_relay()
    assert await handshake(token_only, bearer()) == "w"
    assert (await refusal(token_only, signed()))["code"] == "unauthorized"
    wrong = await refusal(token_only, bearer(secret="wrong-secret-value"))
    assert wrong["code"] == "signature_invalid"
    assert (await refusal(token_only, bearer("stranger")))["code"] == "unknown_key"

    monkeypatch.setenv("RELAYLINE_WORKER_AUTH", "both")
    both = await turn_relay()
    assert await handshake(both, bearer()) == "w"
    assert await handshake(both, signed()) == "w"
    wrong = await refusal(both, bearer(secret="wrong-secret-value"))
    assert wrong["code"] == "signature_invalid"
    stale = await refusal(both, signed(now=time.time() - 1000))
    assert stale["code"] == "timestamp_out_of_window"


async def test_worker_daemon_connects_with_either_auth(
    turn_relay: RelayFactory, workers: Any
) -> None:
    relay = await turn_relay(worker_auth="both")
    signed_worker = await workers.start(relay, worker_id="signed")
    token_worker = await workers.start(relay, worker_id="token", worker_token_auth=True)
    connected = relay.app.http.state.relay.dispatcher.workers
    assert {signed_worker.worker_id, token_worker.worker_id} <= set(connected)
    assert connected["signed"].key_id == connected["token"].key_id == KEY_ID


async def hello_with(
    relay: RelayServer, capacity: object
) -> tuple[dict[str, Any] | None, int | None]:
    """Say hello with ``capacity``; the welcome (or None) and the close code (or None)."""
    async with connect(worker_url(relay), additional_headers=signed(), open_timeout=5) as ws:
        await ws.send(json.dumps({"type": "hello", "worker_id": "w", "capacity": capacity}))
        try:
            welcome: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        except ConnectionClosed as exc:
            return None, exc.rcvd.code if exc.rcvd else None
        return welcome, None


async def test_a_capacity_above_the_relays_maximum_is_capped_not_refused(
    turn_relay: RelayFactory,
) -> None:
    relay = await turn_relay(max_worker_capacity=8)
    welcome, _ = await hello_with(relay, 500)
    assert welcome is not None and welcome["capacity"] == 8
    welcome, _ = await hello_with(relay, 3)
    assert welcome is not None and welcome["capacity"] == 3


@pytest.mark.parametrize("capacity", [0, -1, 2.5, "4", True, None])
async def test_a_capacity_that_is_not_a_positive_integer_closes_4400(
    turn_relay: RelayFactory, capacity: object
) -> None:
    relay = await turn_relay()
    welcome, code = await hello_with(relay, capacity)
    assert welcome is None and code == 4400
