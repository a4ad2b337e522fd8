"""How the relay runs under uvicorn: one place for the server settings every entry point uses."""

from __future__ import annotations

import gc
import socket

import uvicorn

from relayline.api.app import RelayApp, create_app
from relayline.config import Settings
from relayline.http_protocol import http_protocol_class
from relayline.hub.protocol import protocol_class


def server_config(settings: Settings, host: str, port: int, **extra: object) -> uvicorn.Config:
    """uvicorn settings: uvloop, httptools with deadlines on request heads and bodies and errors
    in the relay's shape, the relay's WebSocket protocol, no uvicorn keepalive pings (the hub
    runs its own heartbeat, closing with 4408), no access log (the relay writes its own,
    redacted)."""
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop="uvloop",
        http=http_protocol_class(settings.request_head_timeout_s, settings.request_body_timeout_s),
        ws=protocol_class(settings.ws_send_buffer, settings.ws_write_high_water),
        ws_max_size=settings.ws_max_frame_bytes,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_drain_s)),
        **extra,  # type: ignore[arg-type]
    )


class RelayUvicornServer(uvicorn.Server):
    """uvicorn's server, whose failed start-up returns (``started`` stays False) instead of
    calling ``sys.exit(3)`` from inside the event loop: the caller — the CLI, a test — ends
    the process its own way and says why (the app logged the cause as one line); and whose
    shutdown tells the relay before its connections are closed."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit:
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Tell the app before uvicorn closes its connections (see ``RelayApp.stopping``)."""
        if isinstance(self.config.app, RelayApp):
            self.config.app.stopping()
        await super().shutdown(sockets)


# A full collection (every live object) is considered once per this many collections of the
# middle generation (CPython's default is 10), and still only when the objects promoted since
# the last one are a quarter of the heap. A relay taking thousands of connections at once (a
# reconnect storm) grows its heap quickly, and at the default each growth of a quarter set off
# a full collection of every live connection's objects: 17 of them in a 10,000-client storm,
# 1 at 100 (``bench/storm.py`` reports the count). The young generations keep their defaults:
# collecting the youngest less often (every 50,000 allocations, not 700) measured a slower
# fan-out. Cyclic garbage that lived long enough to be promoted is found later, not never.
GC_FULL_EVERY = 100


class RelayServerProcess(RelayUvicornServer):
    """The server of ``relayline serve``, plus two steps once start-up is done: everything
    allocated so far (modules, the app, pools) is moved out of the garbage collector's view, so
    full collections under load walk only live request and connection objects (measured:
    full-GC pauses at 1,000 sockets fell from ~100 ms to ~30 ms); and full collections are
    considered less often (:data:`GC_FULL_EVERY`)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            gc.collect()
            gc.freeze()
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, GC_FULL_EVERY)
