"""Every client-facing limit of docs/configuration.md at its edge and one past it, through the
public surface of a relay on a real loopback socket, with small configured values.

The table (``LIMITS``) names, per limit, the settings it exercises, the small values the relay
is started with, and a check that does the one thing at the edge and the same thing one past
it; the test compares both outcomes with the expected ones (an HTTP status and its stable
error code, an op's ack or error code, a WebSocket close code). docs/configuration.md is read
too: a setting whose name says it is a limit (``MAX``, ``LIMIT``, ``_RATE``, ``_BURST``,
``VIOLATIONS``) must be in the table, or in ``ELSEWHERE`` (exercised in the named test file,
which must mention it), or in ``NOT_CLIENT_FACING`` with the reason.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relayline.testing import RelayServer, WsHarness
from relayline.testing.harness import OpError
from tests.fixtures import RelayFactory, Tenant, new_tenant

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"

# The address the set-up requests claim (trusted only where a case trusts loopback as a proxy).
SETUP_ADDRESS = "192.0.2.1"


@dataclass
class Ctx:
    relay: RelayServer
    tenant: Tenant
    http: httpx.AsyncClient

    @property
    def auth(self) -> dict[str, str]:
        return self.tenant.auth


Outcome = str
Check = Callable[[Ctx], Awaitable[tuple[Outcome, Outcome]]]


@dataclass(frozen=True)
class Limit:
    settings: tuple[str, ...]  # as docs/configuration.md names them
    overrides: dict[str, Any]
    check: Check  # (what happened at the edge, what happened one past it)
    edge: Outcome
    past: Outcome
    note: str = ""  # what the edge and one past it are, when the values do not say


def outcome(r: httpx.Response) -> Outcome:
    """``"201"``, or ``"422 validation_error"`` for an error in the relay's shape."""
    if r.status_code < 400:
        return str(r.status_code)
    return f"{r.status_code} {r.json()['error']['code']}"


# HTTP limits


async def body_bytes(ctx: Ctx) -> tuple[Outcome, Outcome]:
    async def send(size: int) -> Outcome:
        doc = b'{"title": "t"}'
        body = doc + b" " * (size - len(doc))  # whitespace after a JSON document is valid
        headers = {**ctx.auth, "Content-Type": "application/json"}
        return outcome(await ctx.http.post("/v1/chats", content=body, headers=headers))

    return await send(2048), await send(2049)


async def message_chars(ctx: Ctx) -> tuple[Outcome, Outcome]:
    chat = await ctx.tenant.chat()

    async def post(n: int) -> Outcome:
        r = await ctx.http.post(
            f"/v1/chats/{chat}/messages", json={"content": "x" * n}, headers=ctx.auth
        )
        return outcome(r)

    return await post(10), await post(11)


async def title_chars(ctx: Ctx) -> tuple[Outcome, Outcome]:
    async def create(n: int) -> Outcome:
        return outcome(await ctx.http.post("/v1/chats", json={"title": "t" * n}, headers=ctx.auth))

    return await create(5), await create(6)


async def page_size(ctx: Ctx) -> tuple[Outcome, Outcome]:
    async def page(n: int) -> Outcome:
        return outcome(await ctx.http.get(f"/v1/chats?limit={n}", headers=ctx.auth))

    return await page(3), await page(4)


async def session_chats(ctx: Ctx) -> tuple[Outcome, Outcome]:
    chats = [await ctx.tenant.chat() for _ in range(3)]

    async def mint(ids: list[str]) -> Outcome:
        return outcome(
            await ctx.http.post("/v1/sessions", json={"chat_ids": ids}, headers=ctx.auth)
        )

    return await mint(chats[:2]), await mint(chats)


async def session_ttl(ctx: Ctx) -> tuple[Outcome, Outcome]:
    chat = await ctx.tenant.chat()

    async def mint(ttl: int) -> Outcome:
        body = {"chat_ids": [chat], "ttl_s": ttl}
        return outcome(await ctx.http.post("/v1/sessions", json=body, headers=ctx.auth))

    return await mint(60), await mint(61)


def custom(n: int) -> list[dict[str, Any]]:
    return [{"type": "custom.n", "data": {"i": i}} for i in range(n)]


async def publish_events(ctx: Ctx) -> tuple[Outcome, Outcome]:
    topic = f"chat:{await ctx.tenant.chat()}"

    async def publish(n: int) -> Outcome:
        body = {"topic": topic, "events": custom(n)}
        return outcome(await ctx.http.post("/v1/publish", json=body, headers=ctx.auth))

    return await publish(3), await publish(4)


async def nth_of(requests: Callable[[], Awaitable[httpx.Response]], n: int) -> list[Outcome]:
    return [outcome(await requests()) for _ in range(n)]


async def rate_ip(ctx: Ctx) -> tuple[Outcome, Outcome]:
    # Another address than the set-up's (loopback is a trusted proxy in this case).
    headers = {**ctx.auth, "X-Forwarded-For": "198.51.100.7"}
    seen = await nth_of(lambda: ctx.http.get("/v1/chats", headers=headers), 4)
    assert seen[:2] == ["200", "200"], seen
    return seen[2], seen[3]


async def rate_identity(ctx: Ctx) -> tuple[Outcome, Outcome]:
    seen = await nth_of(lambda: ctx.http.get("/v1/chats", headers=ctx.auth), 4)
    assert seen[:2] == ["200", "200"], seen
    return seen[2], seen[3]


async def rate_chat(ctx: Ctx) -> tuple[Outcome, Outcome]:
    chat = await ctx.tenant.chat()
    url = f"/v1/chats/{chat}/messages"
    seen = await nth_of(lambda: ctx.http.post(url, json={"content": "hi"}, headers=ctx.auth), 3)
    assert seen[0] == "202", seen
    return seen[1], seen[2]


async def rate_health(ctx: Ctx) -> tuple[Outcome, Outcome]:
    seen = await nth_of(lambda: ctx.http.get("/health"), 4)
    assert seen[:2] == ["200", "200"], seen
    return seen[2], seen[3]


async def rate_public_sessions(ctx: Ctx) -> tuple[Outcome, Outcome]:
    r = await ctx.http.post("/v1/public/codes", json={}, headers=ctx.auth)
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    seen = await nth_of(lambda: ctx.http.post("/v1/public/sessions", json={"code": code}), 3)
    assert seen[0] == "201", seen
    return seen[1], seen[2]


async def public_code_ttl(ctx: Ctx) -> tuple[Outcome, Outcome]:
    async def mint(ttl: int) -> Outcome:
        r = await ctx.http.post("/v1/public/codes", json={"ttl_s": ttl}, headers=ctx.auth)
        return outcome(r)

    return await mint(120), await mint(121)


async def completion_messages(ctx: Ctx) -> tuple[Outcome, Outcome]:
    async def complete(n: int) -> Outcome:
        body = {"model": "local", "messages": [{"role": "user", "content": "hi"}] * n}
        return outcome(await ctx.http.post("/v1/chat/completions", json=body, headers=ctx.auth))

    return await complete(2), await complete(3)


# WebSocket limits


async def raw_ws(ctx: Ctx, **kwargs: Any) -> ClientConnection:
    return await connect(
        ctx.relay.ws_url,
        subprotocols=["relayline.v1", f"bearer.{ctx.tenant.key}"],  # type: ignore[list-item]
        ping_interval=None,
        open_timeout=5,
        compression=None,
        max_size=None,
        **kwargs,
    )


async def close_code(ws: ClientConnection, timeout: float = 5.0) -> int:
    """Read until the relay closes; its close code."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    rcvd = ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else 1006


async def answer_to(ws: ClientConnection, frame: str | bytes, ref: int) -> Outcome:
    """Send one frame; the ack or error answering ``ref``, or how the connection closed."""
    await ws.send(frame)
    try:
        async with asyncio.timeout(5):
            while True:
                got = json.loads(await ws.recv())
                if got.get("ref") == ref and got.get("type") == "ack":
                    return "ack"
                if got.get("ref") == ref and got.get("type") == "error":
                    return f"error {got['data']['code']}"
    except ConnectionClosed:
        rcvd = ws.protocol.close_rcvd
        return f"close {rcvd.code if rcvd is not None else 1006}"


async def frame_bytes(ctx: Ctx) -> tuple[Outcome, Outcome]:
    ws = await raw_ws(ctx)
    try:

        def padded(size: int, ref: int) -> str:
            doc = json.dumps({"op": "ping", "ref": ref})
            return doc + " " * (size - len(doc))

        return await answer_to(ws, padded(1024, 1), 1), await answer_to(ws, padded(1025, 2), 2)
    finally:
        await ws.close()


async def subscriptions(ctx: Ctx) -> tuple[Outcome, Outcome]:
    topics = [f"chat:{await ctx.tenant.chat()}" for _ in range(3)]
    async with WsHarness(ctx.relay, token=ctx.tenant.key) as ws:
        await ws.subscribe(topics[0])

        async def subscribe(topic: str) -> Outcome:
            try:
                await ws.subscribe(topic)
            except OpError as exc:
                return f"error {exc.code}"
            return "ack"

        return await subscribe(topics[1]), await subscribe(topics[2])


async def op_budget(ctx: Ctx) -> tuple[Outcome, Outcome]:
    ws = await raw_ws(ctx)
    try:
        for ref in (1, 2):
            assert await answer_to(ws, json.dumps({"op": "ping", "ref": ref}), ref) == "ack"
        edge = await answer_to(ws, json.dumps({"op": "ping", "ref": 3}), 3)
        # Over budget, the refusal carries no ref: read the next frame itself.
        await ws.send(json.dumps({"op": "ping", "ref": 4}))
        async with asyncio.timeout(5):
            got = json.loads(await ws.recv())
        past = f"{got['type']} {got['data']['code']}"
        return edge, past
    finally:
        await ws.close()


async def op_violations(ctx: Ctx) -> tuple[Outcome, Outcome]:
    ws = await raw_ws(ctx)
    try:
        assert await answer_to(ws, json.dumps({"op": "ping", "ref": 1}), 1) == "ack"
        await ws.send(json.dumps({"op": "ping", "ref": 2}))  # refused: violation 1 of 2
        async with asyncio.timeout(5):
            got = json.loads(await ws.recv())
        edge = f"{got['type']} {got['data']['code']}"
        await ws.send(json.dumps({"op": "ping", "ref": 3}))  # violation 2: the socket closes
        return edge, f"close {await close_code(ws)}"
    finally:
        await ws.close()


async def sockets(ctx: Ctx) -> tuple[Outcome, Outcome]:
    held = [await raw_ws(ctx)]
    try:
        held.append(await raw_ws(ctx))
        edge = await answer_to(held[-1], json.dumps({"op": "ping", "ref": 1}), 1)
        held.append(await raw_ws(ctx))
        return edge, f"close {await close_code(held[-1])}"
    finally:
        for ws in held:
            await ws.close()


async def replay(ctx: Ctx) -> tuple[Outcome, Outcome]:
    async def resume(n: int) -> Outcome:
        topic = f"chat:{await ctx.tenant.chat()}"
        epoch = (await ctx.tenant.publish(topic, custom(n)))["epoch"]
        async with WsHarness(ctx.relay, token=ctx.tenant.key) as ws:
            ack = await ws.subscribe(topic, epoch=epoch, after_seq=0)
            if ack["missed"]:
                await ws.expect("events.missed", timeout=5, topic=topic)
                return "events.missed"
            for _ in range(n):
                await ws.expect("custom.n", timeout=5, topic=topic)
            return f"replayed {ack['replayed']}"

    return await resume(5), await resume(6)


LIMITS = [
    Limit(("RELAYLINE_MAX_BODY_BYTES",), {"max_body_bytes": 2048}, body_bytes,
          "201", "413 payload_too_large", "a body of 2,048 / 2,049 bytes"),
    Limit(("RELAYLINE_MAX_MESSAGE_CHARS",), {"max_message_chars": 10}, message_chars,
          "202", "422 validation_error"),
    Limit(("RELAYLINE_MAX_TITLE_CHARS",), {"max_title_chars": 5}, title_chars,
          "201", "422 validation_error"),
    Limit(("RELAYLINE_MAX_PAGE_SIZE",), {"max_page_size": 3}, page_size,
          "200", "422 validation_error"),
    Limit(("RELAYLINE_MAX_SESSION_CHATS",), {"max_session_chats": 2}, session_chats,
          "201", "422 validation_error"),
    Limit(("RELAYLINE_MAX_SESSION_TTL_S",), {"max_session_ttl_s": 60, "session_ttl_s": 60},
          session_ttl, "201", "422 validation_error"),
    Limit(("RELAYLINE_MAX_PUBLISH_EVENTS",), {"max_publish_events": 3}, publish_events,
          "202", "422 validation_error"),
    Limit(("RELAYLINE_RATE_LIMIT_IP", "RELAYLINE_TRUSTED_PROXIES"),
          {"rate_limit_ip": "3/minute", "trusted_proxies": ["127.0.0.1/32"]}, rate_ip,
          "200", "429 rate_limited", "the 3rd and 4th request from one address"),
    Limit(("RELAYLINE_RATE_LIMIT_IDENTITY",), {"rate_limit_identity": "3/minute"},
          rate_identity, "200", "429 rate_limited"),
    Limit(("RELAYLINE_RATE_LIMIT_CHAT",), {"rate_limit_chat": "2/minute"}, rate_chat,
          "202", "429 rate_limited"),
    Limit(("RELAYLINE_RATE_LIMIT_HEALTH",), {"rate_limit_health": "3/minute"}, rate_health,
          "200", "429 rate_limited"),
    Limit(("RELAYLINE_RATE_LIMIT_PUBLIC_SESSIONS",), {"rate_limit_public_sessions": "2/minute"},
          rate_public_sessions, "201", "429 rate_limited"),
    Limit(("RELAYLINE_PUBLIC_CODE_MAX_TTL_S",), {"public_code_max_ttl_s": 120},
          public_code_ttl, "201", "422 validation_error"),
    Limit(("RELAYLINE_COMPLETION_MAX_MESSAGES",), {"completion_max_messages": 2},
          completion_messages, "503 no_worker", "422 validation_error",
          "no worker is connected: at the edge the request passes the count and meets the next "
          "check"),
    Limit(("RELAYLINE_WS_MAX_FRAME_BYTES",), {"ws_max_frame_bytes": 1024}, frame_bytes,
          "ack", "close 1009", "a text frame of 1,024 / 1,025 bytes"),
    Limit(("RELAYLINE_WS_MAX_SUBSCRIPTIONS",), {"ws_max_subscriptions": 2}, subscriptions,
          "ack", "error validation_error"),
    Limit(("RELAYLINE_WS_OP_RATE", "RELAYLINE_WS_OP_BURST"),
          {"ws_op_rate": 0.01, "ws_op_burst": 3, "ws_op_violations": 5}, op_budget,
          "ack", "error rate_limited", "the 3rd and 4th op at once"),
    Limit(("RELAYLINE_WS_OP_VIOLATIONS",),
          {"ws_op_rate": 0.01, "ws_op_burst": 1, "ws_op_violations": 2}, op_violations,
          "error rate_limited", "close 4429", "the 1st and 2nd refused op"),
    Limit(("RELAYLINE_MAX_WS_PER_IDENTITY",), {"max_ws_per_identity": 2}, sockets,
          "ack", "close 4429"),
    Limit(("RELAYLINE_MAX_WS_PER_IP",), {"max_ws_per_ip": 2}, sockets, "ack", "close 4429"),
    Limit(("RELAYLINE_REPLAY_MAX_EVENTS",), {"replay_max_events": 5}, replay,
          "replayed 5", "events.missed", "resume from seq 0 on a topic of 5 / 6 events"),
]  # fmt: skip

# Exercised where they live: the file must mention the setting (as the Settings field name).
ELSEWHERE = {
    "RELAYLINE_MAX_CONCURRENT_COMPLETIONS": "tests/gateway/test_openai_gateway.py",
    "RELAYLINE_TERMINAL_MAX_PER_TENANT": "tests/terminals/test_terminal_limits.py",
    "RELAYLINE_TERMINAL_INPUT_RATE": "tests/terminals/test_terminal_limits.py",
    "RELAYLINE_TERMINAL_INPUT_BURST": "tests/terminals/test_terminal_limits.py",
    "RELAYLINE_TERMINAL_MAX_SESSIONS": "tests/terminals/test_terminal_limits.py",
    "RELAYLINE_WS_QUEUE_MAX_BYTES": "tests/hub/test_hub_slow_and_sse.py",
    "RELAYLINE_WS_QUEUE_MAX_EVENTS": "tests/hub/test_hub_slow_and_sse.py",
    "RELAYLINE_HISTORY_MAX_EVENTS": "tests/bus/test_bus_contract.py",
    "RELAYLINE_HISTORY_MAX_AGE_S": "tests/bus/test_bus_contract.py",
}
# Why the queue bounds are not in the table: where a socket's queue starts depends on the
# kernel's socket buffers (what is written to the transport is not queued), so its edge is not
# a number a client can hit exactly; the slow-client tests fill it past the bound instead.

NOT_CLIENT_FACING = {
    "RELAYLINE_DB_MAX_OVERFLOW": "the relay's own database pool",
    "RELAYLINE_BACKUP_MAX_AGE_DAYS": "backup retention",
    "RELAYLINE_LOG_MAX_BYTES": "log file rotation",
    "RELAYLINE_RATE_LIMIT_STORAGE_URL": "where rate limits are counted, not a limit",
    "RELAYLINE_TURN_MAX_ATTEMPTS": "attempts a worker failure costs a turn, not a client's input",
    "RELAYLINE_MAX_WORKER_CAPACITY": "a worker's announced capacity (worker-facing)",
    "RELAYLINE_MAX_ANSWER_CHARS": "what a worker may stream (worker-facing)",
    "RELAYLINE_TERMINAL_MAX_LIFETIME_S": "a worker setting: how long its sessions run",
    "RELAYLINE_LLM_MAX_ATTEMPTS": "a worker setting: its upstream retries",
    "RELAYLINE_LLM_MAX_INFLIGHT": "a worker setting: its upstream concurrency",
    "RELAYLINE_MAX_TOOL_ROUNDS": "a worker setting: its agent loop",
    "RELAYLINE_RECONNECT_MAX_S": "a worker setting: its reconnect backoff",
}

LIMIT_NAME = re.compile(
    r"`(RELAYLINE_[A-Z0-9_]*(?:MAX|LIMIT|_RATE\b|_BURST|VIOLATIONS)[A-Z0-9_]*)`"
)


def documented_limits() -> set[str]:
    return set(LIMIT_NAME.findall(DOC.read_text(encoding="utf-8")))


def test_every_documented_limit_is_covered_or_said_why_not() -> None:
    covered = {name for limit in LIMITS for name in limit.settings}
    accounted = covered | set(ELSEWHERE) | set(NOT_CLIENT_FACING)
    missing = sorted(documented_limits() - accounted)
    assert not missing, f"limits documented but neither tested here nor listed: {missing}"
    stale = sorted(accounted - set(re.findall(r"`(RELAYLINE_[A-Z0-9_]+)`", DOC.read_text())))
    assert not stale, f"listed but no longer documented: {stale}"
    for name, path in ELSEWHERE.items():
        field_name = name.removeprefix("RELAYLINE_").lower()
        assert field_name in (ROOT / path).read_text(encoding="utf-8"), (name, path)


def test_the_table_matches_what_the_pattern_finds() -> None:
    # The pattern itself is shown able to fail: it finds the limits the table covers.
    found = documented_limits()
    assert {"RELAYLINE_MAX_BODY_BYTES", "RELAYLINE_WS_OP_BURST", "RELAYLINE_RATE_LIMIT_IP"} <= found
    assert "RELAYLINE_TRUSTED_PROXIES" not in found


@pytest.fixture
async def ctx_for(start_relay: RelayFactory) -> AsyncIterator[Callable[..., Awaitable[Ctx]]]:
    clients: list[httpx.AsyncClient] = []

    async def make(**overrides: Any) -> Ctx:
        relay = await start_relay(**overrides)
        http = httpx.AsyncClient(
            base_url=relay.url, timeout=10, headers={"X-Forwarded-For": SETUP_ADDRESS}
        )
        clients.append(http)
        return Ctx(relay, await new_tenant(relay, http), http)

    yield make
    for client in clients:
        await client.aclose()


@pytest.mark.parametrize("limit", LIMITS, ids=lambda limit: limit.settings[0])
async def test_limit_at_its_edge_and_one_past(
    limit: Limit, ctx_for: Callable[..., Awaitable[Ctx]]
) -> None:
    ctx = await ctx_for(**limit.overrides)
    async with asyncio.timeout(30):
        edge, past = await limit.check(ctx)
    assert (edge, past) == (limit.edge, limit.past), limit.settings
    # The relay still answers after the refusal (the health case has spent its own budget).
    r = await ctx.http.get("/health")
    assert r.status_code in (200, 429), r.text
