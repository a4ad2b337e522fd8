"""relayline.client against a real relay and the built-in model's worker: streaming, resume
across a relay restart, events.missed, the close-code policy, resends by client_msg_id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from relayline.client import (
    Backoff,
    ConnectionStopped,
    Event,
    OpError,
    RelayClient,
    Reset,
    Subscription,
    TurnCancelled,
)
from relayline.testing import RelayServer
from tests.fixtures import (
    RelayFactory,
    Tenants,
    Workers,
    admin,
    local_answer,
    messages,
)

FAST = Backoff(base_s=0.02, max_s=0.3, restart_spread_s=0.2)
Make = Callable[..., Awaitable[RelayClient]]


@pytest.fixture
async def clients() -> AsyncIterator[Make]:
    made: list[RelayClient] = []

    async def make(relay: RelayServer, token: str, **options: object) -> RelayClient:
        options.setdefault("backoff", FAST)
        client = RelayClient(relay.url, token, **options)  # type: ignore[arg-type]
        made.append(client)
        await client.connect()
        return client

    yield make
    for client in made:
        await client.close()


async def drain(sub: Subscription) -> list[Event | Reset]:
    """What the subscription holds now, without waiting for more."""
    items: list[Event | Reset] = []
    while True:
        try:
            items.append(await asyncio.wait_for(sub.__anext__(), 0.05))
        except TimeoutError:
            return items


async def collect_until(
    sub: Subscription, done: Callable[[list[Event | Reset]], bool], timeout_s: float = 10.0
) -> list[Event | Reset]:
    """Items of the subscription until ``done`` says they are enough (within ``timeout_s``),
    then whatever else it holds now."""
    items: list[Event | Reset] = []
    async with asyncio.timeout(timeout_s):
        while not done(items):
            items.append(await sub.__anext__())
    return items + await drain(sub)


async def test_send_streams_the_answer(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, clients: Make
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    client = await clients(relay, tenant.key)
    chat = await client.create_chat("first")

    answer = await chat.send("hello there")
    deltas = [d async for d in answer]

    expected = local_answer(("user", "hello there"))
    assert len(deltas) > 1  # streamed, not delivered whole
    assert "".join(d.text for d in deltas) == expected
    assert {d.turn_id for d in deltas} == {answer.turn_id}
    stored = await messages(tenant, chat.id)
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "hello there"),
        ("assistant", expected),
    ]


async def test_resume_after_a_relay_restart_loses_and_doubles_nothing(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, clients: Make
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    client = await clients(relay, tenant.key)
    chat = await client.create_chat()
    events = await chat.events()
    first = await (await chat.send("one")).text()
    old_epoch = (await chat.snapshot()).epoch

    # The same SQLite file and port: a restart, as an operator does it.
    await relay.stop()
    again = RelayServer(relay.settings, port=relay.port)
    await again.start()
    try:
        second = await (await chat.send("two")).text()

        def reset_and_second_answer(items: list[Event | Reset]) -> bool:
            # The Reset waits for the snapshot the client fetches from the new relay, which
            # may come after the second answer has streamed on the chat's own subscription.
            return any(isinstance(i, Reset) for i in items) and any(
                isinstance(i, Event)
                and i.type == "message.completed"
                and i.data.get("content") == second
                for i in items
            )

        items = await collect_until(events, reset_and_second_answer)
        stored = await messages(tenant, chat.id)
    finally:
        await client.close()
        await again.stop()

    assert first == local_answer(("user", "one"))
    assert second == local_answer(("user", "one"), ("assistant", first), ("user", "two"))
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "one"),
        ("assistant", first),
        ("user", "two"),
        ("assistant", second),
    ]
    # The restarted relay's log is a new one: the client was told, with the chat as stored.
    resets = [i for i in items if isinstance(i, Reset)]
    assert len(resets) == 1
    snapshot = resets[0].snapshot
    assert snapshot is not None and snapshot.chat_id == chat.id
    assert snapshot.epoch != old_epoch
    seen = [i for i in items if isinstance(i, Event)]
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids))
    new_log = [e.seq for e in seen if items.index(e) > items.index(resets[0])]
    assert new_log == sorted(set(new_log))
    assert [e.data["content"] for e in seen if e.type == "message.completed"][-1] == second


async def test_events_missed_reloads_the_snapshot(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, clients: Make
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    client = await clients(relay, tenant.key)
    chat = await client.create_chat()
    events = await chat.events()
    await (await chat.send("hi")).text()
    assert not [i for i in await drain(events) if isinstance(i, Reset)]

    # A position from a log the relay no longer has; then the link breaks.
    conn = client.connection
    conn.positions[chat.topic] = ("an-epoch-long-gone", 3)
    ws = conn._ws
    assert ws is not None
    ws.transport.abort()

    async with asyncio.timeout(10):
        item = await events.__anext__()
    assert isinstance(item, Reset)
    assert item.topic == chat.topic
    assert item.snapshot is not None
    assert item.snapshot.chat_id == chat.id
    assert item.snapshot.epoch != "an-epoch-long-gone"
    assert item.snapshot.turn is None  # the answer is complete; nothing in progress
    # The stream carries on from the relay's position.
    answer = await (await chat.send("again")).text()
    assert answer
    completed = [i for i in await drain(events) if isinstance(i, Event)]
    assert any(e.type == "message.completed" for e in completed)


async def test_a_refused_token_asks_the_callback_and_carries_on(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, clients: Make
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    chat_id = await tenant.chat()
    asked: list[str] = []

    async def new_token() -> str:
        asked.append("x")
        return await tenant.session([chat_id])

    client = await clients(relay, "not-a-token", on_new_token=new_token)
    answer = await (await client.chat(chat_id).send("hello")).text()

    assert asked == ["x"]
    assert answer == local_answer(("user", "hello"))


async def test_a_revoked_key_asks_the_callback_for_a_new_one(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, clients: Make
) -> None:
    relay = await turn_relay(auth_revalidate_s=0.5)
    await workers.start(relay)
    tenant = await tenants.new(relay)
    keys_url = f"/v1/admin/tenants/{tenant.id}/keys"
    first = (await tenant.http.post(keys_url, json={}, headers=admin())).json()
    second = (await tenant.http.post(keys_url, json={}, headers=admin())).json()
    asked: list[str] = []

    async def new_token() -> str:
        asked.append("x")
        return str(second["key"])

    client = await clients(relay, first["key"], on_new_token=new_token)
    chat = await client.create_chat()
    one = await (await chat.send("one")).text()
    r = await tenant.http.delete(f"/v1/admin/keys/{first['id']}", headers=admin())
    assert r.status_code in (200, 204), r.text

    # The relay ends the revoked key's connection (4401); the client reconnects with the new one.
    async with asyncio.timeout(10):
        while not asked:
            await asyncio.sleep(0.02)
    answer = await (await chat.send("two")).text()
    assert asked == ["x"]
    assert client.connection.token == second["key"]
    assert answer == local_answer(("user", "one"), ("assistant", one), ("user", "two"))


async def test_a_forbidden_origin_stops_with_an_error(relay: RelayServer, tenants: Tenants) -> None:
    tenant = await tenants.new(relay)
    client = RelayClient(relay.url, tenant.key, origin="https://evil.example", backoff=FAST)
    try:
        with pytest.raises(ConnectionStopped) as stopped:
            async with asyncio.timeout(10):
                await client.connect()
    finally:
        await client.close()
    assert stopped.value.code == 4403


async def test_a_send_whose_ack_was_lost_is_sent_again_and_stored_once(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, clients: Make
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    client = await clients(relay, tenant.key)
    chat = await client.create_chat()
    conn = client.connection
    sent: list[dict[str, object]] = []
    lost: list[dict[str, object]] = []
    original_request = conn._request
    original_on_frame = conn._on_frame

    async def recording_request(op: str, fields: dict[str, object]) -> dict[str, object]:
        if op == "send":
            sent.append(dict(fields))
        return await original_request(op, fields)

    def losing_on_frame(ws: object, frame: dict[str, object]) -> None:
        data = frame.get("data")
        if not lost and frame.get("type") == "ack" and isinstance(data, dict) and "turn_id" in data:
            lost.append(frame)
            conn._ws.transport.abort()  # type: ignore[union-attr]
            return
        original_on_frame(ws, frame)  # type: ignore[arg-type]

    conn._request = recording_request  # type: ignore[method-assign]
    conn._on_frame = losing_on_frame  # type: ignore[method-assign]

    answer = await chat.send("only once", client_msg_id="m-1")
    text = await answer.text()

    assert len(lost) == 1
    assert [s["client_msg_id"] for s in sent] == ["m-1", "m-1"]
    assert answer.duplicate  # the relay had it: the first try was stored
    assert text == local_answer(("user", "only once"))
    stored = await messages(tenant, chat.id)
    assert [(m["role"], m["client_msg_id"]) for m in stored] == [
        ("user", "m-1"),
        ("assistant", None),
    ]


async def test_a_tool_call_waits_for_approve_and_the_answer_follows(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, clients: Make, workspace: Path
) -> None:
    relay = await turn_relay()
    await workers.start(relay)
    tenant = await tenants.new(relay)
    r = await tenant.http.put(
        f"/v1/admin/tenants/{tenant.id}/agent", json={"tools": ["edit_file"]}, headers=admin()
    )
    assert r.status_code == 200, r.text
    client = await clients(relay, tenant.key)
    chat = await client.create_chat()

    async with await chat.events() as events:
        answer = await chat.send("/edit notes.md written from Python")
        async with asyncio.timeout(10):
            asked = await first_of(events, "tool.approval_requested")
        await chat.approve(asked.data["approval_id"])
        text = await answer.text()
        with pytest.raises(OpError) as again:
            await chat.approve(asked.data["approval_id"])

    assert (workspace / "notes.md").read_text() == "written from Python"
    assert "Here is what `edit_file` returned" in text
    assert again.value.code == "not_found"


async def test_cancel_ends_the_answer_with_turn_cancelled(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, clients: Make
) -> None:
    relay = await turn_relay()
    await workers.start(relay, local_model_delay_s=0.05)  # slow enough to cancel mid-answer
    tenant = await tenants.new(relay)
    client = await clients(relay, tenant.key)
    chat = await client.create_chat()
    answer = await chat.send("tell me something long")

    with pytest.raises(TurnCancelled) as cancelled:
        async for _ in answer:
            assert await chat.cancel() == answer.turn_id

    assert cancelled.value.turn_id == answer.turn_id


async def first_of(sub: Subscription, type: str) -> Event:
    async for item in sub:
        if isinstance(item, Event) and item.type == type:
            return item
    raise AssertionError(f"the subscription ended before {type}")


async def test_an_answer_cut_by_events_missed_resumes_from_the_snapshot_without_doubling(
    turn_relay: RelayFactory, workers: Workers, tenants: Tenants, clients: Make
) -> None:
    relay = await turn_relay()
    await workers.start(relay, local_model_delay_s=0.02)
    tenant = await tenants.new(relay)
    client = await clients(relay, tenant.key)
    chat = await client.create_chat()
    watcher = await chat.events()
    answer = await chat.send("tell me something long")
    pieces: list[str] = []

    async for delta in answer:
        pieces.append(delta.text)
        if len(pieces) == 2:
            # The log the client's position points into is gone; then the link breaks.
            client.connection.positions[chat.topic] = ("an-epoch-long-gone", 1)
            ws = client.connection._ws
            assert ws is not None
            ws.transport.abort()

    expected = local_answer(("user", "tell me something long"))
    assert "".join(pieces) == expected
    assert answer.content == expected
    assert len(pieces) > 3
    # The watcher's Reset waits for its snapshot: wait for it (bounded), then take the rest.
    items = await collect_until(watcher, lambda got: any(isinstance(i, Reset) for i in got))
    resets = [i for i in items if isinstance(i, Reset)]
    assert len(resets) == 1


async def test_a_topic_the_token_does_not_cover_is_refused(
    relay: RelayServer, tenants: Tenants, clients: Make
) -> None:
    tenant = await tenants.new(relay)
    mine, other = await tenant.chat(), await tenant.chat()
    client = await clients(relay, await tenant.session([mine]))

    with pytest.raises(OpError) as refused:
        await client.chat(other).events()
    events = await client.chat(mine).events()  # the connection carries on

    assert refused.value.code == "forbidden"
    assert f"chat:{other}" not in client.connection.positions
    await events.aclose()
