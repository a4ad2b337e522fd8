"""Fan-out over several relay instances: the ``--instances`` mode of ``bench/fanout.py``.

Cases, each on fresh ``relayline serve`` processes, all of them pinned to CPU 0 (the same CPU
budget in every case; the load generator stays on CPU 1):

- 1 instance on the embedded defaults (in-process bus, SQLite): the reference;
- 1 instance on Redis (bus) + PostgreSQL (store): the baseline;
- N instances on Redis + PostgreSQL: subscribers spread round robin over the instances (one
  topic), every event published through instance 1 (``POST /v1/publish``), so it reaches the
  other instances' subscribers through Redis.

Scenarios as S1 and S2 of the server comparison. The cases take turns (A B C, A B C, ...: one
round each, fresh processes every time), so a neighbour's CPU burst on this shared machine can
land on any of them; before each case the run waits (at most ``--wait-quiet`` seconds) for the
CPUs to be idle. Within a case a burst is repeated on the same sockets until 4 runs were quiet
(other work on the two cores within ``QUIET`` of a core; at most 16 runs), and the figures are
the median of the quiet runs of all rounds.

One PostgreSQL database per run (``relayline_bench_<random>``, created, migrated once with
``relayline migrate`` before any instance starts, dropped at the end) and one Redis key prefix
(``rlbench-<random>:``, its keys deleted at the end), shared by the Redis + PostgreSQL cases;
each case makes its own tenant, chat and topic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis import Redis
from runner import (
    cpu,
    fmt_rate,
    free_port,
    loadgen,
    median_run,
    wait_quiet,
    write_doc,
)
from servers import RELAY_ENV, ROOT, Server, machine, spawn_relay, start_relay, versions

BEGIN, END = "<!-- fanout:instances:begin -->", "<!-- fanout:instances:end -->"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
PROFILES: dict[str, dict[str, Any]] = {
    # per round and case: bursts until ``quiet`` of them were quiet, at most ``repeats``
    "full": {"s1": (1000, 200), "s2": (100, 2000), "rounds": 3, "quiet": 4, "repeats": 16},
    "quick": {"s1": (150, 50), "s2": (30, 500), "rounds": 1, "quiet": 1, "repeats": 1},
}
EMBEDDED, SHARED = "in-process bus + SQLite", "Redis + PostgreSQL"
# A run is quiet when the cores' busy time that is neither the relays', the generator's nor
# Redis's stays within this many cores (``unaccounted`` in bench/loadgen.py).
QUIET = 0.3
Log = Callable[[str], None]


@dataclass(frozen=True)
class Case:
    instances: int
    backend: str  # EMBEDDED or SHARED


@dataclass
class Backends:
    """The run's PostgreSQL database and Redis key prefix, and what the report says of them."""

    pg_url: str
    redis_url: str
    prefix: str
    redis_pid: int = 0
    about: str = ""

    def relay_env(self, instances: int) -> dict[str, str]:
        return {
            "RELAYLINE_DATABASE_URL": self.pg_url,
            "RELAYLINE_REDIS_URL": self.redis_url,
            "RELAYLINE_REDIS_PREFIX": self.prefix,
            "RELAYLINE_INSTANCES": str(instances),
            "RELAYLINE_AUTO_MIGRATE": "false",  # migrated once, before any instance starts
        }


def cases(counts: list[int]) -> list[Case]:
    return [Case(1, EMBEDDED)] + [Case(n, SHARED) for n in sorted({1, *counts})]


def parse_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1 or max(counts) > 8:
        raise argparse.ArgumentTypeError("instance counts are between 1 and 8, e.g. 3 or 2,3")
    return counts


# -- PostgreSQL and Redis -------------------------------------------------------------------


async def _pg(admin_url: str, sql: str) -> str:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(sql, timeout=60)
        version: str = await conn.fetchval("SHOW server_version", timeout=10)
        return version
    finally:
        await conn.close(timeout=10)


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + name))


def redis_process(url: str) -> tuple[int, str]:
    """Redis's pid when it runs on this machine (else 0), and a line on where it ran."""
    with Redis.from_url(url, socket_timeout=5) as client:
        info = client.info("server")
    pid = int(info["process_id"])
    about = f"Redis {info['redis_version']}"
    if (
        urlsplit(url).hostname not in ("127.0.0.1", "localhost")
        or not Path(f"/proc/{pid}/stat").exists()
    ):
        return 0, about
    allowed = ", ".join(map(str, sorted(os.sched_getaffinity(pid))))
    return pid, f"{about} (the machine's service, allowed on CPUs {allowed})"


def delete_keys(url: str, prefix: str) -> int:
    """Delete every key that carries ``prefix`` (bus logs, caps, rate-limit counters)."""
    deleted = 0
    with Redis.from_url(url, socket_timeout=10) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"*{prefix.rstrip(':')}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch.clear()
        if batch:
            deleted += client.delete(*batch)
    return deleted


def migrate(env: dict[str, str], workdir: Path) -> None:
    """``relayline migrate`` against the fresh database."""
    cmd = [sys.executable, "-m", "relayline", "migrate"]
    full_env = {**os.environ, **RELAY_ENV, **env}
    done = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)
    (workdir / "migrate.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"relayline migrate failed ({done.returncode}):\n{done.stderr[-3000:]}")


@contextlib.contextmanager
def shared_backends(
    pg_admin_url: str, redis_url: str, workdir: Path, log: Log
) -> Iterator[Backends]:
    """A fresh, migrated PostgreSQL database and a unique Redis prefix; both gone afterwards
    (also when the run fails)."""
    token = secrets.token_hex(5)
    name = f"relayline_bench_{token}"
    backends = Backends(database_url(pg_admin_url, name), redis_url, f"rlbench-{token}:")
    backends.redis_pid, redis_about = redis_process(redis_url)
    pg_version = asyncio.run(_pg(pg_admin_url, f'CREATE DATABASE "{name}"'))
    log(f"created database {name}; Redis prefix {backends.prefix}")
    backends.about = f"PostgreSQL {pg_version} (the machine's service); {redis_about}"
    try:
        migrate(backends.relay_env(1), workdir)
        yield backends
    finally:
        asyncio.run(_pg(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        log(f"dropped database {name}; deleted {delete_keys(redis_url, backends.prefix)} keys")


# -- relay instances and measurements -------------------------------------------------------


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        server.stop()


def start_cluster(count: int, workdir: Path, env: dict[str, str]) -> list[Server]:
    """``count`` relay processes on one store and bus; tenant, chat and token made through the
    first, which is valid on all of them (shared database and secret)."""
    servers = [start_relay(free_port(), workdir, env)]
    try:
        for _ in range(count - 1):
            port = free_port()
            proc, log_path = spawn_relay(port, workdir, env)
            servers.append(replace(servers[0], port=port, proc=proc, log=log_path))
    except BaseException:
        stop_all(servers)
        raise
    return servers


def log_tails(workdir: Path, since: float, log: Log) -> None:
    """The end of every relay log written since ``since`` (a failed case's)."""
    for path in sorted(workdir.glob("relay-*.log")):
        if path.stat().st_mtime >= since:
            log(f"{path.name}, last lines:\n{path.read_text(errors='replace')[-2000:]}")


def measure_case(
    case: Case, profile: dict[str, Any], workdir: Path, backends: Backends, log: Log
) -> dict[str, Any]:
    env = backends.relay_env(case.instances) if case.backend == SHARED else {}
    since = time.time() - 1
    try:
        servers = start_cluster(case.instances, workdir, env)
    except BaseException:
        log_tails(workdir, since, log)
        raise
    watch = {
        "ports": [s.port for s in servers],
        "server_pids": [s.proc.pid for s in servers],
        "redis_pid": backends.redis_pid,
    }
    out: dict[str, Any] = {}
    try:
        for name in ("s1", "s2"):
            clients, messages = profile[name]
            log(f"{case.instances} x relay, {case.backend}: {name} ({clients} x {messages})")
            timeout = 30 + clients * messages / 5000
            result = loadgen(
                servers[0],
                "burst",
                timeout,
                clients=clients,
                messages=messages,
                chunk=1000,
                repeats=profile["repeats"],
                quiet_runs=profile["quiet"],
                quiet_limit=QUIET,
                **watch,
            )
            out[name] = result
    except BaseException:
        log_tails(workdir, since, log)
        raise
    finally:
        stop_all(servers)
    return out


# -- report ---------------------------------------------------------------------------------


def spread(r: dict[str, Any]) -> str:
    counts = list(r["clients_per_port"].values())
    total = f"{sum(counts):,}"
    return total if len(counts) == 1 else f"{total} ({' / '.join(map(str, counts))})"


def table(results: list[tuple[Case, dict[str, Any]]]) -> list[str]:
    lines = [
        "| scenario | instances | bus + store | subscribers (per instance) | events "
        "| deliveries/s | ÷ 1 instance on Redis + PostgreSQL | p50 (ms) | p99 (ms) "
        "| relays CPU: processes / core 0 | Redis CPU | generator CPU: process / core 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("s1", "s2"):
        base = next(r[name] for c, r in results if c == Case(1, SHARED))["deliveries_per_s"]
        for case, per in results:
            r = per[name]
            events = r["expected"] // sum(r["clients_per_port"].values())
            lines.append(
                f"| {name.upper()} | {case.instances} | {case.backend} | {spread(r)} "
                f"| {events:,} | {fmt_rate(r['deliveries_per_s'])} "
                f"| {r['deliveries_per_s'] / base:.2f}x | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                f"| {cpu(r, 'server')} | {r['redis_cpu']:.0%} | {cpu(r, 'loadgen')} |"
            )
    return lines


def details(results: list[tuple[Case, dict[str, Any]]]) -> list[str]:
    lines = [
        "| scenario | instances | bus + store | runs used (quiet / all) "
        "| deliveries/s: min / median / max | p99 ms: min / median / max "
        "| all delivered (all runs) | gaps / dups |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("s1", "s2"):
        for case, per in results:
            r = per[name]
            used, every = r["all_rates"], r["every_run"]
            rates = [fmt_rate(x["deliveries_per_s"]) for x in used]
            p99s = sorted(x["p99_ms"] for x in used)
            mid = len(used) // 2
            quiet = sum(x["unaccounted"] <= QUIET for x in every)
            lines.append(
                f"| {name.upper()} | {case.instances} | {case.backend} "
                f"| {len(used)} ({quiet} / {len(every)}) "
                f"| {rates[0]} / {rates[mid]} / {rates[-1]} "
                f"| {p99s[0]:.1f} / {p99s[mid]:.1f} / {p99s[-1]:.1f} "
                f"| {all(x['complete'] for x in every)} | {r['gaps']} / {r['dups']} |"
            )
    return lines


def report(
    results: list[tuple[Case, dict[str, Any]]],
    services: str,
    command: str,
    took: float,
    loads: list[dict[int, float]],
) -> str:
    found = versions()
    busy = ", ".join(
        f"CPU {n} {min(x[n] for x in loads):.0%} to {max(x[n] for x in loads):.0%}"
        for n in sorted(loads[0])
    )
    keep = ("python", "uvicorn", "uvloop", "httptools", "websockets", "fastapi")
    return "\n".join(
        [
            BEGIN,
            f"Command: `{command}` (took {took:.0f} s, {time.strftime('%Y-%m-%d')}).",
            "",
            f"Machine: {machine()}. "
            + ", ".join(f"{k} {found[k]}" for k in keep if k in found)
            + f". {services}. All relay processes on CPU 0, load generator on CPU 1. "
            + f"Background load (other processes) just before each of the {len(loads)} cases "
            + f"measured: {busy}.",
            "",
            *table(results),
            "",
            "The table shows the median run by deliveries/s among the quiet runs: those in "
            "which the two cores were busy, beyond the relays, the generator and Redis, for at "
            f"most {QUIET:.1f} of a core (the kernel's loopback work and other processes); all "
            "runs when fewer than 3 were quiet. Spread over the runs used:",
            "",
            *details(results),
            END,
        ]
    )


def merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's results from every round, as one: gaps and dups summed, and the median
    taken over the quiet runs (over all of them when fewer than 3 are quiet)."""
    every = [run for result in rounds for run in result["runs"]]
    quiet = [run for run in every if run["unaccounted"] <= QUIET]
    merged = {
        "runs": quiet if len(quiet) >= 3 else every,
        "every_run": every,
        "gaps": sum(r["gaps"] for r in rounds),
        "dups": sum(r["dups"] for r in rounds),
        "clients_per_port": rounds[0]["clients_per_port"],
        "rates_by_round": [[run["deliveries_per_s"] for run in r["runs"]] for r in rounds],
    }
    return median_run(merged)


def measure_all(
    args: argparse.Namespace, profile: dict[str, Any], log: Log
) -> tuple[list[tuple[Case, dict[str, Any]]], str, list[dict[int, float]]]:
    """Every case, round after round: (case, its merged results), the services, the background
    load measured just before each case (after waiting up to ``--wait-quiet`` for it to
    drop)."""
    todo = cases(args.instances)
    raw: dict[Case, dict[str, list[dict[str, Any]]]] = {c: {"s1": [], "s2": []} for c in todo}
    loads: list[dict[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="relayline-bench-") as tmp:
        workdir = Path(tmp)
        with shared_backends(args.pg_admin_url, args.redis_url, workdir, log) as backends:
            for index in range(profile["rounds"]):
                log(f"round {index + 1} of {profile['rounds']}")
                for case in todo:
                    loads.append(wait_quiet(args.wait_quiet, log))
                    for name, result in measure_case(case, profile, workdir, backends, log).items():
                        raw[case][name].append(result)
            about = backends.about
    merged = [(c, {name: merge(rounds) for name, rounds in raw[c].items()}) for c in todo]
    return merged, about, loads


def run(args: argparse.Namespace, started: float, log: Log) -> None:
    """The ``--instances`` mode, from the parsed command line to the report."""
    profile = PROFILES["quick" if args.quick else "full"]
    results, about, loads = measure_all(args, profile, log)
    command = ("python bench/fanout.py " + shlex.join(sys.argv[1:])).strip()
    section = report(results, about, command, time.monotonic() - started, loads)
    print(section)
    if args.json:
        raw = [{"case": case.__dict__, **per} for case, per in results]
        args.json.write_text(json.dumps(raw, indent=2))
    if not args.quick and not args.no_doc:
        write_doc(section, BEGIN, END)
