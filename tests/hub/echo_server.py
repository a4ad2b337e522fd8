"""An echo WebSocket server for the Autobahn|Testsuite fuzzing client (tests/hub/test_autobahn.py).

``--server relay`` serves the echo app with exactly the uvicorn settings of ``relayline serve``
(:func:`relayline.server.server_config`, the relay's own WebSocket protocol class, the same
server class), only the app swapped; ``--server websockets`` and ``--server wsproto`` serve it
on stock uvicorn's protocols, as the reference. The frame size cap is the same for all three.

Run as ``python -m tests.hub.echo_server --server relay --port 9001``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def echo_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Every WebSocket message is sent back as it came (text as text, bytes as bytes)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def relay_server(port: int, max_size: int) -> uvicorn.Server:
    from relayline.config import load_settings
    from relayline.server import RelayServerProcess, server_config

    settings = load_settings(ws_max_frame_bytes=max_size)
    config = server_config(settings, "127.0.0.1", port)
    config.app = echo_app
    return RelayServerProcess(config)


def stock_server(port: int, max_size: int, ws: str) -> uvicorn.Server:
    config = uvicorn.Config(
        echo_app,
        host="127.0.0.1",
        port=port,
        ws=ws,  # type: ignore[arg-type]
        ws_max_size=max_size,
        ws_per_message_deflate=False,
        log_level="warning",
        lifespan="on",
    )
    return uvicorn.Server(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["relay", "websockets", "wsproto"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-size", type=int, default=16 * 1024 * 1024)
    args = parser.parse_args()
    if args.server == "relay":
        server = relay_server(args.port, args.max_size)
    else:
        server = stock_server(args.port, args.max_size, args.server)
    server.run()


if __name__ == "__main__":
    main()
