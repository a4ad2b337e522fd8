"""The OpenAI-compatible gateway's cost: streaming completions through relay + worker against
asking the same OpenAI-compatible server directly, at 1, 50 and 200 concurrent streams.

    .venv/bin/python bench/completions.py                  # 1, 50, 200 streams; ~3 min
    .venv/bin/python bench/completions.py --streams 200 --rounds 3

Three processes besides this driver: a scripted OpenAI-compatible server (this file with
``--serve-upstream``), ``relayline worker`` pointed at it, and ``relayline serve`` (SQLite,
in-process bus; the benches' lifted rate limits, ``servers.RELAY_ENV``). The relay runs on CPU 0;
the model server, the worker and this driver share CPU 1 (the LLM host).

The model server streams ``--chunks`` chunks ``--interval-ms`` apart (20 tokens a second by
default, a fast model's pace), and writes into each chunk's text the wall-clock time it sent it.
A stream's chunk latency is when the driver read the chunk minus that time; time to first token
is from the request's start to the first chunk with text. Each round runs ``n`` streams directly
at the model server, then ``n`` through the relay (``POST /v1/chat/completions``, ``stream:
true``, with the same body), the streams' starts spread over one second, each stream 10 s long
by default. Time to first token is over every stream (the start-up burst included: ``n``
completions created and claimed within a second); chunk latency is over the chunks sent while
all ``n`` streams were streaming. The driver reads the streams over plain sockets (a few lines
of HTTP/1.1, a regular expression for the stamps): it shares its CPU with the model server and
the worker. *Added* is the relay path's figure minus the direct path's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from servers import ADMIN_KEY, HOST, ROOT, machine, provision, spawn_relay, versions
from turns import cpu_seconds

KEY_ID = "bench-completions"
SECRET = "bench-completions-" + os.urandom(16).hex()
MODEL = "bench-model"
STREAM_TIMEOUT_S = 60.0
UPSTREAM_CPU, RELAY_CPU = 1, 0


def pin(cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


# The model server


async def serve_upstream(port: int, chunks: int, interval_s: float) -> None:
    """A minimal OpenAI-compatible server: every chat completion streams ``chunks`` chunks whose
    text is the time they were sent (``"<ns>;"``), then usage and ``[DONE]``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if not head.startswith(b"POST ") or b"/chat/completions" not in head.split(b"\r\n")[0]:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )

            def event(payload: dict[str, object] | str) -> None:
                text = payload if isinstance(payload, str) else json.dumps(payload)
                data = f"data: {text}\n\n".encode()
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

            event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for _ in range(chunks):
                await asyncio.sleep(interval_s)
                delta = {"content": f"{time.time_ns()};"}
                event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                await writer.drain()
            event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            event({"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": chunks}})
            event("[DONE]")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


# One stream


@dataclass
class Stream:
    ttft_s: float | None = None
    # (when the model server sent the chunk, ns since the epoch; seconds until it was read)
    chunks: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None


# The stamps in a chunk's text, whether its JSON has spaces after colons (the model server) or
# not (the relay).
STAMPS = re.compile(rb'"content": ?"([0-9;]+)"')


async def one_stream(port: int, path: str, key: str | None) -> Stream:
    """One streamed completion over a plain socket: a few lines of HTTP/1.1 and chunked
    decoding, and a regular expression for the stamps. The driver shares its CPU with the
    model server and the worker, so it must cost far less per chunk than either (an HTTP
    client library parsing every chunk as JSON costs several times more than the worker)."""
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Count."}], "stream": True}
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nAccept: text/event-stream\r\n"
        + (f"Authorization: Bearer {key}\r\n" if key else "")
        + "Connection: close\r\n\r\n"
    ).encode()
    found = Stream()
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(head + body)
            status = await reader.readuntil(b"\r\n\r\n")
            if not status.startswith(b"HTTP/1.1 200"):
                found.error = status.split(b"\r\n", 1)[0].decode(errors="replace")
                return found
            pending = b""
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                now_ns = time.time_ns()
                pending += data[:-2]
                events = pending.split(b"\n\n")
                pending = events.pop()
                for event in events:
                    if b'"error"' in event:
                        found.error = event[:200].decode(errors="replace")
                        return found
                    for match in STAMPS.finditer(event):
                        if found.ttft_s is None:
                            found.ttft_s = time.perf_counter() - started
                        for stamp in match.group(1).split(b";"):
                            if stamp:
                                sent = int(stamp)
                                found.chunks.append((sent, (now_ns - sent) / 1e9))
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        found.error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    return found


async def run_streams(n: int, port: int, path: str, key: str | None) -> list[Stream]:
    async def delayed() -> Stream:
        await asyncio.sleep(random.uniform(0, 1.0) if n > 1 else 0)
        return await one_stream(port, path, key)

    return list(await asyncio.gather(*(delayed() for _ in range(n))))


# Processes


def spawn(cmd: list[str], env: dict[str, str], log: Path, cpu: int) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: pin(cpu),
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def wait_for_model(client: httpx.AsyncClient, key: str) -> None:
    async with asyncio.timeout(30):
        while True:
            r = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            if r.status_code == 200 and [m["id"] for m in r.json()["data"]] == [MODEL]:
                return
            await asyncio.sleep(0.1)


def steady(streams: list[Stream]) -> list[float]:
    """The latencies of the chunks sent while every stream of the run was streaming (after the
    last one's first chunk, before the first one's last): the per-chunk cost at ``n``
    concurrent streams, without the start-up burst (its cost is in the time to first token)."""
    ran = [s.chunks for s in streams if s.chunks and not s.error]
    if not ran:
        return []
    start = max(c[0][0] for c in ran)
    end = min(c[-1][0] for c in ran)
    return [latency for c in ran for sent, latency in c if start <= sent <= end]


def summary(runs: list[list[Stream]]) -> dict[str, float | int]:
    streams = [s for run in runs for s in run]
    ttfts = [s.ttft_s for s in streams if s.ttft_s is not None]
    latencies = [latency for run in runs for latency in steady(run)]
    return {
        "streams": len(streams),
        "errors": sum(1 for s in streams if s.error),
        "chunks": len(latencies),
        "ttft_p50_ms": nearest_rank(ttfts, 0.5) * 1000 if ttfts else math.nan,
        "ttft_p99_ms": nearest_rank(ttfts, 0.99) * 1000 if ttfts else math.nan,
        "chunk_p50_ms": nearest_rank(latencies, 0.5) * 1000 if latencies else math.nan,
        "chunk_p99_ms": nearest_rank(latencies, 0.99) * 1000 if latencies else math.nan,
    }


async def measure(args: argparse.Namespace, workdir: Path) -> dict[int, dict[str, dict]]:
    upstream_port = free_port()
    upstream = spawn(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-upstream",
            str(upstream_port),
            "--chunks",
            str(args.chunks),
            "--interval-ms",
            str(args.interval_ms),
        ],
        {},
        workdir / "upstream.log",
        UPSTREAM_CPU,
    )
    relay_port = free_port()
    most = max(args.streams)
    relay_env = {
        "RELAYLINE_WORKER_KEYS": f"{KEY_ID}:{SECRET}",
        "RELAYLINE_MAX_WORKER_CAPACITY": str(most + 16),
        "RELAYLINE_MAX_CONCURRENT_COMPLETIONS": str(most + 16),
    }
    relay, relay_log = spawn_relay(relay_port, workdir, relay_env)
    relay_url = f"http://{HOST}:{relay_port}"
    upstream_url = f"http://{HOST}:{upstream_port}/v1"
    worker = spawn(
        [
            sys.executable,
            "-m",
            "relayline",
            "worker",
            "--relay",
            relay_url,
            "--key-id",
            KEY_ID,
            "--secret",
            SECRET,
            "--capacity",
            str(most + 16),
        ],
        {
            "RELAYLINE_LLM_URL": upstream_url,
            "RELAYLINE_MODEL": MODEL,
            "RELAYLINE_LLM_MAX_INFLIGHT": str(most + 16),
            "RELAYLINE_LLM_PROBE": "false",
            "RELAYLINE_LOG_LEVEL": "WARNING",
            "RELAYLINE_ADMIN_KEY": ADMIN_KEY,
        },
        workdir / "worker.log",
        UPSTREAM_CPU,
    )
    pin(UPSTREAM_CPU)
    cpu: dict[int, list[tuple[float, float]]] = {n: [] for n in args.streams}
    results: dict[int, dict[str, list[list[Stream]]]] = {
        n: {"direct": [], "relay": []} for n in args.streams
    }
    try:
        _, key, _ = provision(relay_url)
        async with httpx.AsyncClient(base_url=relay_url, timeout=10) as client:
            await wait_for_model(client, key)
        direct_path = (upstream_port, "/v1/chat/completions", None)
        relay_path = (relay_port, "/v1/chat/completions", key)
        # Warm both paths (the credential cache, the worker's connection pool).
        await run_streams(4, *direct_path)
        await run_streams(4, *relay_path)
        for round_no in range(args.rounds):
            for n in args.streams:
                direct = await run_streams(n, *direct_path)
                await asyncio.sleep(args.pause_s)
                cpu_before = (cpu_seconds(relay.pid), cpu_seconds(worker.pid))
                began = time.monotonic()
                through = await run_streams(n, *relay_path)
                took = time.monotonic() - began
                cpu[n].append(
                    (
                        (cpu_seconds(relay.pid) - cpu_before[0]) / took,
                        (cpu_seconds(worker.pid) - cpu_before[1]) / took,
                    )
                )
                await asyncio.sleep(args.pause_s)
                results[n]["direct"].append(direct)
                results[n]["relay"].append(through)
                print(
                    f"round {round_no + 1} n={n}: direct {summary([direct])}, "
                    f"relay {summary([through])}, relay CPU {cpu[n][-1][0]:.0%}, "
                    f"worker CPU {cpu[n][-1][1]:.0%}",
                    file=sys.stderr,
                )
    finally:
        for proc in (worker, relay, upstream):
            stop(proc)
    _ = relay_log
    figures: dict[int, dict[str, dict]] = {}
    for n, found in results.items():
        figures[n] = {path: summary(runs) for path, runs in found.items()}
        figures[n]["relay"]["relay_cpu"] = max(c[0] for c in cpu[n])
        figures[n]["relay"]["worker_cpu"] = max(c[1] for c in cpu[n])
    return figures


def report(args: argparse.Namespace, figures: dict[int, dict[str, dict]]) -> str:
    lines = [
        f"Streaming completions, {args.chunks} chunks {args.interval_ms} ms apart per stream, "
        f"{args.rounds} round(s); {machine()}; "
        + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        "| streams | path | errors | chunks | TTFT p50 | TTFT p99 | chunk p50 | chunk p99 "
        "| relay CPU | worker CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, paths in figures.items():
        for path in ("direct", "relay"):
            f = paths[path]
            busy = f"{f['relay_cpu']:.0%} | {f['worker_cpu']:.0%}" if path == "relay" else " | "
            lines.append(
                f"| {n} | {path} | {f['errors']} | {f['chunks']} | {f['ttft_p50_ms']:.1f} ms "
                f"| {f['ttft_p99_ms']:.1f} ms | {f['chunk_p50_ms']:.2f} ms "
                f"| {f['chunk_p99_ms']:.2f} ms | {busy} |"
            )
        d, r = paths["direct"], paths["relay"]
        lines.append(
            f"| {n} | **added** | | | {r['ttft_p50_ms'] - d['ttft_p50_ms']:+.1f} ms "
            f"| {r['ttft_p99_ms'] - d['ttft_p99_ms']:+.1f} ms "
            f"| {r['chunk_p50_ms'] - d['chunk_p50_ms']:+.2f} ms "
            f"| **{r['chunk_p99_ms'] - d['chunk_p99_ms']:+.2f} ms** | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--interval-ms", type=int, default=50)
    parser.add_argument("--pause-s", type=float, default=1.0)
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        asyncio.run(serve_upstream(args.serve_upstream, args.chunks, args.interval_ms / 1000))
        return
    if min(args.streams) < 1 or max(args.streams) > 1000 or not 1 <= args.rounds <= 20:
        parser.error("streams between 1 and 1000, rounds between 1 and 20")
    with tempfile.TemporaryDirectory(prefix="relayline-bench-completions-") as tmp:
        figures = asyncio.run(measure(args, Path(tmp)))
    print(report(args, figures))


if __name__ == "__main__":
    main()
