"""Fan-out benchmark: relayline against Node socket.io and python-socketio, in one run.

    .venv/bin/python bench/fanout.py            # full run (4-5 min); rewrites the results
                                                # section of docs/benchmarks.md
    .venv/bin/python bench/fanout.py --quick    # small counts, < 60 s; prints only
    .venv/bin/python bench/fanout.py --instances           # several relay instances (3-10 min);
                                                           # rewrites only its own section
    .venv/bin/python bench/fanout.py --instances --quick   # small counts, < 60 s; prints only
    .venv/bin/python bench/fanout.py --instances 2,3       # other instance counts

Each server runs as its own process pinned to CPU 0 (127.0.0.1 only); the load generator
(``bench/loadgen.py``) runs in another, pinned to CPU 1, and reports its own CPU share and the
server's for every measured window, so a figure limited by the generator shows as such.

Scenarios, per server (the same clients, messages and payloads for all of them):

- S1: 1,000 subscribers of one topic, a burst of 200 events of ~100 bytes;
- S2: 100 subscribers, a burst of 2,000 events;
- idle: 5,000 authenticated, subscribed sockets; server RSS after minus before, per socket;
- slow (relayline): 1,000 subscribers under a paced load, first all healthy, then with 10%
  that stop reading: healthy clients' p99 in both, 4009 closes, server RSS.

Bursts go through the server's publish endpoint (≤ 1,000 events per call), one call at a time.

``--instances [N,...]`` (default 3) measures S1 and S2 on relayline alone instead: 1 instance on
the embedded defaults (in-process bus, SQLite), 1 instance on Redis (bus) + PostgreSQL (store),
then N instances on Redis + PostgreSQL sharing one database and one Redis key prefix, with the
subscribers spread over them and every event published through the first. All relay processes
share CPU 0. It needs PostgreSQL (``--pg-admin-url``: a database to connect to for CREATE and
DROP DATABASE of a fresh ``relayline_bench_<random>``) and Redis (``--redis-url``; its keys go
under a fresh prefix, deleted at the end). See ``bench/instances.py``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import instances
from runner import (
    cpu,
    describe_load,
    fmt_rate,
    free_port,
    loadgen,
    median_run,
    wait_quiet,
    write_doc,
)
from servers import machine, start_node, start_pyio, start_relay, versions

BEGIN, END = "<!-- fanout:results:begin -->", "<!-- fanout:results:end -->"

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "s1": (1000, 200),
        "s2": (100, 2000),
        "idle": 5000,
        "slow": {"clients": 1000, "rate": 100.0, "seconds": 10.0, "repeats": 2},
        "repeats": 3,
    },
    "quick": {
        "s1": (200, 50),
        "s2": (20, 500),
        "idle": 500,
        "slow": {"clients": 200, "rate": 100.0, "seconds": 6.0, "repeats": 1},
        "repeats": 1,
    },
}
# What makes slow clients visible within seconds instead of minutes (see docs/benchmarks.md).
SLOW_RELAY_ENV = {
    "RELAYLINE_WS_SEND_BUFFER": "16384",
    "RELAYLINE_WS_WRITE_HIGH_WATER": "16384",
    "RELAYLINE_WS_QUEUE_MAX_BYTES": "32768",
}
NAMES = {"relayline": "relayline", "node": "Node socket.io", "pyio": "python-socketio"}


def measure(kind: str, profile: dict[str, Any], workdir: Path, log: Callable[[str], None]) -> Any:
    starters = {"relayline": start_relay, "node": start_node, "pyio": start_pyio}
    out: dict[str, Any] = {}
    server = starters[kind](free_port(), workdir)
    try:
        log(f"{kind}: idle ({profile['idle']} sockets)")
        out["idle"] = loadgen(server, "idle", 120, clients=profile["idle"])
        for name in ("s1", "s2"):
            clients, messages = profile[name]
            log(f"{kind}: {name} ({clients} x {messages})")
            timeout = 30 + clients * messages / 5000
            result = loadgen(
                server,
                "burst",
                timeout,
                clients=clients,
                messages=messages,
                chunk=1000,
                repeats=profile["repeats"],
            )
            out[name] = median_run(result)
    finally:
        server.stop()
    if kind == "relayline":
        slow = profile["slow"]
        server = start_relay(free_port(), workdir, SLOW_RELAY_ENV)
        try:
            log(f"relayline: slow clients ({slow['clients']}, 10% stalled)")
            out["slow"] = loadgen(
                server,
                "slow",
                60 + slow["seconds"] * 2,
                clients=slow["clients"],
                messages=int(slow["rate"] * slow["seconds"]),
                rate=slow["rate"],
                slow_fraction=0.1,
                repeats=slow["repeats"],
            )
        finally:
            server.stop()
    return out


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def table(results: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    kinds = [k for k in ("relayline", "node", "pyio") if k in results]
    head = "| figure | " + " | ".join(NAMES[k] for k in kinds) + " | relayline ÷ Node | target |"
    lines = [head, "|" + "---|" * (len(kinds) + 3)]

    def row(label: str, cells: list[str], rel: str, target: str) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {rel} | {target} |")

    for name, target in (("s1", "≥ 1.5x"), ("s2", "≥ 1.5x")):
        clients, messages = profile[name]
        rates = {k: results[k][name]["deliveries_per_s"] for k in kinds}
        rel = ratio(rates["relayline"], rates["node"]) if "node" in rates else "-"
        label = f"{name.upper()} deliveries/s ({clients:,} x {messages:,})"
        row(label, [fmt_rate(rates[k]) for k in kinds], rel, target)
        lat = [
            f"{results[k][name]['p50_ms']:.1f} / {results[k][name]['p99_ms']:.1f}" for k in kinds
        ]
        row(f"{name.upper()} publish→receive p50 / p99 (ms)", lat, "", "")
    idle = {k: results[k]["idle"]["kb_per_socket"] for k in kinds}
    rel = ratio(idle["relayline"], idle["node"]) if "node" in idle else "-"
    row(
        f"idle RSS per socket (KB, {profile['idle']:,} sockets)",
        [f"{idle[k]:.1f}" for k in kinds],
        rel,
        "≤ 10 KB",
    )
    if "slow" in results.get("relayline", {}):
        slow = results["relayline"]["slow"]
        base = median(r["p99_ms"] for r in slow["all_healthy"])
        stalled = median(r["p99_ms"] for r in slow["with_slow"])
        cells = [f"{stalled:.1f} vs {base:.1f} ms = {stalled / base:.2f}x"] + ["-"] * (
            len(kinds) - 1
        )
        row("healthy p99, 10% stalled vs all healthy", cells, "", "≤ 1.5x")
    return lines


def details(results: dict[str, Any]) -> list[str]:
    lines = [
        "| server | scenario | deliveries/s (each run) | all delivered | gaps / dups "
        "| server CPU: process / core 0 | generator CPU: process / core 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, per in results.items():
        for name in ("s1", "s2"):
            r = per[name]
            each = ", ".join(fmt_rate(x["deliveries_per_s"]) for x in r["all_rates"])
            lines.append(
                f"| {NAMES[kind]} | {name.upper()} | {each} | {r['complete']} "
                f"| {r['gaps']} / {r['dups']} | {cpu(r, 'server')} | {cpu(r, 'loadgen')} |"
            )
    return lines


def slow_details(slow: dict[str, Any]) -> list[str]:
    lines = [
        "| phase | healthy deliveries/s | healthy p50 / p99 (ms) | gaps / dups "
        "| relay RSS start → peak → end (MB) | 4009 closes | stalled clients saw "
        "| server CPU: process / core 0 | generator CPU: process / core 1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [
        (phase, run)
        for pair in zip(slow["all_healthy"], slow["with_slow"], strict=True)
        for phase, run in zip(("all healthy", "10% stalled"), pair, strict=True)
    ]
    for phase, r in runs:
        mb = [r[k] / 1024 for k in ("rss_start_kb", "rss_peak_kb", "rss_end_kb")]
        codes = r.get("slow_close_codes")
        seen = ", ".join(f"{n}x {c}" for c, n in sorted(codes.items())) if codes else "-"
        closes = f"{r['relay_4009_closes']:.0f}" if "relay_4009_closes" in r else "-"
        lines.append(
            f"| {phase} | {fmt_rate(r['deliveries_per_s'])} "
            f"| {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {r['gaps']} / {r['dups']} "
            f"| {mb[0]:.0f} → {mb[1]:.0f} → {mb[2]:.0f} | {closes} | {seen} "
            f"| {cpu(r, 'server')} | {cpu(r, 'loadgen')} |"
        )
    return lines


def report(
    results: dict[str, Any],
    profile: dict[str, Any],
    command: str,
    took: float,
    load: dict[int, float],
) -> str:
    found = versions()
    busy = describe_load(load)
    parts = [
        BEGIN,
        f"Command: `{command}` (took {took:.0f} s, {time.strftime('%Y-%m-%d')}).",
        "",
        f"Machine: {machine()}. "
        + ", ".join(f"{k} {v}" for k, v in found.items())
        + ". Server on CPU 0, load generator on CPU 1. "
        + f"Background load just before the run (other processes): {busy}.",
        "",
        *table(results, profile),
        "",
        "Per run (the table shows the median run of each burst scenario):",
        "",
        *details(results),
    ]
    if "slow" in results.get("relayline", {}):
        parts += ["", "Slow clients (relayline):", "", *slow_details(results["relayline"]["slow"])]
    idle = ", ".join(
        f"{NAMES[k]} {r['idle']['rss_before_kb'] / 1024:.0f} → "
        f"{r['idle']['rss_after_kb'] / 1024:.0f} MB"
        for k, r in results.items()
    )
    parts += ["", f"Idle RSS before → after: {idle}.", END]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute")
    parser.add_argument(
        "--servers", default="relayline,node,pyio", help="comma-separated: relayline,node,pyio"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md (full run)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPUs idle",
    )
    parser.add_argument(
        "--instances",
        nargs="?",
        const=[3],
        type=instances.parse_counts,
        metavar="N[,N...]",
        help="relayline on several instances (default 3) over Redis + PostgreSQL instead",
    )
    parser.add_argument(
        "--redis-url", default=instances.REDIS_URL, help="--instances: the Redis to use"
    )
    parser.add_argument(
        "--pg-admin-url",
        default=instances.PG_ADMIN_URL,
        help="--instances: PostgreSQL database to connect to for CREATE/DROP DATABASE",
    )
    args = parser.parse_args()
    profile = PROFILES["quick" if args.quick else "full"]
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    if args.instances:
        instances.run(args, started, log)
        return
    load = wait_quiet(args.wait_quiet, log)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="relayline-bench-") as tmp:
        for kind in args.servers.split(","):
            results[kind] = measure(kind, profile, Path(tmp), log)
    took = time.monotonic() - started
    command = "python bench/fanout.py " + shlex.join(sys.argv[1:])
    section = report(results, profile, command.strip(), took, load)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.quick and not args.no_doc and "relayline" in results:
        write_doc(section, BEGIN, END)


if __name__ == "__main__":
    main()
