"""Floods against a relay on a real uvicorn server over loopback (the settings of
``relayline serve``): a thousand sockets from one address, slow handshakes and slow bodies,
subscription churn and more topics than allowed, a resume over a range far past the replay
bound. In each, the relay answers the flood with its documented refusal and keeps serving
another client meanwhile. Figures of these runs are in docs/reliability.md ("Floods and
limits")."""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from websockets.asyncio.client import connect

from relayline.http_protocol import RelayHttpProtocol
from relayline.protocol.close_codes import Close
from relayline.testing import RelayServer, WsHarness
from relayline.testing.harness import OpError
from tests.fixtures import RelayFactory, Tenant, new_tenant
from tests.hub.rawws import RawWs

SOCKETS = 1000
PER_IP = 200
HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
SLOW_CLIENTS = 100
OTHER_ADDRESS = "127.0.0.2"  # loopback too, another client address for the relay


@pytest.fixture
async def tenant_on(
    start_relay: RelayFactory,
) -> AsyncIterator[Callable[..., Awaitable[tuple[RelayServer, Tenant]]]]:
    clients: list[httpx.AsyncClient] = []

    async def start(**overrides: object) -> tuple[RelayServer, Tenant]:
        relay = await start_relay(**overrides)
        http = httpx.AsyncClient(base_url=relay.url, timeout=10)
        clients.append(http)
        return relay, await new_tenant(relay, http)

    yield start
    for client in clients:
        await client.aclose()


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the file descriptor limit ({hard}) is below {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def another_client_is_served(relay: RelayServer, tenant: Tenant) -> None:
    """A client from another address connects, subscribes and gets a published event; an
    HTTP request is answered."""
    topic = f"chat:{await tenant.chat()}"
    async with connect(
        relay.ws_url,
        subprotocols=["relayline.v1", f"bearer.{tenant.key}"],  # type: ignore[list-item]
        local_addr=(OTHER_ADDRESS, 0),
        ping_interval=None,
        open_timeout=10,
        compression=None,
    ) as ws:
        await ws.send(json.dumps({"op": "subscribe", "ref": 1, "topic": topic}))
        async with asyncio.timeout(10):
            frame: dict[str, object] = {}
            while (frame.get("type"), frame.get("ref")) != ("ack", 1):
                frame = json.loads(await ws.recv())
            await tenant.publish(topic, [{"type": "custom.hello", "data": {}}])
            while frame.get("type") != "custom.hello":
                frame = json.loads(await ws.recv())
    assert (await tenant.http.get("/health")).status_code == 200


async def outcome_of(ws: RawWs) -> str:
    """``ack`` when the socket answers a ping op, else ``close <code>``."""
    await ws.send_frame(json.dumps({"op": "ping", "ref": 1}).encode())
    async with asyncio.timeout(20):
        while True:
            opcode, payload = await ws.read_frame()
            if opcode == 0x8:
                return f"close {int.from_bytes(payload[:2], 'big')}"
            if opcode == 0x1 and json.loads(payload).get("type") == "ack":
                return "ack"


async def test_a_thousand_sockets_from_one_address(
    tenant_on: Callable[..., Awaitable[tuple[RelayServer, Tenant]]],
) -> None:
    raise_fd_limit(2 * SOCKETS + 512)  # both ends of every socket are in this process
    relay, tenant = await tenant_on(max_ws_per_ip=PER_IP, max_ws_per_identity=2 * SOCKETS)
    held: list[RawWs] = []
    try:
        for start in range(0, SOCKETS, 100):
            held += await asyncio.gather(
                *(RawWs.connect(relay.port, tenant.key) for _ in range(start, start + 100))
            )
        outcomes = await asyncio.gather(*(outcome_of(ws) for ws in held))
        counts = {o: outcomes.count(o) for o in set(outcomes)}
        assert counts == {"ack": PER_IP, f"close {Close.RATE_LIMITED}": SOCKETS - PER_IP}
        # While the address holds its whole budget, another address is served.
        await another_client_is_served(relay, tenant)
    finally:
        for ws in held:
            ws.close()
    # Every slot comes back: the address is served again once its sockets are gone.
    async with asyncio.timeout(10):
        while True:
            again = await RawWs.connect(relay.port, tenant.key)
            result = await outcome_of(again)
            again.close()
            if result == "ack":
                break
            await asyncio.sleep(0.1)


async def dribble(port: int, payload: bytes, every_s: float) -> tuple[bytes, float, int]:
    """Send ``payload`` a byte every ``every_s`` seconds (never all of it, it is long enough)
    until the relay answers or closes; the answer, when it came (monotonic) and the bytes sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0

    async def send() -> None:
        nonlocal sent
        for byte in payload:
            writer.write(bytes([byte]))
            sent += 1
            await asyncio.sleep(every_s)

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(20):
            answer = await reader.read(-1)
        return answer, time.monotonic(), sent
    finally:
        sender.cancel()
        writer.transport.abort()


def status_and_code(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head else "EOF"
    if not body:
        return status
    return f"{status} {json.loads(body)['error']['code']}"


async def test_slow_handshakes_are_cut_off_by_the_head_deadline(
    tenant_on: Callable[..., Awaitable[tuple[RelayServer, Tenant]]],
) -> None:
    raise_fd_limit(4 * SLOW_CLIENTS + 512)
    relay, tenant = await tenant_on(request_head_timeout_s=HEAD_TIMEOUT_S)
    upgrade = (
        "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: relayline.v1, bearer.{tenant.key}\r\n"
    ).encode()  # never the blank line that ends the head
    began = time.monotonic()
    slow = [
        asyncio.create_task(dribble(relay.port, upgrade, every_s=0.05)) for _ in range(SLOW_CLIENTS)
    ]
    await another_client_is_served(relay, tenant)
    results = await asyncio.gather(*slow)
    assert {status_and_code(answer) for answer, _, _ in results} == {"408 request_timeout"}
    # Each was cut off at the deadline (plus scheduling), far before its head could complete.
    latest = max(at for _, at, _ in results) - began
    assert latest < HEAD_TIMEOUT_S + 5, latest
    assert max(sent for _, _, sent in results) < len(upgrade)
    await another_client_is_served(relay, tenant)


async def test_slow_bodies_are_cut_off_by_the_body_deadline(
    tenant_on: Callable[..., Awaitable[tuple[RelayServer, Tenant]]],
) -> None:
    raise_fd_limit(4 * SLOW_CLIENTS + 512)
    relay, tenant = await tenant_on(request_body_timeout_s=BODY_TIMEOUT_S)
    auth = f"Authorization: Bearer {tenant.key}\r\n"

    def request(method: str, path: str) -> bytes:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        return head.encode() + b" " * 1000

    async def slow_after_head(raw: bytes) -> tuple[bytes, float, int]:
        # The head at once, then the body a byte at a time.
        head, _, body = raw.partition(b"\r\n\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(head + b"\r\n\r\n")
        sent = 0

        async def send() -> None:
            nonlocal sent
            for byte in body:
                writer.write(bytes([byte]))
                sent += 1
                await asyncio.sleep(0.05)

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(20):
                answer = await reader.read(-1)
            return answer, time.monotonic(), sent
        finally:
            sender.cancel()
            writer.transport.abort()

    began = time.monotonic()
    posts = [
        asyncio.create_task(slow_after_head(request("POST", "/v1/chats")))
        for _ in range(SLOW_CLIENTS)
    ]
    # A GET the relay answers without reading its body: the connection still ends.
    gets = [asyncio.create_task(slow_after_head(request("GET", "/v1/chats"))) for _ in range(5)]
    await another_client_is_served(relay, tenant)
    r = await tenant.http.post("/v1/chats", json={"title": "meanwhile"}, headers=tenant.auth)
    assert r.status_code == 201, r.text
    post_results = await asyncio.gather(*posts)
    get_results = await asyncio.gather(*gets)
    assert {status_and_code(answer) for answer, _, _ in post_results} == {"408 request_timeout"}
    # The GET's own answer came first (200); after it, the connection is closed, not kept.
    assert {answer.split(b" ", 2)[1] for answer, _, _ in get_results} == {b"200"}
    latest = max(at for _, at, _ in post_results + get_results) - began
    assert latest < BODY_TIMEOUT_S + 5, latest
    assert max(sent for _, _, sent in post_results + get_results) < 1000
    # No chat was created by the cut-off posts.
    r = await tenant.http.get("/v1/chats?limit=200", headers=tenant.auth)
    assert [c["title"] for c in r.json()["items"]].count("meanwhile") == 1
    assert len(r.json()["items"]) == 2  # "meanwhile" and the other client's chat


def test_the_uvicorn_internals_the_body_deadline_relies_on_are_there() -> None:
    cycle_fields = RequestResponseCycle.__init__.__code__.co_names
    for name in ("disconnected", "message_event", "response_started", "response_complete"):
        assert name in cycle_fields, name
    assert RelayHttpProtocol.body_timeout_s > 0


async def test_subscription_churn_and_more_topics_than_allowed(
    tenant_on: Callable[..., Awaitable[tuple[RelayServer, Tenant]]],
) -> None:
    allowed = 20
    relay, tenant = await tenant_on(
        ws_max_subscriptions=allowed, ws_op_rate=100_000, ws_op_burst=100_000
    )
    topics = [f"chat:{await tenant.chat()}" for _ in range(3 * allowed)]
    hub = relay.app.http.state.relay.hub
    async with WsHarness(relay, token=tenant.key) as ws:
        for _ in range(10):  # 600 subscribes and 600 unsubscribes over 60 topics
            for group in range(3):
                batch = topics[group * allowed : (group + 1) * allowed]
                for topic in batch:
                    await ws.send_op("subscribe", topic=topic)
                # The connection holds exactly its budget; one more is refused.
                with pytest.raises(OpError) as refused:
                    await ws.send_op("subscribe", topic=topics[(group + 1) * allowed % len(topics)])
                assert refused.value.code == "validation_error"
                assert len(hub.topics) == allowed and hub.subscriber_count() == allowed
                for topic in batch:
                    await ws.send_op("unsubscribe", topic=topic)
        # Another tenant's topics and made-up ones are refused without leaving state behind.
        for i in range(200):
            with pytest.raises(OpError):
                await ws.send_op("subscribe", topic=f"chat:01NOPE{i:020d}")
        assert hub.topics == {} and hub.subscriber_count() == 0
        assert hub._creating == {}
        await ws.send_op("subscribe", topic=topics[0])  # and the socket still works
    await another_client_is_served(relay, tenant)


async def test_resume_over_a_huge_range(
    tenant_on: Callable[..., Awaitable[tuple[RelayServer, Tenant]]],
) -> None:
    replay_max = 1000
    relay, tenant = await tenant_on(
        replay_max_events=replay_max, history_max_events=20_000, max_publish_events=1000
    )
    topic = f"chat:{await tenant.chat()}"
    epoch = ""
    for start in range(0, 10_000, 1000):
        events = [{"type": "custom.n", "data": {"i": i}} for i in range(start, start + 1000)]
        epoch = (await tenant.publish(topic, events))["epoch"]
    other_topic = f"chat:{await tenant.chat()}"
    async with WsHarness(relay, token=tenant.key, topics=[other_topic]) as other:

        async def resume(after_seq: int) -> tuple[bool, int]:
            async with WsHarness(relay, token=tenant.key) as ws:
                ack = await ws.subscribe(topic, epoch=epoch, after_seq=after_seq)
                if ack["missed"]:
                    missed = await ws.expect("events.missed", timeout=10, topic=topic)
                    assert missed["seq"] == 10_000
                    return True, 0
                for _ in range(ack["replayed"]):
                    await ws.expect("custom.n", timeout=10, topic=topic)
                return False, ack["replayed"]

        # Twenty clients resume at once: ten from seq 0 (10,000 behind), ten from 9,000 (the
        # bound exactly); meanwhile a subscriber of another topic gets its events.
        resumes = [asyncio.create_task(resume(0 if i % 2 else 9000)) for i in range(20)]
        for n in range(5):
            await tenant.publish(other_topic, [{"type": "custom.live", "data": {"n": n}}])
            await other.expect("custom.live", timeout=5, topic=other_topic)
        results = await asyncio.gather(*resumes)
    assert sorted(results) == [(False, replay_max)] * 10 + [(True, 0)] * 10
