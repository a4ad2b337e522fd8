"""The ``relayline serve`` server's own start-up steps: the garbage collector's settings."""

from __future__ import annotations

import asyncio
import gc

from starlette.types import Receive, Scope, Send

from relayline.config import load_settings
from relayline.server import GC_FULL_EVERY, RelayServerProcess, server_config


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]  # lifespan.startup, then lifespan.shutdown
            await send({"type": kind + ".complete"})
            if kind == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_once_started_the_heap_so_far_is_frozen_and_full_collections_are_rarer(
    restored_gc: tuple[int, int, int],
) -> None:
    assert restored_gc[2] != GC_FULL_EVERY  # the interpreter's own setting before
    gc.unfreeze()
    config = server_config(load_settings(), "127.0.0.1", 0)
    config.app = _app
    server = RelayServerProcess(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        assert gc.get_threshold() == (restored_gc[0], restored_gc[1], GC_FULL_EVERY)
        assert gc.get_freeze_count() > 0
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await serving
