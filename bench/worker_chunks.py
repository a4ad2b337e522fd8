"""The worker's CPU per streamed chunk, model server → worker → relay link.

    .venv/bin/python bench/worker_chunks.py                        # paced and flood, 5 runs each
    .venv/bin/python bench/worker_chunks.py --mode paced --runs 3 --streams 200

A second process (this file with ``--serve``) is both ends the worker talks to: an
OpenAI-compatible model server on 127.0.0.1 (HTTP/1.1, one HTTP chunk per SSE event, as
llama.cpp writes them) and a relay link (a WebSocket server that reads the worker's frames and,
when a turn ends, answers with what it got for it). This process runs the worker's own code:
the relay connection of ``relayline worker`` (``build_connection``: the OpenAI-compatible client,
its metrics wrapper, the agent runner) with its WebSocket connected to that link, and hands it
``--streams`` completions at once (``turn.assigned`` frames with a ``completion``, as the
gateway's are). Every turn must end ``turn.done`` with ``finish_reason`` ``stop``, its usage, and
exactly the text the model server sent, or the run fails.

Modes: ``paced``: each stream's chunks ``--interval-ms`` apart (the server's pace, like a model
server decoding a batch of streams: one token per stream per step); ``flood``: each stream's
chunks as fast as the sockets take them. The figure is the worker process's CPU time
(``time.process_time``) per 10,000 chunks, over the whole run (request to last frame); the
median of ``--runs`` runs is reported, each run's figure listed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
WORD = " lorem"
RUN_TIMEOUT_S = 300.0


# The second process: model server and relay link


def _event(
    text: str | None, finish: str | None = None, usage: dict[str, int] | None = None
) -> bytes:
    """One SSE event shaped as llama.cpp's server writes it, framed as one HTTP chunk."""
    payload: dict[str, Any] = {
        "choices": [
            {
                "finish_reason": finish,
                "index": 0,
                "delta": {} if text is None else {"content": text},
            }
        ]
        if usage is None
        else [],
        "created": 1765000000,
        "id": "chatcmpl-bench0000000000000000000000",
        "model": "bench-model",
        "system_fingerprint": "b7000-0000000",
        "object": "chat.completion.chunk",
    }
    if usage is not None:
        payload["usage"] = usage
    data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _serve_model(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = json.loads(await reader.readexactly(length))
            # The model's name says what to send: bench:<chunks>:<interval_ms>.
            _, chunks_s, interval_s = str(body["model"]).split(":")
            chunks, interval = int(chunks_s), float(interval_s) / 1000
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=100\r\n\r\n"
            )
            piece = _event(WORD)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n in range(chunks):
                writer.write(piece)
                if interval:
                    await writer.drain()
                    await asyncio.sleep(max(0.0, start + (n + 1) * interval - loop.time()))
                elif n % 16 == 15:
                    await writer.drain()
            writer.write(_event(None, "stop"))
            writer.write(_event(None, usage={"prompt_tokens": 5, "completion_tokens": chunks}))
            done = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            await writer.drain()


async def _serve_link(ws: Any) -> None:
    """The relay's end: counts each turn's frames and text, answers its end with them."""
    got: dict[str, list[Any]] = {}
    async for raw in ws:
        frame = json.loads(raw)
        turn = str(frame.get("turn_id"))
        kind = frame.get("type")
        if kind == "turn.delta":
            seen = got.setdefault(turn, [0, 0])
            seen[0] += 1
            seen[1] += len(frame.get("text") or "")
        elif kind in ("turn.done", "turn.failed"):
            frames, chars = got.pop(turn, [0, 0])
            await ws.send(
                json.dumps({"type": "ack", "end": frame, "frames": frames, "chars": chars})
            )


async def serve() -> None:
    from websockets.asyncio.server import serve as ws_serve

    model = await asyncio.start_server(_serve_model, HOST, 0, backlog=1024)
    async with ws_serve(_serve_link, HOST, 0, compression=None, max_size=16 * 1024 * 1024) as link:
        ports = (model.sockets[0].getsockname()[1], next(iter(link.sockets)).getsockname()[1])
        print(json.dumps({"model": ports[0], "link": ports[1]}), flush=True)
        await asyncio.get_running_loop().create_future()


# This process: the worker


async def one_run(
    conn: Any, ws: Any, streams: int, chunks: int, interval_ms: float
) -> dict[str, Any]:
    acks: dict[str, dict[str, Any]] = {}
    everyone = asyncio.get_running_loop().create_future()

    async def read_acks() -> None:
        async for raw in ws:
            ack = json.loads(raw)
            if ack.get("type") != "ack":
                continue
            acks[str(ack["end"]["turn_id"])] = ack
            if len(acks) == streams and not everyone.done():
                everyone.set_result(None)

    reader = asyncio.create_task(read_acks())
    tag = os.urandom(3).hex()
    model = f"bench:{chunks}:{interval_ms:g}"
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(streams):
        await conn._on_frame(
            {
                "type": "turn.assigned",
                "turn_id": f"{tag}-{i}",
                "attempt": 1,
                "chat_id": "bench",
                "model": model,
                "messages": [{"role": "user", "content": "hello"}],
                "completion": {"tools": []},
                "deadline": int((time.time() + RUN_TIMEOUT_S) * 1000),
            }
        )
    try:
        await asyncio.wait_for(everyone, RUN_TIMEOUT_S)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    frames = 0
    for turn, ack in acks.items():
        end = ack["end"]
        if end["type"] != "turn.done" or end.get("finish_reason") != "stop":
            raise SystemExit(f"turn {turn} ended {end}")
        if ack["chars"] != chunks * len(WORD) or end["usage"]["tokens_out"] != chunks:
            raise SystemExit(f"turn {turn}: {ack['chars']} characters, usage {end['usage']}")
        frames += ack["frames"]
    total = streams * chunks
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "us_per_chunk": cpu / total * 1e6,
        "cpu_s_per_10k": cpu / total * 10_000,
        "chunks_per_s": total / wall,
        "frames_per_chunk": frames / total,
    }


async def drive(args: argparse.Namespace, ports: dict[str, int]) -> list[dict[str, Any]]:
    import structlog
    from websockets.asyncio.client import connect

    from relayline.worker.daemon import build_connection
    from relayline.worker.settings import WorkerSettings

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = WorkerSettings(
        llm_url=f"http://{HOST}:{ports['model']}/v1",
        model="bench-model",
        llm_probe=False,
        llm_max_inflight=args.streams,
        worker_capacity=args.streams,
    )
    conn, llm = build_connection(settings)
    results = []
    async with connect(
        f"ws://{HOST}:{ports['link']}/", compression=None, max_size=16 * 1024 * 1024
    ) as ws:
        with contextlib.suppress(ImportError):  # the relay connection's write batching, if any
            from relayline.worker.cork import cork

            cork(ws)
        conn.ws = ws
        # One warm-up run (connections, imports) that is not counted.
        await one_run(conn, ws, min(args.streams, 10), 20, 0)
        for modes in args.mode:
            for n in range(args.runs):
                interval = args.interval_ms if modes == "paced" else 0.0
                result = await one_run(conn, ws, args.streams, args.chunks, interval)
                result["mode"] = modes
                results.append(result)
                print(
                    f"{modes:5} run {n + 1}: {result['us_per_chunk']:6.1f} µs/chunk "
                    f"({result['cpu_s_per_10k']:.2f} CPU s per 10k), "
                    f"{result['chunks_per_s']:7.0f} chunks/s, "
                    f"{result['frames_per_chunk']:.3f} frames/chunk",
                    flush=True,
                )
    await llm.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["paced", "flood"], action="append")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=200, help="per stream")
    parser.add_argument("--interval-ms", type=float, default=50.0, help="paced mode's pace")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the runs' figures here")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    args.mode = args.mode or ["paced", "flood"]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())
        results = asyncio.run(drive(args, ports))
    finally:
        server.terminate()
        server.wait(10)
    print()
    for mode in args.mode:
        runs = [r for r in results if r["mode"] == mode]
        print(
            f"{mode}: {args.streams} streams x {args.chunks} chunks, median of {len(runs)}: "
            f"{statistics.median(r['us_per_chunk'] for r in runs):.1f} µs worker CPU per chunk "
            f"({statistics.median(r['cpu_s_per_10k'] for r in runs):.2f} s per 10,000), "
            f"{statistics.median(r['chunks_per_s'] for r in runs):.0f} chunks/s, "
            f"{statistics.median(r['frames_per_chunk'] for r in runs):.3f} frames per chunk"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
