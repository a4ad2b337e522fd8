"""Chat reloads: the relay's CPU per ``GET /v1/chats/{id}`` (what a client costs after
``events.missed``), with a session token, as a browser asks.

    .venv/bin/python bench/reload.py                    # 3 rounds of 2,000 GETs, 32 at a time
    .venv/bin/python bench/reload.py --rounds 5 --gets 4000

One ``relayline serve`` (SQLite, in-process bus; pinned to CPU 0, 127.0.0.1 only) with a tenant,
a chat and a session token for it; this driver on the other CPU. Each round reports GETs per
second and the relay's CPU time (user + system, from ``/proc``) divided by the GETs. Prints only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from runner import free_port
from servers import start_relay
from turns import cpu_seconds, pin


async def measure(rounds: int, gets: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory(prefix="relayline-reload-") as tmp:
        server = start_relay(free_port(), Path(tmp))
        try:
            chat_id = server.topic.split(":", 1)[1]
            auth = {"Authorization": f"Bearer {server.token}"}
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
                gate = asyncio.Semaphore(concurrency)

                retried = 0

                async def reload() -> None:
                    nonlocal retried
                    async with gate:
                        try:
                            r = await client.get(f"/v1/chats/{chat_id}", headers=auth)
                        except (httpx.ReadError, httpx.RemoteProtocolError):
                            # A kept-alive connection the relay closed as idle (its deadline
                            # for the next request head) just as it was reused: a GET may be
                            # sent again, as browsers do.
                            retried += 1
                            r = await client.get(f"/v1/chats/{chat_id}", headers=auth)
                    r.raise_for_status()

                await asyncio.gather(*(reload() for _ in range(concurrency)))  # warm-up
                for n in range(rounds):
                    cpu_before, started = cpu_seconds(server.proc.pid), time.perf_counter()
                    await asyncio.gather(*(reload() for _ in range(gets)))
                    took = time.perf_counter() - started
                    cpu = cpu_seconds(server.proc.pid) - cpu_before
                    print(
                        f"round {n + 1}: {gets / took:,.0f} GETs/s, "
                        f"relay CPU {cpu / gets * 1000:.2f} ms per GET; sent again after "
                        f"an idle connection was closed, so far: {retried}",
                        flush=True,
                    )
        finally:
            server.proc.terminate()
            server.proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gets", type=int, default=2000, help="per round")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if not (1 <= args.rounds <= 20 and 1 <= args.gets <= 100_000 and 1 <= args.concurrency <= 500):
        parser.error("rounds 1-20, gets 1-100,000, concurrency 1-500")
    pin(1)
    asyncio.run(measure(args.rounds, args.gets, args.concurrency))


if __name__ == "__main__":
    main()
