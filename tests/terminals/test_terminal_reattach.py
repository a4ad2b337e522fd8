"""Viewers and workers that come back: a viewer that reconnects gets the screen as it is, a
relay that restarts adopts the sessions its worker still runs, a worker that stays away
longer than its detach grace ends its sessions."""

from __future__ import annotations

import httpx
import pytest

from relayline.testing import RelayServer, WsHarness
from tests.fixtures import RelayFactory, Workers, eventually, new_tenant
from tests.terminals.helpers import (
    Setup,
    output_until,
    remaining,
    session_pids,
    snapshot_of,
    terminal_worker_settings,
)

pytestmark = pytest.mark.timeout(60)


async def test_a_reconnecting_viewer_gets_the_screen_then_live_output(setup: Setup) -> None:
    terminal = await setup.open("cat", cols=40, rows=10)
    topic = f"term:{terminal}"
    async with setup.ws() as ws:
        await ws.subscribe(topic)
        await snapshot_of(ws, topic)
        await ws.send_op("term.input", topic=topic, data="\x1b[1;31mred line\x1b[0m\n")
        await output_until(ws, topic, "red line\x1b[0m\r\n")
        epoch, seq = ws.positions[topic]
    async with setup.ws() as again:
        # Resuming from where it was: whatever it missed, the screen comes on the topic.
        await again.subscribe(topic, epoch=epoch, after_seq=seq)
        screen = await snapshot_of(again, topic)
        assert (screen["cols"], screen["rows"]) == (40, 10)
        text = screen["data"]
        assert text.startswith("\x1b[0m\x1b[H\x1b[2J")  # a full redraw
        # Echoed by the terminal (escapes shown as ^[), then printed by cat in colour.
        assert "\x1b[1;1H^[[1;31mred line^[[0m" in text
        assert "\x1b[2;1H\x1b[0;1;31mred line" in text
        assert text.endswith("\x1b[3;1H\x1b[?25h")  # the cursor below them, visible
        await again.send_op("term.input", topic=topic, data="after\n")
        await output_until(again, topic, "after\r\n")


async def test_a_restarted_relay_adopts_the_running_sessions(
    turn_relay: RelayFactory, workers: Workers, clients: list[httpx.AsyncClient]
) -> None:
    first = await turn_relay()
    worker = await workers.start(first, **terminal_worker_settings())
    http = httpx.AsyncClient(base_url=first.url, timeout=10)
    clients.append(http)
    tenant = await new_tenant(first, http)

    async def offered() -> bool:
        r = await http.get("/v1/terminals", headers=tenant.auth)
        return "cat" in r.json()["programs"]

    await eventually(offered)
    chat = await tenant.chat()
    r = await http.post(
        "/v1/terminals",
        json={"program": "cat", "cols": 80, "rows": 24, "chat_id": chat},
        headers=tenant.auth,
    )
    terminal = r.json()["id"]
    topic = f"term:{terminal}"
    async with WsHarness(first, token=tenant.key, auth="header") as ws:
        await ws.subscribe(topic)
        await ws.send_op("term.input", topic=topic, data="before the restart\n")
        await output_until(ws, topic, "before the restart\r\n")
    await first.stop()
    second = RelayServer(first.settings, port=first.port)
    await second.start()
    try:

        async def adopted() -> bool:
            r = await http.get(f"/v1/terminals/{terminal}", headers=tenant.auth)
            return r.status_code == 200 and r.json()["state"] == "running"

        await eventually(adopted, 20)
        body = (await http.get(f"/v1/terminals/{terminal}", headers=tenant.auth)).json()
        assert body["chat_id"] == chat and body["program"] == "cat"
        # A chat's session token still reaches it: the owner came back with the session.
        token = (
            await http.post(
                "/v1/sessions", json={"chat_ids": [chat], "terminals": "read"}, headers=tenant.auth
            )
        ).json()["token"]
        async with WsHarness(second, token=token, auth="header") as viewer:
            await viewer.subscribe(topic)
            assert "before the restart" in (await snapshot_of(viewer, topic))["data"]
        async with WsHarness(second, token=tenant.key, auth="header") as ws:
            await ws.subscribe(topic)
            await ws.send_op("term.input", topic=topic, data="after the restart\n")
            await output_until(ws, topic, "after the restart\r\n")
        assert worker.connection.terminals is not None
        assert list(worker.connection.terminals.sessions) == [terminal]
    finally:
        await second.stop()


async def test_a_worker_away_past_its_detach_grace_ends_its_sessions(
    turn_relay: RelayFactory, workers: Workers, clients: list[httpx.AsyncClient]
) -> None:
    relay = await turn_relay()
    worker = await workers.start(relay, **terminal_worker_settings(terminal_detach_grace_s=0.5))
    http = httpx.AsyncClient(base_url=relay.url, timeout=10)
    clients.append(http)
    tenant = await new_tenant(relay, http)
    host = worker.connection.terminals
    assert host is not None
    service = relay.app.http.state.relay.terminals

    async def offered() -> bool:
        return bool(await service.programs())

    await eventually(offered)
    r = await http.post(
        "/v1/terminals", json={"program": "stubborn", "cols": 80, "rows": 24}, headers=tenant.auth
    )
    terminal = r.json()["id"]
    sid = host.sessions[terminal].pid
    await eventually(lambda: len(session_pids(sid)) >= 4)
    members = session_pids(sid)
    await relay.stop()  # the worker keeps trying to reconnect, in vain
    await eventually(lambda: not host.sessions, 10)
    assert remaining(members, sid) == set()


async def test_viewers_told_the_bus_lost_events_get_the_screen_again(setup: Setup) -> None:
    from relayline.bus.base import missed_event

    terminal = await setup.open("cat")
    topic = f"term:{terminal}"
    hub = setup.relay.app.http.state.relay.hub
    async with setup.ws() as ws:
        await ws.subscribe(topic)
        await snapshot_of(ws, topic)
        await ws.send_op("term.input", topic=topic, data="kept\n")
        await output_until(ws, topic, "kept\r\nkept")
        epoch, seq = ws.positions[topic]
        # What the Redis bus does when it finds its log replaced or fell behind its trimming.
        hub.dispatch(hub.topics[topic], missed_event(topic, epoch, seq, "gap"))
        await ws.expect("events.missed", 5, topic=topic)
        assert "kept" in (await snapshot_of(ws, topic))["data"]


async def test_a_slow_viewer_loses_output_then_gets_the_screen(
    turn_relay: RelayFactory, workers: Workers, clients: list[httpx.AsyncClient]
) -> None:
    import asyncio
    import json

    from tests.hub.rawws import RawWs
    from tests.terminals.helpers import start_setup

    setup = await start_setup(
        turn_relay,
        workers,
        clients,
        ws_slow_policy="drop",
        ws_queue_max_bytes=64 * 1024,
        ws_send_buffer=4096,
        ws_write_high_water=4096,
    )
    terminal = await setup.open("burst")  # 1.3 MB of lines at once, then quiet
    topic = f"term:{terminal}"
    service = setup.relay.app.http.state.relay.terminals
    asked: list[str] = []
    redraw = service.redraw

    def counted(session_id: str) -> None:
        asked.append(session_id)
        redraw(session_id)

    service.redraw = counted
    slow = await RawWs.connect(setup.relay.port, setup.tenant.key, rcvbuf=4096)
    try:
        await slow.send_frame(json.dumps({"op": "subscribe", "topic": topic, "ref": 1}).encode())
        await asyncio.sleep(1.5)  # reading nothing through the burst: the outbox overflows
        missed = redrawn = False
        async with asyncio.timeout(15):
            while not redrawn:
                opcode, payload = await slow.read_frame()
                if opcode != 0x1:
                    continue
                frame = json.loads(payload)
                if frame.get("type") == "events.missed":
                    assert frame["topic"] == topic
                    missed = True
                elif missed and frame.get("type") == "term.output":
                    redrawn = bool(frame["data"].get("snapshot"))
    finally:
        slow.close()
    # Told it missed output, then given the screen as it is: all a terminal viewer needs.
    assert missed and redrawn
    assert asked.count(terminal) >= 2  # on subscribing, and on dropping its output
