"""What the relay refuses on a terminal, each with its code: oversized and invalid input, a
read-only viewer's keys, floods, sizes, credentials that do not reach the session, limits."""

from __future__ import annotations

import json

import httpx
import pytest

from relayline.protocol.limits import TERM_INPUT_MAX_BYTES
from relayline.testing import OpError, WsHarness
from tests.fixtures import RelayFactory, Workers
from tests.terminals.helpers import Setup, output_until, snapshot_of, start_setup

pytestmark = pytest.mark.timeout(60)


async def test_input_over_10_kib_is_refused_and_nothing_is_written(setup: Setup) -> None:
    async with setup.ws() as ws:
        # Without the terminal's echo: what is typed while the program's output fills the
        # PTY is echoed late (Linux's line discipline holds the echo until the next key or
        # the next write that finds room). What cat prints is all there is to count.
        terminal = await setup.open("quietcat")
        topic = f"term:{terminal}"
        await ws.subscribe(topic)
        if "echo-off" not in (await snapshot_of(ws, topic))["data"]:
            await output_until(ws, topic, "echo-off")
        with pytest.raises(OpError) as refused:
            await ws.send_op("term.input", topic=topic, data="x" * (TERM_INPUT_MAX_BYTES + 1))
        assert refused.value.code == "payload_too_large"
        # Counted in UTF-8 bytes, not characters: 5,121 two-byte characters are too many.
        with pytest.raises(OpError) as refused:
            await ws.send_op("term.input", topic=topic, data="é" * (TERM_INPUT_MAX_BYTES // 2 + 1))
        assert refused.value.code == "payload_too_large"
        # Exactly the limit goes through (in lines: a terminal's line holds 4095 characters).
        line = "y" * 63 + "\n"
        await ws.send_op("term.input", topic=topic, data=line * (TERM_INPUT_MAX_BYTES // 64))
        await ws.send_op("term.input", topic=topic, data="marker\n")
        seen = await output_until(ws, topic, "marker")  # may be split between two frames
        assert "x" not in seen and "é" not in seen
        assert seen.count("y") == 63 * (TERM_INPUT_MAX_BYTES // 64)


async def test_input_that_is_not_utf8_is_refused(setup: Setup) -> None:
    async with setup.ws() as ws:
        terminal = await setup.open("cat")
        topic = f"term:{terminal}"
        await ws.subscribe(topic)
        # JSON can carry a lone surrogate, which no UTF-8 text contains.
        await ws.send_raw(
            '{"op": "term.input", "ref": "bad", "topic": "' + topic + '", "data": "a\\ud800b"}'
        )
        error = await ws.expect("error", 5)
        assert error["ref"] == "bad" and error["data"]["code"] == "invalid_utf8"
        with pytest.raises(OpError) as refused:
            await ws.send_op("term.input", topic=topic, data=42)
        assert refused.value.code == "validation_error"


async def test_a_read_only_viewer_may_watch_but_not_type(setup: Setup) -> None:
    chat = await setup.tenant.chat()
    terminal = await setup.open("cat", chat_id=chat)
    topic = f"term:{terminal}"
    reader = await setup.session_token(chat_ids=[chat], terminals="read")
    async with setup.ws() as owner, setup.ws(reader) as viewer:
        await owner.subscribe(topic)
        await viewer.subscribe(topic)
        for op, fields in (
            ("term.input", {"data": "nope\n"}),
            ("term.resize", {"cols": 90, "rows": 20}),
        ):
            with pytest.raises(OpError) as refused:
                await viewer.send_op(op, topic=topic, **fields)
            assert refused.value.code == "read_only"
        await owner.send_op("term.input", topic=topic, data="from the owner\n")
        assert "from the owner" in await output_until(viewer, topic, "from the owner\r\n")
        assert "nope" not in await output_until(owner, topic, "from the owner\r\nfrom the owner")
    async with httpx.AsyncClient(base_url=setup.relay.url, timeout=10) as http:
        headers = {"Authorization": f"Bearer {reader}"}
        r = await http.get(f"/v1/terminals/{terminal}", headers=headers)
        assert r.status_code == 200 and r.json()["writable"] is False
        r = await http.delete(f"/v1/terminals/{terminal}", headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "read_only"


async def setup_programs(setup: Setup) -> list[str]:
    r = await setup.tenant.http.get("/v1/terminals", headers=setup.tenant.auth)
    programs: list[str] = r.json()["programs"]
    assert "cat" in programs
    return programs


async def test_credentials_that_do_not_reach_a_terminal_do_not_see_it(setup: Setup) -> None:
    chat, other_chat = await setup.tenant.chat(), await setup.tenant.chat()
    terminal = await setup.open("cat", chat_id=chat)
    topic = f"term:{terminal}"
    plain = await setup.session_token(chat_ids=[chat])  # a chat token, no terminal claim
    elsewhere = await setup.session_token(chat_ids=[other_chat], terminals="write")
    async with httpx.AsyncClient(base_url=setup.relay.url, timeout=10) as http:
        for token in (plain, elsewhere):
            headers = {"Authorization": f"Bearer {token}"}
            r = await http.get(f"/v1/terminals/{terminal}", headers=headers)
            assert r.status_code == 404
            listed = (await http.get("/v1/terminals", headers=headers)).json()
            assert terminal not in [t["id"] for t in listed["items"]]
            # Programs are offered only to a credential that may open terminals.
            assert listed["programs"] == ([] if token == plain else await setup_programs(setup))
            async with setup.ws(token) as ws:
                with pytest.raises(OpError) as refused:
                    await ws.subscribe(topic)
                assert refused.value.code == "forbidden"
        # A plain chat token cannot open terminals either.
        r = await http.post(
            "/v1/terminals",
            json={"program": "cat", "cols": 80, "rows": 24},
            headers={"Authorization": f"Bearer {plain}"},
        )
        assert r.status_code == 403
        # A key without the terminals scope is refused, and cannot mint a token that has it.
        admin = {"Authorization": f"Bearer {__import__('tests.conftest').conftest.ADMIN_KEY}"}
        r = await http.post(
            f"/v1/admin/tenants/{setup.tenant.id}/keys",
            json={"scopes": ["chats", "sessions"]},
            headers=admin,
        )
        narrow = {"Authorization": f"Bearer {r.json()['key']}"}
        r = await http.get("/v1/terminals", headers=narrow)
        assert r.status_code == 403
        r = await http.post(
            "/v1/sessions", json={"chat_ids": [chat], "terminals": "read"}, headers=narrow
        )
        assert r.status_code == 403


async def test_a_write_session_opens_terminals_of_its_chat(setup: Setup) -> None:
    chat = await setup.tenant.chat()
    writer = await setup.session_token(chat_ids=[chat], terminals="write")
    async with httpx.AsyncClient(base_url=setup.relay.url, timeout=10) as http:
        headers = {"Authorization": f"Bearer {writer}"}
        r = await http.post(
            "/v1/terminals",
            json={"program": "cat", "cols": 80, "rows": 24, "chat_id": chat},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        terminal, token = r.json()["id"], r.json()["session_token"]
        # Its new token lists the terminal by id; the old one reaches it through the chat.
        for credential in (writer, token):
            r = await http.get(
                f"/v1/terminals/{terminal}", headers={"Authorization": f"Bearer {credential}"}
            )
            assert r.status_code == 200 and r.json()["writable"] is True
        r = await http.delete(f"/v1/terminals/{terminal}", headers=headers)
        assert r.status_code == 202


async def test_an_input_flood_closes_the_connection_with_4429(
    turn_relay: RelayFactory, workers: Workers, clients: list[httpx.AsyncClient]
) -> None:
    setup = await start_setup(
        turn_relay,
        workers,
        clients,
        terminal_input_rate=5.0,
        terminal_input_burst=5,
        ws_op_violations=3,
    )
    terminal = await setup.open("cat")
    topic = f"term:{terminal}"
    async with setup.ws() as ws:
        await ws.subscribe(topic)
        frame = json.dumps({"op": "term.input", "topic": topic, "data": "a"})
        for _ in range(50):
            if ws.closed.is_set():
                break
            await ws.send_raw(frame)
        assert await ws.expect_closed(5) == 4429
        rate_limited = [f for f in ws.frames if f.get("type") == "error"]
        assert rate_limited and all(f["data"]["code"] == "rate_limited" for f in rate_limited)


async def test_terminal_limits_per_tenant_and_per_worker(
    turn_relay: RelayFactory, workers: Workers, clients: list[httpx.AsyncClient]
) -> None:
    setup = await start_setup(turn_relay, workers, clients, terminal_max_per_tenant=2)
    http, auth = setup.tenant.http, setup.tenant.auth
    body = {"program": "cat", "cols": 80, "rows": 24}
    first = await setup.open("cat")
    await setup.open("cat")
    r = await http.post("/v1/terminals", json=body, headers=auth)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_terminals"
    # Ending one makes room again.
    assert (await http.delete(f"/v1/terminals/{first}", headers=auth)).status_code == 202

    async def room() -> bool:
        r = await http.post("/v1/terminals", json=body, headers=auth)
        return r.status_code == 201

    from tests.fixtures import eventually

    await eventually(room)


async def test_a_full_worker_is_429(
    turn_relay: RelayFactory, workers: Workers, clients: list[httpx.AsyncClient]
) -> None:
    from tests.fixtures import eventually, new_tenant
    from tests.terminals.helpers import terminal_worker_settings

    server = await turn_relay()
    await workers.start(server, **terminal_worker_settings(terminal_max_sessions=1))
    http = httpx.AsyncClient(base_url=server.url, timeout=10)
    clients.append(http)
    tenant = await new_tenant(server, http)
    body = {"program": "cat", "cols": 80, "rows": 24}

    async def opened() -> bool:
        r = await http.post("/v1/terminals", json=body, headers=tenant.auth)
        return r.status_code == 201

    await eventually(opened)
    r = await http.post("/v1/terminals", json=body, headers=tenant.auth)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_terminals"


async def test_ops_on_a_topic_that_is_not_a_terminal(setup: Setup) -> None:
    async with WsHarness(setup.relay, token=setup.tenant.key, auth="header") as ws:
        chat = await setup.tenant.chat()
        with pytest.raises(OpError) as refused:
            await ws.send_op("term.input", topic=f"chat:{chat}", data="x")
        assert refused.value.code == "validation_error"
        with pytest.raises(OpError) as refused:
            await ws.send_op("term.input", topic="term:nosuchterminal", data="x")
        assert refused.value.code == "not_found"


async def test_typing_has_a_budget_of_its_own(
    turn_relay: RelayFactory, workers: Workers, clients: list[httpx.AsyncClient]
) -> None:
    # Far beyond the other ops' burst, within the terminal ops' own.
    setup = await start_setup(
        turn_relay, workers, clients, ws_op_burst=5, ws_op_rate=1.0, terminal_input_burst=100
    )
    terminal = await setup.open("cat")
    topic = f"term:{terminal}"
    async with setup.ws() as ws:
        await ws.subscribe(topic)
        for n in range(60):
            await ws.send_op("term.input", topic=topic, data=f"k{n} ")
        await ws.send_op("term.input", topic=topic, data="\n")
        assert "k59" in await output_until(ws, topic, "k59")
        assert not [f for f in ws.frames if f.get("type") == "error"]
