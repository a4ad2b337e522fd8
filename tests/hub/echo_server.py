"""An echo WebSocket server for the Autobahn|Testsuite fuzzing client (tests/hub/test_autobahn.py).

``--server relay`` serves the echo app with exactly the uvicorn settings of ``relayline serve``
(:func:`relayline.server.server_config`, the relay's own WebSocket protocol class, the same
server class), only the app swapped; ``--server websockets`` and ``--server wsproto`` serve it
on stock uvicorn's protocols, as the reference. The frame size cap is the same for all three.

Run as ``python -m tests.hub.echo_server --server relay --port 9001``; tests start it with
:func:`running`.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

ROOT = Path(__file__).resolve().parents[2]

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(server: str, max_size: int) -> Iterator[tuple[int, int]]:
    """This module as a process serving ``server``: its (pid, port) once it listens."""
    port = free_port()
    env = {**os.environ, "RELAYLINE_LOG_LEVEL": "WARNING"}
    args = ["--server", server, "--port", str(port), "--max-size", str(max_size)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hub.echo_server", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(600):  # up to about 30 s to start
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"the {server} echo server exited: {err[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the {server} echo server did not start listening")
        yield proc.pid, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


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
