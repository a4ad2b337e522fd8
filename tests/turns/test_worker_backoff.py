"""The worker daemon's reconnect loop: full-jitter backoff, and staying alive through relay
restarts and broken handshakes."""

from __future__ import annotations

import asyncio
import random

import pytest

from relayline.testing import RelayServer, WsHarness, free_port
from relayline.worker.connection import backoff_delay
from tests.conftest import SettingsFactory
from tests.fixtures import (
    KEY_ID,
    SECRET,
    Tenants,
    Workers,
    dispatcher_of,
    eventually,
    post,
    until_event,
)


class Edges(random.Random):
    """Returns the lower or upper bound asked for, to read the interval ``uniform`` gets."""

    def __init__(self, pick_upper: bool) -> None:
        super().__init__(0)
        self.pick_upper = pick_upper

    def uniform(self, a: float, b: float) -> float:
        return b if self.pick_upper else a


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10, 60, 10_000])
def test_backoff_interval_is_zero_to_capped_exponential(attempt: int) -> None:
    base, cap = 0.5, 30.0
    ceiling = min(cap, base * 2.0 ** min(attempt, 100))
    assert backoff_delay(attempt, base, cap, Edges(pick_upper=False)) == 0
    assert backoff_delay(attempt, base, cap, Edges(pick_upper=True)) == ceiling


def test_backoff_is_full_jitter_over_the_whole_interval() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((0, 0.5), (3, 4.0), (8, 30.0)):
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(2000)]
        assert all(0 <= d <= ceiling for d in delays)
        # Spread over the interval, not bunched at its top (that would be "equal jitter").
        assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling
        below_half = sum(d < ceiling / 2 for d in delays) / len(delays)
        assert 0.4 < below_half < 0.6


async def test_worker_reconnects_after_the_relay_restarts(
    make_settings: SettingsFactory, tenants: Tenants, workers: Workers
) -> None:
    settings = make_settings(worker_keys=[f"{KEY_ID}:{SECRET}"])
    port = free_port()
    async with RelayServer(settings, port=port) as first:
        tenant = await tenants.new(first)
        chat = await tenant.chat()
        worker = await workers.start(first)
        await eventually(lambda: worker.worker_id in dispatcher_of(first).workers)
    assert not worker.task.done()
    await eventually(lambda: not worker.connection.connected.is_set())
    async with RelayServer(settings, port=port) as second:
        async with asyncio.timeout(10):
            await worker.connection.connected.wait()
        assert worker.worker_id in dispatcher_of(second).workers
        tenant.http = await tenants.client(second)
        async with WsHarness(second, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            turn_id = await post(tenant, chat, "back again")
            await until_event(ws, "message.completed", turn_id=turn_id)
        await worker.kill()


async def test_worker_keeps_retrying_through_refusals_and_broken_handshakes(
    workers: Workers,
) -> None:
    """A relay that hangs up mid-handshake (restarting, a proxy in between) or refuses the
    key is retried with backoff; the daemon never gives up on its own."""
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if accepted % 2:
            writer.transport.abort()  # before any response
        else:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        worker = await workers.start(
            f"http://127.0.0.1:{port}", wait=False, reconnect_base_s=0.01, reconnect_max_s=0.05
        )
        await eventually(lambda: accepted >= 6 or worker.task.done())
        assert not worker.task.done(), worker.task
        await worker.stop()
    finally:
        server.close()
        await server.wait_closed()


async def test_worker_moves_to_the_next_relay_when_one_is_gone(
    make_settings: SettingsFactory, tenants: Tenants, workers: Workers
) -> None:
    """With several relays in RELAYLINE_RELAY_URL, a worker whose relay is unreachable (or
    dies) connects to the next one instead of waiting for the first to come back."""
    settings = make_settings(worker_keys=[f"{KEY_ID}:{SECRET}"])
    gone = f"http://127.0.0.1:{free_port()}"
    async with RelayServer(settings) as relay:
        worker = await workers.start(f"{gone}, {relay.url}", reconnect_base_s=0.01)
        assert worker.connection.relay == relay.url
        assert worker.worker_id in dispatcher_of(relay).workers
        tenant = await tenants.new(relay)
        chat = await tenant.chat()
        async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            turn_id = await post(tenant, chat, "found you")
            await until_event(ws, "message.completed", turn_id=turn_id)
        await worker.kill()


@pytest.mark.parametrize("value", ["", " , ", "127.0.0.1:8080", "http://a:1,ftp://b:2"])
def test_a_relay_url_list_with_a_bad_entry_is_refused(value: str, workers: Workers) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="relay_url"):
        workers.settings(value)


def test_what_a_worker_sends_fits_the_relays_default_frame_limit() -> None:
    import json

    from relayline.config import Settings
    from relayline.worker.connection import FRAME_TEXT_CHARS, shown_arguments

    limit = Settings(_env_file=None).ws_max_frame_bytes
    worst = "\x1f" * FRAME_TEXT_CHARS  # the longest escape JSON writes for one character
    assert len(json.dumps({"type": "turn.delta", "text": worst}, ensure_ascii=False)) < limit
    small = {"path": "notes.md", "content": "hi"}
    assert shown_arguments(small) is small
    big = {"path": "notes.md", "content": "é" * (FRAME_TEXT_CHARS * 2)}
    shown = shown_arguments(big)
    assert isinstance(shown, str) and shown.endswith("…")
    assert json.dumps(big, ensure_ascii=False).startswith(shown[:-1])
    assert len(json.dumps({"arguments": shown}, ensure_ascii=False).encode()) < limit
