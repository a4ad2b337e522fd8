"""Terminals: output throughput and keystroke echo latency through relayline (relay + worker
with ``--terminals``) against terminado (Jupyter's PTY WebSocket server) on the same machine,
in the same run.

    .venv/bin/python bench/terminal.py                 # 3 rounds; ~2 min; prints a markdown report
    .venv/bin/python bench/terminal.py --rounds 5 --flood-mib 64 --keys 500
    .venv/bin/python bench/terminal.py --wait-quiet 300   # first wait (at most 300 s) for idle CPUs
    .venv/bin/python bench/terminal.py --lines colour     # the flood's lines carry colours
    .venv/bin/python bench/terminal.py --taps             # then split echo (bench/terminal_taps.py)
    .venv/bin/python bench/terminal.py --relay-env RELAYLINE_WS_QUEUE_MAX_BYTES=67108864

A viewer more than ``RELAYLINE_WS_QUEUE_MAX_BYTES`` (1 MiB by default) behind is closed with
4009 by the relay's slow-client rule, as a page would be (it then redraws from a snapshot): a
flood faster than this driver is scheduled on a busy machine ends the run with that. terminado
buffers for its clients without bound; ``--relay-env`` gives the relay a larger queue instead.

Everything listens on 127.0.0.1. Processes: ``relayline serve`` (SQLite, in-process bus),
``relayline worker --terminals`` with ``flood`` and ``echo`` in its allowlist, and
``bench/terminado_server.py``; the programs are bench/term_programs.py for both. This driver is
the browser: one WebSocket client (the ``websockets`` library) that decodes every frame as
JSON, as a page does.

Throughput: the program waits for one line of input, then prints ``--flood-mib`` MiB of 80-byte text
lines and an end marker. Timed from sending the Enter key to the end marker's arrival; MB/s
counts the program's bytes (MiB/s, 2^20). relayline: ``POST /v1/terminals {program: flood}``,
subscribe to its topic on ``/v1/ws``, wait for the first snapshot, send ``\r`` with
``term.input``. terminado: connect to ``/flood`` (a fresh PTY per connection), wait for
``setup``, send ``["stdin", "\r"]``.

Echo: ``echo`` puts its PTY in raw mode and writes back every byte it reads. One character at a
time: send it, wait until it comes back, note the time, pause 5 ms, next; ``--keys`` of them
after 20 unmeasured ones. p50 and p99 (nearest rank) of the round trips.

Rounds alternate (relayline then terminado, then the other way round) so that a change in the
machine's load hits both. Every wait is bounded (``STEP_TIMEOUT_S``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import terminal_taps as taps
from servers import ADMIN_KEY, HOST, ROOT, machine, spawn_relay, wait_healthy
from term_clients import COLS, ROWS, STEP_TIMEOUT_S, RelayTerminal, TerminadoTerminal, Terminal
from term_programs import END_MARKER, LINES
from turns import cpu_seconds, wait_quiet

BENCH = Path(__file__).resolve().parent
PROGRAMS = BENCH / "term_programs.py"
KEY_ID = "bench-term"
SECRET = "bench-term-" + os.urandom(16).hex()
WARMUP_KEYS = 20
KEY_PAUSE_S = 0.005


def free_port() -> int:
    from relayline.testing import free_port as pick

    return pick()


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Figures:
    pids: dict[str, int]  # the server's processes, by role
    mib_s: list[float] = field(default_factory=list)
    echo_ms: list[list[float]] = field(default_factory=list)  # one list per round
    # CPU seconds each process spent per MiB of flood, one value per round
    cpu_s_per_mib: dict[str, list[float]] = field(default_factory=dict)

    def echo_all(self) -> list[float]:
        return [v for r in self.echo_ms for v in r]


# Processes


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_terminado(
    workdir: Path, flood_mib: float, lines: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = workdir / "terminado.log"
    cmd = [
        sys.executable,
        str(BENCH / "terminado_server.py"),
        "--port",
        str(port),
        "--flood-mib",
        str(flood_mib),
        "--lines",
        lines,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://{HOST}:{port}", proc, log, STEP_TIMEOUT_S)
    except BaseException:
        stop(proc)
        raise
    return proc, port


def program_spec(flood_mib: float, lines: str) -> str:
    """The worker's allowlist (``RELAYLINE_TERMINAL_PROGRAMS``: name=command line; ...)."""
    py, prog = shlex.quote(sys.executable), shlex.quote(str(PROGRAMS))
    return f"flood={py} {prog} flood {flood_mib:g} {lines}; echo={py} {prog} echo"


def start_worker(
    relay_url: str, workdir: Path, flood_mib: float, lines: str, extra_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log = workdir / "worker.log"
    env = {
        **os.environ,
        "RELAYLINE_LOG_LEVEL": "WARNING",
        "RELAYLINE_TERMINAL_PROGRAMS": program_spec(flood_mib, lines),
        "RELAYLINE_WORKSPACE_ROOTS": str(workdir),
        **extra_env,
    }
    cmd = [
        sys.executable,
        "-m",
        "relayline",
        "worker",
        "--terminals",
        "--relay",
        relay_url,
        "--key-id",
        KEY_ID,
        "--secret",
        SECRET,
    ]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def provision(url: str) -> str:
    """A tenant and its key."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, timeout=10) as client:
        tenant = client.post("/v1/admin/tenants", json={"name": "bench"}, headers=admin)
        tenant.raise_for_status()
        made = client.post(f"/v1/admin/tenants/{tenant.json()['id']}/keys", json={}, headers=admin)
        made.raise_for_status()
        key: str = made.json()["key"]
        return key


def offered(url: str, key: str) -> set[str]:
    with httpx.Client(base_url=url, timeout=5) as client:
        r = client.get("/v1/terminals", headers={"Authorization": f"Bearer {key}"})
        return set(programs_of(r.json())) if r.status_code == 200 else set()


def wait_gone(url: str, key: str) -> None:
    """Until no worker offers the bench's programs (a stopped one was noticed)."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while "echo" in offered(url, key):
        if time.monotonic() > deadline:
            raise RuntimeError("the relay still lists a stopped worker's programs")
        time.sleep(0.1)


def wait_programs(url: str, key: str, worker: subprocess.Popen[bytes]) -> None:
    """Until a worker offers the bench's programs."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    auth = {"Authorization": f"Bearer {key}"}
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited ({worker.returncode})")
        with httpx.Client(base_url=url, timeout=5) as client:
            r = client.get("/v1/terminals", headers=auth)
            if r.status_code == 200 and {"flood", "echo"} <= set(programs_of(r.json())):
                return
        time.sleep(0.2)
    raise RuntimeError("no worker offered the bench's terminal programs in time")


def programs_of(body: Any) -> list[str]:
    raw = body.get("programs", []) if isinstance(body, dict) else []
    return [p if isinstance(p, str) else p.get("name", "") for p in raw]


async def flood_run(term: Terminal, mib: float, into: Figures) -> None:
    """MiB/s from the Enter key to the end marker, and the CPU each server process spent."""
    tail = ""
    received = 0
    cpu_before = {role: cpu_seconds(pid) for role, pid in into.pids.items()}
    driver_before = time.process_time()
    started = time.perf_counter()
    await term.send_input("\r")  # a line: the PTY is in canonical mode
    # Bounded, and generous: down to a quarter of a MiB a second still finishes.
    async with asyncio.timeout(STEP_TIMEOUT_S + mib * 4):
        while END_MARKER not in tail:
            text = await term.output()
            received += len(text)
            tail = (tail + text)[-64:]
    elapsed = time.perf_counter() - started
    if received < mib * 1024 * 1024:
        raise RuntimeError(f"only {received} characters arrived for {mib} MiB")
    into.mib_s.append(mib / elapsed)
    for role, pid in into.pids.items():
        used = cpu_seconds(pid) - cpu_before[role]
        into.cpu_s_per_mib.setdefault(role, []).append(used / mib)
    driver = (time.process_time() - driver_before) / mib
    into.cpu_s_per_mib.setdefault("client", []).append(driver)


async def echo_run(term: Terminal, keys: int) -> list[float]:
    """Round trips of single characters, in ms (warm-up ones left out)."""
    found: list[float] = []
    for i in range(WARMUP_KEYS + keys):
        char = chr(ord("a") + i % 26)
        started = time.perf_counter()
        await term.send_input(char)
        seen = ""
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while char not in seen:
                seen += await term.output()
        if i >= WARMUP_KEYS:
            found.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(KEY_PAUSE_S)
    return found


async def relay_round(url: str, key: str, mib: float, keys: int, into: Figures) -> None:
    async with RelayTerminal(url, key, "flood") as term:
        await flood_run(term, mib, into)
    async with RelayTerminal(url, key, "echo") as term:
        into.echo_ms.append(await echo_run(term, keys))


async def terminado_round(port: int, mib: float, keys: int, into: Figures) -> None:
    async with TerminadoTerminal(port, "/flood") as term:
        await flood_run(term, mib, into)
    async with TerminadoTerminal(port, "/echo") as term:
        into.echo_ms.append(await echo_run(term, keys))


# Report


def pyte_s_per_mib(lines: str) -> float:
    """CPU seconds pyte (the worker's screen mirror) takes per MiB of the flood's text, fed
    here in 32 KiB pieces, if every byte of it were fed."""
    import pyte

    line = LINES[lines].decode()
    text = (line.replace("\n", "\r\n")) * (1024 * 1024 // len(line))
    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.Stream(screen)
    started = time.process_time()
    for i in range(0, len(text), 32 * 1024):
        stream.feed(text[i : i + 32 * 1024])
    return (time.process_time() - started) / (len(text) / 2**20)


def revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = [f"python {sys.version.split()[0]}"]
    for name in ("uvicorn", "websockets", "terminado", "tornado", "ptyprocess"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def report(args: argparse.Namespace, relay: Figures, terminado: Figures) -> str:
    def row(name: str, f: Figures) -> str:
        echo = f.echo_all()
        spread = f"{min(f.mib_s):.1f} to {max(f.mib_s):.1f}"
        return (
            f"| {name} | {statistics.median(f.mib_s):.1f} | {spread} "
            f"| {nearest_rank(echo, 0.5):.2f} | {nearest_rank(echo, 0.99):.2f} "
            f"| {max(echo):.2f} |"
        )

    r_tp, t_tp = statistics.median(relay.mib_s), statistics.median(terminado.mib_s)
    r_p99 = nearest_rank(relay.echo_all(), 0.99)
    t_p99 = nearest_rank(terminado.echo_all(), 0.99)
    settings = ", ".join(args.worker_env) or "defaults"
    relay_settings = ", ".join(args.relay_env) or "defaults"
    lines = [
        f"Commit `{revision()}`; {machine()}; {versions()}. Worker settings: {settings}. "
        f"Relay settings: {relay_settings}.",
        f"{args.rounds} rounds; each: {args.flood_mib:g} MiB flood of {args.lines} lines, "
        f"{args.keys} echoed keys "
        f"(after {WARMUP_KEYS} unmeasured).",
        "",
        "| server | throughput MiB/s (median) | range | echo p50 ms | echo p99 ms | max ms |",
        "|---|---|---|---|---|---|",
        row("relayline (relay + worker)", relay),
        row("terminado", terminado),
        "",
        f"Throughput relayline / terminado: {r_tp / t_tp:.2f} (target ≥ 1). "
        f"Echo p99 relayline / terminado: {r_p99 / t_p99:.2f} (target ≤ 2).",
        "",
        "CPU seconds per MiB of flood (median over rounds): "
        + "; ".join(
            f"{name}: "
            + ", ".join(
                f"{role} {statistics.median(values):.3f}"
                for role, values in f.cpu_s_per_mib.items()
            )
            for name, f in (("relayline", relay), ("terminado", terminado))
        )
        + f"; pyte alone, fed every byte of the same text: "
        f"{pyte_s_per_mib(args.lines):.3f}.",
    ]
    return "\n".join(lines)


async def measure(
    args: argparse.Namespace, url: str, key: str, port: int, pids: dict[str, int]
) -> tuple[Figures, Figures]:
    relay = Figures({"relay": pids["relay"], "worker": pids["worker"]})
    terminado = Figures({"terminado": pids["terminado"]})
    runs: list[Callable[[], Awaitable[None]]] = [
        lambda: relay_round(url, key, args.flood_mib, args.keys, relay),
        lambda: terminado_round(port, args.flood_mib, args.keys, terminado),
    ]
    for i in range(args.rounds):
        order = runs if i % 2 == 0 else runs[::-1]
        for run in order:
            await run()
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    return relay, terminado


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood-mib", type=float, default=16)
    parser.add_argument(
        "--lines", choices=("plain", "colour"), default="plain", help="the flood's lines"
    )
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="before measuring, wait up to S seconds for every CPU to be under 20%% busy",
    )
    parser.add_argument(
        "--taps",
        action="store_true",
        help="then split echo latency with a recording tap between worker and relay",
    )
    parser.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the relay only, e.g. RELAYLINE_WS_QUEUE_MAX_BYTES=67108864 "
        "(repeatable)",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the worker only, e.g. RELAYLINE_TERMINAL_FLUSH_MS=0 (repeatable)",
    )
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.worker_env if "=" in item)
    relay_env = dict(item.split("=", 1) for item in args.relay_env if "=" in item)
    if len(extra_env) != len(args.worker_env) or len(relay_env) != len(args.relay_env):
        parser.error("--worker-env and --relay-env take NAME=VALUE")
    if not (1 <= args.rounds <= 50 and 0 < args.flood_mib <= 512 and 1 <= args.keys <= 10_000):
        parser.error("rounds 1..50, flood-mib up to 512, keys 1..10000")
    with tempfile.TemporaryDirectory(prefix="bench-term-") as tmp:
        workdir = Path(tmp)
        relay_port = free_port()
        relay_proc, _ = spawn_relay(
            relay_port, workdir, {"RELAYLINE_WORKER_KEYS": f"{KEY_ID}:{SECRET}", **relay_env}
        )
        procs = [relay_proc]
        try:
            url = f"http://{HOST}:{relay_port}"
            key = provision(url)
            worker = start_worker(url, workdir, args.flood_mib, args.lines, extra_env)
            procs.append(worker)
            wait_programs(url, key, worker)
            terminado, port = start_terminado(workdir, args.flood_mib, args.lines)
            procs.append(terminado)
            if args.wait_quiet > 0:
                load = wait_quiet(args.wait_quiet, lambda m: print(m, file=sys.stderr))
                print(
                    "load before measuring: "
                    + ", ".join(f"CPU {c} {v:.0%}" for c, v in load.items()),
                    file=sys.stderr,
                )
            pids = {"relay": relay_proc.pid, "worker": worker.pid, "terminado": terminado.pid}
            relay, terminado_figures = asyncio.run(measure(args, url, key, port, pids))
            tapped = ""
            if args.taps:
                stop(worker)
                wait_gone(url, key)
                tapped = asyncio.run(
                    tapped_series(
                        args,
                        url,
                        key,
                        relay_port,
                        lambda relay: start_worker(
                            relay, workdir, args.flood_mib, args.lines, extra_env
                        ),
                    )
                )
        finally:
            for proc in reversed(procs):
                stop(proc)
    print(report(args, relay, terminado_figures))
    if tapped:
        print()
        print(tapped)


async def tapped_series(
    args: argparse.Namespace,
    url: str,
    key: str,
    relay_port: int,
    start: Callable[[str], subprocess.Popen[bytes]],
) -> str:
    """Echo again, with a worker that reaches the relay through a recording tap."""
    marks = taps.Marks()
    tap = await taps.start_tap(relay_port, marks)
    worker = None
    try:
        worker = start(taps.tapped_url(tap))
        await asyncio.to_thread(wait_programs, url, key, worker)
        splits: list[tuple[float, float, float]] = []
        for _ in range(args.rounds):
            async with RelayTerminal(url, key, "echo") as term:
                splits += await taps.echo_split(term, args.keys, marks)
        return taps.report(splits)
    finally:
        if worker is not None:
            await asyncio.to_thread(stop, worker)
        await tap.close()


if __name__ == "__main__":
    main()
