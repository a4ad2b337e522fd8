"""The JavaScript SDK (clients/js) in Node against a real relay and the built-in model's
worker: an answer streamed to a subscriber, resume across a relay restart, and a message sent
while the relay is down delivered once after it is back. The SDK runs in a Node process
(clients/js/test/relay_driver.mjs) that takes one command per line."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import relayline
from relayline.testing import RelayServer
from tests.fixtures import RelayFactory, Tenants, Workers, local_answer, messages

SDK = Path(relayline.__file__).resolve().parent / "web" / "static" / "sdk"

DRIVER = Path(__file__).resolve().parents[2] / "clients" / "js" / "test" / "relay_driver.mjs"
NODE = shutil.which("node")


def _websocket_flag() -> list[str]:
    """Node 22 has a global WebSocket; Node 20.10+ has it behind a flag."""
    assert NODE is not None
    probe = subprocess.run(
        [NODE, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False
    )
    return [] if probe.returncode == 0 else ["--experimental-websocket"]


needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


async def test_every_relay_serves_the_sdk_to_pages(relay: RelayServer) -> None:
    async with httpx.AsyncClient(base_url=relay.url) as http:
        index = await http.get("/static/sdk/index.js")
        module = await http.get("/static/sdk/client.js")
        types = await http.get("/static/sdk/client.d.ts")

    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/javascript")
    assert 'from "./client.js"' in index.text
    assert module.text == (SDK / "client.js").read_text(encoding="utf-8")
    assert types.status_code == 404  # declarations are for packages, not pages


class Driver:
    """The Node process running the SDK."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def __call__(
        self, cmd: str, timeout: float = 20.0, expect_error: bool = False, **args: Any
    ) -> dict[str, Any]:
        """Run ``cmd``; its answer (with ``expect_error``: the error it must end with)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        assert line, f"the driver ended during {cmd}"
        reply: dict[str, Any] = json.loads(line)
        assert reply.pop("ok") != expect_error, f"{cmd}: {reply}"
        return reply


@pytest.fixture
async def driver() -> AsyncIterator[Driver]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        *_websocket_flag(),
        "--no-warnings",
        str(DRIVER),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield Driver(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@needs_node
async def test_a_subscriber_receives_the_streamed_answer(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, driver: Driver
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    chat_id = await tenant.chat()
    await driver("connect", url=relay.url, token=tenant.key)
    await driver("subscribe", chat_id=chat_id)

    answer = await driver("send", chat_id=chat_id, text="hello there", client_msg_id="m-1")
    items = (await driver("items"))["items"]
    await driver("close")

    expected = local_answer(("user", "hello there"))
    assert answer["text"] == expected
    assert len(answer["pieces"]) > 1 and "".join(answer["pieces"]) == expected
    assert not answer["duplicate"]
    types = [i["type"] for i in items]
    assert types[0] == "message.created" and "message.completed" in types
    assert [i["data"]["content"] for i in items if i["type"] == "message.completed"] == [expected]
    stored = await messages(tenant, chat_id)
    assert [(m["role"], m["content"], m["client_msg_id"]) for m in stored] == [
        ("user", "hello there", "m-1"),
        ("assistant", expected, None),
    ]


@needs_node
async def test_resume_after_a_relay_restart_loses_and_doubles_nothing(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, driver: Driver
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    chat_id = await tenant.chat()
    await driver("connect", url=relay.url, token=tenant.key)
    await driver("subscribe", chat_id=chat_id)
    first = (await driver("send", chat_id=chat_id, text="one"))["text"]
    before = (await driver("items"))["items"]

    # The same SQLite file and port: a restart, as an operator does it.
    await relay.stop()
    again = RelayServer(relay.settings, port=relay.port)
    await again.start()
    try:
        second = (await driver("send", chat_id=chat_id, text="two"))["text"]
        items = (await driver("items"))["items"]
        await driver("close")
        stored = await messages(tenant, chat_id)
    finally:
        await again.stop()

    assert first == local_answer(("user", "one"))
    assert second == local_answer(("user", "one"), ("assistant", first), ("user", "two"))
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "one"),
        ("assistant", first),
        ("user", "two"),
        ("assistant", second),
    ]
    # The restarted relay's log is a new one: the subscriber was told, once, then carried on.
    assert items[: len(before)] == before
    resets = [n for n, i in enumerate(items) if i.get("reset")]
    assert len(resets) == 1 and resets[0] >= len(before)
    events = [i for i in items if "id" in i]
    assert len({e["id"] for e in events}) == len(events)
    after = [i["seq"] for i in items[resets[0] + 1 :]]
    assert after == sorted(set(after))
    completed = [i["data"]["content"] for i in events if i["type"] == "message.completed"]
    assert completed == [first, second]


@needs_node
async def test_a_message_sent_while_the_relay_is_down_is_delivered_once(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, driver: Driver
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    chat_id = await tenant.chat()
    await driver("connect", url=relay.url, token=tenant.key)
    await driver("subscribe", chat_id=chat_id)

    await relay.stop()
    await driver("wait_offline")
    queued = await driver("send_later", chat_id=chat_id, text="while away", client_msg_id="m-away")
    again = RelayServer(relay.settings, port=relay.port)
    await again.start()
    try:
        answer = await driver("wait_send", client_msg_id="m-away")
        items = (await driver("items"))["items"]
        await driver("close")
        stored = await messages(tenant, chat_id)
    finally:
        await again.stop()

    assert queued["queued"] == 1 and queued["state"] != "online"
    expected = local_answer(("user", "while away"))
    assert answer["text"] == expected
    assert [(m["role"], m["content"], m["client_msg_id"]) for m in stored] == [
        ("user", "while away", "m-away"),
        ("assistant", expected, None),
    ]
    created = [i for i in items if i.get("type") == "message.created"]
    assert [
        i["data"]["message"]["client_msg_id"]
        for i in created
        if i["data"]["message"]["role"] == "user"
    ] == ["m-away"]


@needs_node
async def test_the_node_example_runs_as_written(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    assert NODE is not None
    example = DRIVER.parents[1] / "examples" / "stream.mjs"
    proc = await asyncio.create_subprocess_exec(
        NODE,
        *_websocket_flag(),
        "--no-warnings",
        str(example),
        "Hello there",
        env={"RELAYLINE_URL": relay.url, "RELAYLINE_TOKEN": tenant.key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert proc.returncode == 0, err.decode()
    assert out.decode() == local_answer(("user", "Hello there")) + "\n"


@needs_node
async def test_a_refused_token_asks_the_callback_and_carries_on(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, driver: Driver
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    chat_id = await tenant.chat()
    session = await tenant.session([chat_id])

    await driver("connect", url=relay.url, token="not-a-token", next_token=session)
    answer = await driver("send", chat_id=chat_id, text="hello")
    status = await driver("status")
    await driver("close")

    assert status == {"asked": 1, "state": "online", "stopped": None, "token": session}
    assert answer["text"] == local_answer(("user", "hello"))


@needs_node
async def test_a_refused_token_with_no_new_one_stops(
    relay: RelayServer, tenants: Tenants, driver: Driver
) -> None:
    reply = await driver("connect", url=relay.url, token="not-a-token", expect_error=True)

    assert reply["code"] == 4401 and reply["error"].startswith("ConnectionStopped")
    assert (await driver("status"))["asked"] == 1
