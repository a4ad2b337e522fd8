"""What both modes of ``bench/fanout.py`` share: free ports, the background load, one load
generator run (``bench/loadgen.py`` in its own process), figure formatting, and replacing a
marked section of docs/benchmarks.md."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from servers import BENCH, ROOT, Server
from wsclient import busy_share, cpu_busy

DOC = ROOT / "docs" / "benchmarks.md"


def background_load(seconds: float = 2.0) -> dict[int, float]:
    """Share of each CPU kept busy by everything else on the machine, over ``seconds``."""
    before = cpu_busy()
    time.sleep(seconds)
    return busy_share(before, cpu_busy())


def wait_quiet(limit_s: float, log: Callable[[str], None]) -> dict[int, float]:
    """Wait (at most ``limit_s``) until no CPU is more than 20% busy; return the last reading."""
    deadline = time.monotonic() + limit_s
    load = background_load()
    while max(load.values()) > 0.2 and time.monotonic() < deadline:
        log("background load " + ", ".join(f"CPU {c} {v:.0%}" for c, v in load.items()))
        time.sleep(3)
        load = background_load()
    return load


def describe_load(load: dict[int, float]) -> str:
    return ", ".join(f"CPU {cpu} {share:.0%}" for cpu, share in load.items())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def loadgen(server: Server, scenario: str, timeout: float, **spec: Any) -> dict[str, Any]:
    full = {**server.spec(), "scenario": scenario, "timeout_s": timeout, **spec}
    cmd = [sys.executable, str(BENCH / "loadgen.py"), json.dumps(full)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * 4 + 120)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen {scenario} on {server.name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def median_run(result: dict[str, Any]) -> dict[str, Any]:
    """The run with the median rate, plus what the scenario reported besides its runs."""
    runs = sorted(result["runs"], key=lambda r: r["deliveries_per_s"])
    rest = {k: v for k, v in result.items() if k != "runs"}
    return {**rest, **runs[len(runs) // 2], "all_rates": runs}


def fmt_rate(value: float) -> str:
    return f"{value / 1000:,.0f}k" if value >= 10_000 else f"{value:,.0f}"


def cpu(r: dict[str, Any], who: str) -> str:
    """Process share / whole-core share, e.g. ``62% / 100%``."""
    core = r["server_core_busy"] if who == "server" else r["loadgen_core_busy"]
    return f"{r[who + '_cpu']:.0%} / {core:.0%}"


def write_doc(section: str, begin: str, end: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the
    one between those markers in docs/benchmarks.md; at the end if there is none yet."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin not in text or end not in text:
        text = text.rstrip() + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(head + section + tail)
