"""Deeply nested JSON from outside is a clean protocol error — before and after
authentication, from clients, workers and REST bodies — never a traceback or a 1011."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
import structlog.testing
from websockets.asyncio.client import connect

from relayline.protocol.close_codes import Close
from relayline.protocol.jsoncodec import MAX_JSON_DEPTH
from relayline.testing import RelayServer, WsHarness
from tests.conftest import ADMIN_KEY
from tests.fixtures import FakeWorker, Tenant

FLOOD = "[" * 60_000


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    """Neither the relay's own log (structlog) nor the server's (stdlib) gets an error."""
    caplog.set_level(logging.WARNING)
    with structlog.testing.capture_logs() as events:
        yield
    assert not [e for e in events if e["log_level"] in ("error", "critical")], events
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_flood_as_first_unauthenticated_frame_is_4401(relay: RelayServer) -> None:
    async with connect(relay.ws_url, max_size=None) as ws:
        await ws.send(FLOOD)
        await ws.wait_closed()
        assert ws.close_code == Close.UNAUTHENTICATED
    async with WsHarness(relay, token=ADMIN_KEY) as other:  # everyone else is still served
        assert "ts" in await other.send_op("ping")


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
        await ws.send_raw(nested(MAX_JSON_DEPTH + 1))
        error = await ws.expect("error")
        assert error["data"]["code"] == "invalid_json"
        assert "ts" in await ws.send_op("ping")


async def test_deep_worker_frames_are_refused_cleanly(turn_relay) -> None:  # type: ignore[no-untyped-def]
    relay = await turn_relay()
    worker = FakeWorker(relay)
    await worker.connect()
    try:
        assert worker.ws is not None
        await worker.ws.send(FLOOD)
        async with asyncio.timeout(5):
            while True:
                frame = await worker.frames.get()
                if frame.get("type") == "error":
                    break
        assert frame["code"] == "invalid_json" and "deeper than" in frame["detail"]
        await worker.ws.send(json.dumps({"type": "state", "status": "ready", "inflight": 0}))
    finally:
        await worker.close()


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
