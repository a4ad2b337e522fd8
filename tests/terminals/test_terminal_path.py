"""A terminal end to end through a real relay and a real worker: open, output, input, resize,
snapshot, terminate, with nothing left running."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from relayline.testing import OpError
from tests.fixtures import RelayFactory, Workers, eventually
from tests.terminals.helpers import (
    HAVE_PROC,
    Setup,
    output_until,
    remaining,
    session_pids,
    stat_of,
    zombie_children,
)

pytestmark = pytest.mark.timeout(60)


# The libraries' own pools, which grow on demand: Starlette runs sync dependencies on AnyIO's
# threads, the loop resolves names on its executor's, aiosqlite has a thread per connection.
POOLS = ("AnyIO worker", "asyncio_")


def own_threads() -> set[str]:
    """This process's threads, less the libraries' pools: the terminal code starts none, so
    the rest must be back to where it was."""
    return {
        f"{t.name}:{t.ident}"
        for t in threading.enumerate()
        if not t.name.startswith(POOLS) and "_connection_worker_thread" not in t.name
    }


async def test_a_program_that_prints_and_ends_reaches_a_viewer(setup: Setup) -> None:
    r = await setup.tenant.http.post(
        "/v1/terminals", json={"program": "echo", "cols": 80, "rows": 24}, headers=setup.tenant.auth
    )
    assert r.status_code == 201, r.text
    created = r.json()
    topic = created["topic"]
    async with setup.ws() as ws:
        # Subscribing from the position the open answered with replays what came after it.
        await ws.subscribe(topic, epoch=created["epoch"], after_seq=created["seq"])
        assert "hello-terminal\r\n" in await output_until(ws, topic, "hello-terminal\r\n")
        exited = await ws.expect("term.exited", 10, topic=topic)
        assert exited["data"] == {"reason": "exited", "status": 0}


async def test_typing_echoes_back_to_a_websocket_viewer(setup: Setup) -> None:
    async with setup.ws() as ws:
        terminal = await setup.open("cat")
        topic = f"term:{terminal}"
        await ws.subscribe(topic)
        # The subscription is answered with the screen as it is now.
        snapshot = await ws.expect("term.output", 5, topic=topic)
        assert snapshot["data"]["snapshot"] is True
        assert (snapshot["data"]["cols"], snapshot["data"]["rows"]) == (80, 24)
        await ws.send_op("term.input", topic=topic, data="héllo wörld\n")
        assert "héllo wörld" in await output_until(ws, topic, "héllo wörld\r\n")


async def test_output_with_escapes_quotes_and_control_characters_arrives_as_printed(
    setup: Setup,
) -> None:
    # The relay hands the worker's encoded text on as it came: nothing in it may change.
    async with setup.ws() as ws:
        terminal = await setup.open("sh")
        topic = f"term:{terminal}"
        await ws.subscribe(topic)
        command = "printf '\\033[31mr\\303\\266d\\033[0m \"q\" \\\\ \\001\\t<%s>\\n' end\n"
        printed = '\x1b[31mröd\x1b[0m "q" \\ \x01\t<end>\r\n'
        await ws.send_op("term.input", topic=topic, data=command)
        assert printed in await output_until(ws, topic, printed)


async def test_a_program_that_ends_reports_its_status(setup: Setup) -> None:
    async with setup.ws() as ws:
        terminal = await setup.open("sh")
        topic = f"term:{terminal}"
        await ws.subscribe(topic)
        await ws.send_op("term.input", topic=topic, data="echo $((6*7)); exit 3\n")
        assert "42" in await output_until(ws, topic, "42")
        exited = await ws.expect("term.exited", 10, topic=topic)
        assert exited["data"] == {"reason": "exited", "status": 3}
    r = await setup.tenant.http.get(f"/v1/terminals/{terminal}", headers=setup.tenant.auth)
    assert r.status_code == 200
    assert r.json()["state"] == "exited" and r.json()["exit"]["status"] == 3
    assert r.json()["writable"] is False


async def test_resize_reaches_the_program_and_is_bounded(setup: Setup) -> None:
    async with setup.ws() as ws:
        terminal = await setup.open("sh")
        topic = f"term:{terminal}"
        await ws.subscribe(topic)
        await ws.send_op("term.resize", topic=topic, cols=100, rows=30)
        state = await ws.expect("term.state", 5, topic=topic)
        while (state["data"]["cols"], state["data"]["rows"]) != (100, 30):
            state = await ws.expect("term.state", 5, topic=topic)
        await ws.send_op("term.input", topic=topic, data="stty size\n")
        assert "30 100" in await output_until(ws, topic, "30 100")
        for cols, rows in ((0, 24), (501, 24), (80, 0), (80, 501), ("80", 24), (True, 24)):
            with pytest.raises(OpError) as refused:
                await ws.send_op("term.resize", topic=topic, cols=cols, rows=rows)
            assert refused.value.code == "validation_error"
    r = await setup.tenant.http.get(f"/v1/terminals/{terminal}", headers=setup.tenant.auth)
    assert (r.json()["cols"], r.json()["rows"]) == (100, 30)


async def test_a_second_viewer_sees_the_screen_then_the_same_output(setup: Setup) -> None:
    async with setup.ws() as first:
        terminal = await setup.open("cat")
        topic = f"term:{terminal}"
        await first.subscribe(topic)
        await first.send_op("term.input", topic=topic, data="before\n")
        await output_until(first, topic, "before\r\n")
        async with setup.ws() as second:
            await second.subscribe(topic)
            snapshot = await second.expect("term.output", 5, topic=topic)
            while not snapshot["data"].get("snapshot"):
                snapshot = await second.expect("term.output", 5, topic=topic)
            # The screen as it is: what was typed before this viewer came.
            assert "before" in snapshot["data"]["data"]
            await first.send_op("term.input", topic=topic, data="after\n")
            seen_first = await output_until(first, topic, "after\r\n")
            seen_second = await output_until(second, topic, "after\r\n")
            assert "after" in seen_first and "after" in seen_second


@pytest.mark.skipif(not HAVE_PROC, reason="needs Linux /proc")
async def test_terminate_kills_stubborn_grandchildren_after_the_grace(setup: Setup) -> None:
    threads = own_threads()
    zombies = zombie_children(__import__("os").getpid())
    async with setup.ws() as ws:
        terminal = await setup.open("stubborn")
        topic = f"term:{terminal}"
        await ws.subscribe(topic)
        sid = setup.sid_of(terminal)
        # The supervisor, the shell, and its two sleeping grandchildren.
        await eventually(lambda: len(session_pids(sid)) >= 4)
        members = session_pids(sid)
        r = await setup.tenant.http.delete(f"/v1/terminals/{terminal}", headers=setup.tenant.auth)
        assert r.status_code == 202
        exited = await ws.expect("term.exited", 10, topic=topic)
        assert exited["data"]["reason"] == "terminated"
        assert exited["data"]["signal"] == 9  # nothing in it heeded SIGHUP nor SIGTERM
    assert remaining(members, sid) == set()
    assert zombie_children(__import__("os").getpid()) <= zombies
    assert own_threads() == threads
    assert not setup.worker.connection.terminals.sessions  # type: ignore[union-attr]


def sleeps(pid: int) -> int:
    """How often ``pid`` went to sleep since it started (its voluntary context switches)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise AssertionError(f"no switch count for {pid}")


@pytest.mark.skipif(not HAVE_PROC, reason="needs Linux /proc")
async def test_a_running_programs_supervisor_sleeps_until_the_program_ends(setup: Setup) -> None:
    # The supervisor once looked through /proc twenty times a second for as long as the program
    # ran: a share of a CPU per open terminal, and a wait for every keystroke that met it.
    async with setup.ws() as ws:
        terminal = await setup.open("cat")
        topic = f"term:{terminal}"
        await ws.subscribe(topic)
        sid = setup.sid_of(terminal)  # the supervisor's pid
        await eventually(lambda: len(session_pids(sid)) >= 2)  # the supervisor and cat
        await eventually(lambda: (state := stat_of(sid)) is not None and state[0] == "S")
        before = sleeps(sid)
        await asyncio.sleep(1.0)
        # One sleep the whole second (a poll woke it and it slept again 20 times).
        assert sleeps(sid) - before <= 1
        # Asleep, it still learns at once that the program ended, and ends the session.
        await ws.send_op("term.input", topic=topic, data="\x04")  # Ctrl-D: cat reads EOF
        exited = await ws.expect("term.exited", 10, topic=topic)
        assert exited["data"] == {"reason": "exited", "status": 0}


async def test_open_refusals_have_stable_codes(setup: Setup) -> None:
    http, auth = setup.tenant.http, setup.tenant.auth
    r = await http.post(
        "/v1/terminals", json={"program": "nope", "cols": 80, "rows": 24}, headers=auth
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_program"
    r = await http.post(
        "/v1/terminals", json={"program": "/bin/sh", "cols": 80, "rows": 24}, headers=auth
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = await http.post(
        "/v1/terminals", json={"program": "sh", "cols": 501, "rows": 24}, headers=auth
    )
    assert r.status_code == 422
    r = await http.post(
        "/v1/terminals",
        json={"program": "sh", "cols": 80, "rows": 24, "cwd": "/etc"},
        headers=auth,
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "cwd_not_allowed"
    r = await http.get("/v1/terminals/01NOSUCHTERMINAL", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await http.delete("/v1/terminals/01NOSUCHTERMINAL", headers=auth)
    assert r.status_code == 404


async def test_no_terminal_worker_is_503(turn_relay: RelayFactory, clients: list) -> None:  # type: ignore[type-arg]
    from tests.fixtures import new_tenant

    server = await turn_relay()
    client = httpx.AsyncClient(base_url=server.url, timeout=10)
    clients.append(client)
    tenant = await new_tenant(server, client)
    r = await client.post(
        "/v1/terminals", json={"program": "sh", "cols": 80, "rows": 24}, headers=tenant.auth
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_terminal_worker"
    r = await client.get("/v1/terminals", headers=tenant.auth)
    assert r.json() == {"items": [], "programs": []}
    await asyncio.sleep(0)


async def test_a_program_whose_workers_went_away_is_503_not_unknown(
    setup: Setup, workers: Workers
) -> None:
    from tests.terminals.helpers import terminal_worker_settings

    await workers.start(setup.relay, **terminal_worker_settings(terminal_programs="other=/bin/cat"))
    http, auth = setup.tenant.http, setup.tenant.auth

    async def both() -> bool:
        r = await http.get("/v1/terminals", headers=auth)
        return {"cat", "other"} <= set(r.json()["programs"])

    await eventually(both)
    await setup.worker.stop()  # the only worker offering cat

    async def gone() -> bool:
        r = await http.get("/v1/terminals", headers=auth)
        return r.json()["programs"] == ["other"]

    await eventually(gone)
    body = {"cols": 80, "rows": 24}
    r = await http.post("/v1/terminals", json={"program": "cat", **body}, headers=auth)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_terminal_worker"
    r = await http.post("/v1/terminals", json={"program": "nope", **body}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_program"
    r = await http.post("/v1/terminals", json={"program": "other", **body}, headers=auth)
    assert r.status_code == 201
