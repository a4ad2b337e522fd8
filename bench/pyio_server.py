"""python-socketio peer for bench/fanout.py, on uvicorn (uvloop, httptools): the same contract
as bench/node/socketio_server.js (token in the connect packet, a ``subscribe`` event acked with
the room's seq, ``POST /publish`` emitting relayline-like envelopes to the room in order).

usage: python bench/pyio_server.py --port 8102 --token SECRET
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import socketio  # type: ignore[import-untyped]
import uvicorn

MAX_BODY = 4 * 1024 * 1024


def build(token: str) -> Any:
    sio = socketio.AsyncServer(
        async_mode="asgi", transports=["websocket"], cors_allowed_origins=[], logger=False
    )
    seqs: dict[str, int] = {}

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
        if not isinstance(auth, dict) or auth.get("token") != token:
            raise socketio.exceptions.ConnectionRefusedError("unauthorized")

    @sio.event  # type: ignore[untyped-decorator]
    async def subscribe(sid: str, topic: str) -> dict[str, Any]:
        await sio.enter_room(sid, topic)
        return {"topic": topic, "seq": seqs.get(topic, 0)}

    async def reply(send: Any, status: int, body: dict[str, Any]) -> None:
        text = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(text)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": text})

    async def http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await reply(send, 200, {"status": "ok"})
            return
        if scope["path"] != "/publish" or scope["method"] != "POST":
            await reply(send, 404, {"error": "not found"})
            return
        headers = dict(scope["headers"])
        if headers.get(b"authorization") != f"Bearer {token}".encode():
            await reply(send, 401, {"error": "unauthorized"})
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY:
                await reply(send, 413, {"error": "too large"})
                return
        body = json.loads(b"".join(chunks))
        topic = body["topic"]
        seq = seqs.get(topic, 0)
        out = []
        for event in body["events"][:1000]:
            seq += 1
            seqs[topic] = seq
            out.append(seq)
            envelope = {
                "v": 1,
                "id": uuid.uuid4().hex,
                "topic": topic,
                "type": event["type"],
                "seq": seq,
                "ts": int(time.time() * 1000),
                "data": event["data"],
            }
            await sio.emit("event", envelope, room=topic)
        await reply(send, 202, {"seqs": out})

    return socketio.ASGIApp(sio, other_asgi_app=http_app)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--token", default="bench-token")
    args = parser.parse_args()
    uvicorn.run(
        build(args.token),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws_ping_interval=None,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
