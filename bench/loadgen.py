"""The load generator: many WebSocket subscribers plus one HTTP publisher, in one process.

Run by ``bench/fanout.py`` (one invocation per server and scenario) with a JSON spec as its only
argument; prints one JSON object with the results. It pins itself to a CPU of its own and reads
its CPU time (getrusage) and the server's (/proc) around each measured window, so a report can
show which side was saturated. The clients themselves are in ``bench/subscribers.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

from subscribers import Publisher, Spec, Subscriber, TopicStream, close_all, connect_all
from wsclient import HttpClient, busy_share, cpu_busy, cpu_seconds, jsonable, rss_kb


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index] / 1000.0  # µs -> ms


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def servers_cpu(spec: Spec) -> float:
    """CPU seconds used so far by every server process of the spec."""
    return sum(cpu_seconds(pid) for pid in spec.pids)


def redis_cpu(spec: Spec) -> float:
    return cpu_seconds(spec.redis_pid) if spec.redis_pid else 0.0


async def deliver(
    clients: list[Subscriber],
    messages: int,
    send: Callable[[], Awaitable[None]],
    timeout: float,
    spec: Spec,
    base: float,
) -> dict[str, Any]:
    """Run ``send`` (which publishes ``messages`` events) and wait until every client in
    ``clients`` has them; returns the window's rates and CPU shares."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    waiting = len(clients)

    def reached() -> None:
        nonlocal waiting
        waiting -= 1
        if waiting == 0 and not finished.done():
            finished.set_result(None)

    for client in clients:
        client.target = client.count + messages
        client.on_target = reached
    before = sum(c.count for c in clients)
    t0, cpu0, srv0, red0 = time.monotonic(), own_cpu(), servers_cpu(spec), redis_cpu(spec)
    cores0 = cpu_busy()
    start_us = int((t0 - base) * 1_000_000)
    await send()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(finished), timeout)
    t1, cpu1, srv1, red1 = time.monotonic(), own_cpu(), servers_cpu(spec), redis_cpu(spec)
    cores = busy_share(cores0, cpu_busy())
    received = sum(c.count for c in clients) - before
    last = max((c.reached_at for c in clients if c.count >= c.target), default=0)
    complete = finished.done()
    window = ((last - start_us) / 1e6) if complete and last else (t1 - t0)
    wall = t1 - t0
    for client in clients:
        client.on_target = None
    return {
        "deliveries": received,
        "expected": messages * len(clients),
        "complete": complete,
        "seconds": window,
        "deliveries_per_s": received / window if window > 0 else 0.0,
        "loadgen_cpu": (cpu1 - cpu0) / wall,
        "server_cpu": (srv1 - srv0) / wall,
        "redis_cpu": (red1 - red0) / wall,
        "server_core_busy": cores.get(0, 0.0),
        "loadgen_core_busy": cores.get(max(cores), 0.0) if cores else 0.0,
    }


def unaccounted(run: dict[str, Any]) -> float:
    """Busy time of the two cores in a window that is neither the servers', the generator's
    nor Redis's, in cores: the kernel's loopback work (a few %) and other processes."""
    busy = run["server_core_busy"] + run["loadgen_core_busy"]
    return float(busy - run["server_cpu"] - run["loadgen_cpu"] - run["redis_cpu"])


async def enough_quiet(spec: Spec, runs: list[dict[str, Any]]) -> bool:
    """Whether ``spec.quiet_runs`` runs were quiet (see :func:`unaccounted`); after a run that
    was not, first give the neighbour a second to finish."""
    if sum(r["unaccounted"] <= spec.quiet_limit for r in runs) >= spec.quiet_runs:
        return True
    if runs[-1]["unaccounted"] > spec.quiet_limit:
        await asyncio.sleep(1.0)
    return False


def latency_summary(lat: array[int]) -> dict[str, float]:
    ordered = sorted(lat)
    return {"p50_ms": percentile(ordered, 0.50), "p99_ms": percentile(ordered, 0.99)}


def order_summary(clients: list[Subscriber]) -> dict[str, int]:
    return {"gaps": sum(c.gaps for c in clients), "dups": sum(c.dups for c in clients)}


def per_port(clients: list[Subscriber]) -> dict[str, int]:
    """How many clients each server port has."""
    counts: dict[str, int] = {}
    for client in clients:
        counts[str(client.port)] = counts.get(str(client.port), 0) + 1
    return counts


async def scenario_burst(spec: Spec, http: HttpClient, base: float) -> dict[str, Any]:
    lat: array[int] = array("q")
    clients = await connect_all(spec, spec.clients, base, lambda _: lat, TopicStream())
    pub = Publisher(spec, http, base)

    async def send_all() -> None:
        left = spec.messages
        while left > 0:
            count = min(spec.chunk, left)
            await pub.publish(count)
            left -= count

    runs = []
    try:
        # Warm-up: lets every server reach steady state (JIT, caches) before the window.
        warm = max(1, min(20, spec.messages // 10))
        await deliver(clients, warm, lambda: pub.publish(warm), spec.timeout_s, spec, base)
        for _ in range(spec.repeats):
            del lat[:]
            run = await deliver(clients, spec.messages, send_all, spec.timeout_s, spec, base)
            run.update(latency_summary(lat), unaccounted=unaccounted(run))
            runs.append(run)
            if spec.quiet_runs and await enough_quiet(spec, runs):
                break
        return {"runs": runs, **order_summary(clients), "clients_per_port": per_port(clients)}
    finally:
        await close_all(clients)


async def scenario_idle(spec: Spec, http: HttpClient, base: float) -> dict[str, Any]:
    warm = await connect_all(spec, min(50, spec.clients), base, lambda _: None, TopicStream())
    await close_all(warm)
    await asyncio.sleep(1.0)
    before = rss_kb(spec.server_pid)
    started = time.monotonic()
    clients = await connect_all(spec, spec.clients, base, lambda _: None, TopicStream())
    connect_s = time.monotonic() - started
    try:
        await asyncio.sleep(2.0)
        after = rss_kb(spec.server_pid)
        return {
            "sockets": len(clients),
            "rss_before_kb": before,
            "rss_after_kb": after,
            "kb_per_socket": (after - before) / len(clients),
            "connect_per_s": len(clients) / connect_s,
        }
    finally:
        await close_all(clients)


async def read_metric(spec: Spec, http: HttpClient, name: str) -> float:
    status, body = await http.request(
        "GET", "/metrics", headers={"Authorization": f"Bearer {spec.metrics_token}"}
    )
    if status != 200:
        return float("nan")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def paced_phase(spec: Spec, http: HttpClient, base: float, slow_count: int) -> dict[str, Any]:
    """One paced run: ``slow_count`` clients stop reading right after subscribing."""
    lat: array[int] = array("q")
    loop = asyncio.get_running_loop()
    stream = TopicStream()
    slow = await connect_all(
        spec, slow_count, base, lambda _: None, stream, rcvbuf=spec.slow_rcvbuf
    )
    healthy = await connect_all(spec, spec.clients - slow_count, base, lambda _: lat, stream)
    for client in slow:
        assert client.transport is not None
        client.transport.pause_reading()
    pub = Publisher(spec, http, base)
    chunk = max(1, min(spec.chunk, int(spec.rate / 20) or 1))
    period = chunk / spec.rate
    rss: list[int] = [rss_kb(spec.server_pid)]
    closes_before = await read_metric(spec, http, 'relayline_ws_close_codes_total{code="4009"}')

    async def sample_rss() -> None:
        while True:
            await asyncio.sleep(0.1)
            rss.append(rss_kb(spec.server_pid))

    async def send_paced() -> None:
        start = loop.time()
        for i in range(spec.messages // chunk):
            delay = start + i * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await pub.publish(chunk)

    sampler = loop.create_task(sample_rss())
    try:
        messages = (spec.messages // chunk) * chunk
        result = await deliver(healthy, messages, send_paced, spec.timeout_s, spec, base)
        await asyncio.sleep(0.5)
    finally:
        sampler.cancel()
    result.update(latency_summary(lat))
    result.update(order_summary(healthy))
    result.update(rss_start_kb=rss[0], rss_peak_kb=max(rss), rss_end_kb=rss_kb(spec.server_pid))
    if slow:
        closes = await read_metric(spec, http, 'relayline_ws_close_codes_total{code="4009"}')
        result["relay_4009_closes"] = closes - closes_before
        for client in slow:
            assert client.transport is not None
            client.transport.resume_reading()
        await asyncio.wait([c.done for c in slow], timeout=5)
        codes: dict[str, int] = {}
        for client in slow:
            key = str(client.done.result()) if client.done.done() else "open"
            codes[key] = codes.get(key, 0) + 1
        result["slow_clients"] = slow_count
        result["slow_close_codes"] = codes
    await close_all(slow + healthy)
    return result


async def scenario_slow(spec: Spec, http: HttpClient, base: float) -> dict[str, Any]:
    """All healthy, then 10% stalled, twice over (A B A B): a neighbour's CPU burst then
    lands on either kind of phase, not only on one."""
    phases: dict[str, list[dict[str, Any]]] = {"all_healthy": [], "with_slow": []}
    for _ in range(spec.repeats):
        phases["all_healthy"].append(await paced_phase(spec, http, base, 0))
        await asyncio.sleep(0.5)
        stalled = int(spec.clients * spec.slow_fraction)
        phases["with_slow"].append(await paced_phase(spec, http, base, stalled))
        await asyncio.sleep(0.5)
    return phases


SCENARIOS = {"burst": scenario_burst, "idle": scenario_idle, "slow": scenario_slow}


async def main(spec: Spec) -> dict[str, Any]:
    base = time.monotonic()
    http = await HttpClient.open(spec.host, spec.port)
    try:
        result = await SCENARIOS[spec.scenario](spec, http, base)
    finally:
        http.close()
    return result


def prepare_process() -> None:
    """Own CPU (the last one; the server gets CPU 0) and enough file descriptors."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    import uvloop

    prepare_process()
    spec = Spec(**json.loads(sys.argv[1]))
    out = uvloop.run(main(spec))
    print(json.dumps(jsonable(out)))
