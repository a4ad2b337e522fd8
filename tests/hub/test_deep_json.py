"""Deeply nested JSON from outside is a clean protocol error — before and after
authentication, from clients, workers and REST bodies — never a traceback or a 1011."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
import structlog.testing
from websockets.asyncio.client import ClientConnection, connect

from relayline.protocol.close_codes import Close
from relayline.protocol.jsoncodec import MAX_JSON_DEPTH
from relayline.protocol.signing import signed_headers
from relayline.testing import RelayServer, WsHarness
from relayline.worker.connection import PATH
from tests.conftest import ADMIN_KEY
from tests.fixtures import KEY_ID, SECRET, FakeWorker, Frame, RelayFactory, Tenant

FLOOD = "[" * 60_000


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def padded(frame: Frame, depth: int) -> str:
    """``frame`` as JSON nesting exactly ``depth`` levels (the object is the first)."""
    return json.dumps(frame)[:-1] + ', "pad": ' + nested(depth - 1) + "}"


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    """Neither the relay's own log (structlog) nor the server's (stdlib) gets an error."""
    caplog.set_level(logging.WARNING)
    with structlog.testing.capture_logs() as events:
        yield
    assert not [e for e in events if e["log_level"] in ("error", "critical")], events
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def first_frame(relay: RelayServer, text: str) -> ClientConnection:
    ws = await connect(relay.ws_url, max_size=None, open_timeout=5)
    await ws.send(text)
    return ws


async def test_flood_as_first_unauthenticated_frame_is_4401(relay: RelayServer) -> None:
    async with await first_frame(relay, FLOOD) as ws:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == Close.UNAUTHENTICATED
    async with WsHarness(relay, token=ADMIN_KEY) as other:  # everyone else is still served
        assert "ts" in await other.send_op("ping")


async def test_first_frame_auth_at_the_edge_and_one_past_it(
    relay: RelayServer, tenant: Tenant
) -> None:
    auth = {"op": "auth", "token": tenant.key}
    async with await first_frame(relay, padded(auth, MAX_JSON_DEPTH)) as ws:
        await ws.send(json.dumps({"op": "ping", "ref": 1}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ack["type"] == "ack" and ack["ref"] == 1, ack
    async with await first_frame(relay, padded(auth, MAX_JSON_DEPTH + 1)) as ws:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == Close.UNAUTHENTICATED


async def test_deep_frames_after_auth_get_an_error_frame_and_the_socket_stays(
    relay: RelayServer, tenant: Tenant
) -> None:
    async with WsHarness(relay, token=tenant.key) as ws:
        await ws.send_raw(FLOOD)
        error = await ws.expect("error")
        assert error["data"]["code"] == "invalid_json"
        assert f"deeper than {MAX_JSON_DEPTH}" in error["data"]["detail"]
        # The edge decodes (and is then refused for what it is, not for its depth).
        await ws.send_raw(nested(MAX_JSON_DEPTH))
        error = await ws.expect("error")
        assert error["data"]["code"] == "validation_error"
        await ws.send_raw(padded({"op": "ping", "ref": 7}, MAX_JSON_DEPTH))
        assert (await ws.expect("ack"))["ref"] == 7
        await ws.send_raw(nested(MAX_JSON_DEPTH + 1))
        error = await ws.expect("error")
        assert error["data"]["code"] == "invalid_json"
        assert "ts" in await ws.send_op("ping")
    async with WsHarness(relay, token=ADMIN_KEY) as other:
        assert "ts" in await other.send_op("ping")


async def test_deep_worker_frames_are_refused_cleanly(turn_relay: RelayFactory) -> None:
    relay = await turn_relay()
    async with FakeWorker(relay) as worker:
        assert worker.ws is not None
        await worker.ws.send(padded({"type": "nonsense"}, MAX_JSON_DEPTH))
        assert (await worker.expect("error"))["code"] == "unknown_type"  # decoded, not too deep
        for text in (padded({"type": "nonsense"}, MAX_JSON_DEPTH + 1), FLOOD):
            await worker.ws.send(text)
            error = await worker.expect("error")
            assert error["code"] == "invalid_json"
            assert error["detail"] == f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        await worker.ws.send(json.dumps({"type": "nonsense"}))  # still connected and heard
        assert (await worker.expect("error"))["code"] == "unknown_type"


async def test_a_deep_worker_hello_is_closed_4400(turn_relay: RelayFactory) -> None:
    relay = await turn_relay()
    url = relay.url.replace("http", "ws", 1) + PATH
    hello = {"type": "hello", "worker_id": "deep", "capacity": 1}
    for depth, welcomed in ((MAX_JSON_DEPTH, True), (MAX_JSON_DEPTH + 1, False)):
        headers = signed_headers(KEY_ID, SECRET, "GET", PATH)
        async with connect(url, additional_headers=headers, open_timeout=5) as ws:
            await ws.send(padded(hello, depth))
            if welcomed:
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
            else:
                await asyncio.wait_for(ws.wait_closed(), 5)
                assert ws.close_code == 4400


async def test_deep_json_bodies_are_422_at_the_edge_and_past_it(
    relay: RelayServer, http: httpx.AsyncClient
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    edge = '{"name": ' + nested(MAX_JSON_DEPTH - 1) + "}"
    r = await http.post("/v1/admin/tenants", content=edge, headers=admin)
    assert r.status_code == 422 and "name" in r.json()["error"]["detail"]  # not its depth
    for body in ('{"name": ' + nested(MAX_JSON_DEPTH) + "}", FLOOD):
        r = await http.post("/v1/admin/tenants", content=body, headers=admin)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "validation_error"
        assert error["detail"] == f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels"
    r = await http.post("/v1/admin/tenants", json={"name": "still-served"}, headers=admin)
    assert r.status_code == 201


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32-be"])
async def test_bodies_in_utf16_and_utf32_are_judged_as_the_app_decodes_them(
    relay: RelayServer, http: httpx.AsyncClient, encoding: str
) -> None:
    """The app's decoder takes these too; read as UTF-8, the escaped quote of ``"\\""``
    would look like the end of a string, and everything after it like a string."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    edge = '{"name": "\\"", "x": ' + nested(MAX_JSON_DEPTH - 1) + "}"
    r = await http.post("/v1/admin/tenants", content=edge.encode(encoding), headers=admin)
    assert r.status_code == 422 and r.json()["error"]["detail"].startswith("x: "), r.text
    for body in ('{"name": "\\"", "x": ' + nested(MAX_JSON_DEPTH) + "}", '["\\"", ' + FLOOD):
        r = await http.post("/v1/admin/tenants", content=body.encode(encoding), headers=admin)
        assert r.status_code == 422, r.text
        assert (
            r.json()["error"]["detail"] == f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels"
        )


async def test_worker_frames_whose_type_is_not_a_string_are_refused_cleanly(
    turn_relay: RelayFactory,
) -> None:
    relay = await turn_relay()
    async with FakeWorker(relay) as worker:
        assert worker.ws is not None
        for kind in (["turn.delta"], {"t": 1}, 7, None):
            await worker.ws.send(json.dumps({"type": kind, "turn_id": "t", "attempt": 1}))
            assert (await worker.expect("error"))["code"] == "unknown_type"
        await worker.ws.send(json.dumps({"type": "nonsense"}))  # still connected and heard
        assert (await worker.expect("error"))["code"] == "unknown_type"


async def test_broken_terminal_output_frames_are_refused_as_any_frame_is(
    turn_relay: RelayFactory,
) -> None:
    # Frames laid out as a worker's terminal output are read without a full decode; one that is
    # not JSON gets the same error as any other, and the link stays.
    relay = await turn_relay()
    async with FakeWorker(relay) as worker:
        assert worker.ws is not None
        for text in (
            '{"type":"term.output","id":"T","data":"bad \\q escape"}',
            '{"type":"term.output","id":"T","data":"raw \x01 control"}',
            '{"type":"term.output","id":"T","data":"unterminated}',
            '{"type":"term.output","id":"T\x01","data":"x"}',
        ):
            await worker.ws.send(text)
            error = await worker.expect("error")
            assert error["code"] == "invalid_json", text
        # Well formed, for a session this worker does not run: ignored, as before.
        await worker.ws.send('{"type":"term.output","id":"T","data":"x"}')
        await worker.ws.send(json.dumps({"type": "nonsense"}))  # still connected and heard
        assert (await worker.expect("error"))["code"] == "unknown_type"
