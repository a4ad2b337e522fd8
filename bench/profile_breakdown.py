"""Where the relay's CPU goes during ``bench/turns.py``: a py-spy profile summarised per turn.

    .venv/bin/python bench/turns.py --no-doc --profile /tmp/relay.folded
    .venv/bin/python bench/profile_breakdown.py /tmp/relay.folded --turns 2000 --seconds 21.1 \
        --cpu 0.84

The profile holds folded stacks of the thread holding the GIL (``py-spy record --gil --nonblocking
--format raw``). Each sample is put in one *phase* (what the relay was doing it for: the HTTP post,
the claim, a worker's frames, the clients' WebSockets...) by the relayline frames on its stack, and
in one *kind* (the store, JSON, logging, metrics, the web framework, asyncio, relayline's own code)
by its innermost frame that names one. With ``--turns``, ``--seconds`` (the measured run) and
``--cpu`` (the relay's CPU share then), the shares become milliseconds of relay CPU per turn.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

FRAME = re.compile(r"(?P<fn>.+?) \((?P<path>[^:()]+)(?::\d+)?\)$")

# The first rule that matches any frame of the sample wins, so the specific phases come first.
PHASES: list[tuple[str, str]] = [
    ("HTTP post: store the message, queue the turn", r"api/routes/chats\.py post_message"),
    ("claim and assign", r"turns/claims\.py"),
    ("lease renewal and sweep", r"turns/leases\.py"),
    ("worker frames: turn.done (store the answer, publish)", r"dispatcher\.py \S*on_done"),
    ("worker frames: turn.delta (coalesce, publish)", r"dispatcher\.py \S*on_delta|streaming\.py"),
    ("worker socket: reading, other frames", r"turns/worker_gateway\.py"),
    ("client WebSockets: fan-out, ops", r"relayline/hub/"),
    ("bus deliveries", r"relayline/bus/"),
    ("HTTP other routes", r"api/routes/"),
    ("HTTP request: parsing, middleware, auth", r"relayline/(api|http_protocol)"),
    # SQLAlchemy runs each statement in a greenlet whose stack starts at the session: the
    # caller is not in the sample, so these are the statements of every phase above.
    ("store statements (in SQLAlchemy's greenlets, any phase)", r"^sqlalchemy/"),
]
# Innermost match wins.
KINDS: list[tuple[str, str]] = [
    ("store (SQLAlchemy, aiosqlite, sqlite3)", r"sqlalchemy/|aiosqlite/|sqlite3/|asyncpg/"),
    ("logging (structlog)", r"structlog/|/logging/|observability/log"),
    ("metrics (prometheus-client)", r"prometheus_client/|observability/(metrics|turn_metrics)"),
    ("JSON", r"/json/|jsoncodec|orjson"),
    ("web framework (FastAPI, Starlette, pydantic)", r"fastapi/|starlette/|pydantic"),
    ("HTTP parsing (httptools)", r"httptools"),
    ("asyncio, uvloop", r"asyncio/|uvloop"),
    ("ids (ulid)", r"ulid/"),
]


def parse(path: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            match = FRAME.match(part)
            frames.append(f"{match['path']} {match['fn']}" if match else part)
        samples.append((frames, int(count)))
    return samples


def classify(frames: list[str]) -> tuple[str, str]:
    phase = next(
        (name for name, rule in PHASES if any(re.search(rule, f) for f in frames)),
        "other (event loop, threads)",
    )
    if any("aiosqlite/core.py _connection_worker_thread" in f for f in frames[:4]):
        phase = "store thread (aiosqlite's connection thread)"
    kind = "relayline's own code" if any("relayline/" in f for f in frames) else "other"
    for frame in reversed(frames):
        hit = next((name for name, rule in KINDS if re.search(rule, frame)), None)
        if hit is not None:
            kind = hit
            break
        if "relayline/" in frame:
            break
    return phase, kind


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--turns", type=int, help="turns in the measured run")
    parser.add_argument("--seconds", type=float, help="length of the measured run")
    parser.add_argument("--cpu", type=float, help="the relay's CPU share during the run (0..1)")
    args = parser.parse_args()
    samples = parse(args.profile)
    total = sum(n for _, n in samples)
    if not total:
        sys.exit("no samples")
    per_turn_ms = None
    if args.turns and args.seconds and args.cpu:
        per_turn_ms = args.seconds * args.cpu * 1000 / args.turns
    phases: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    both: collections.Counter[tuple[str, str]] = collections.Counter()
    for frames, n in samples:
        phase, kind = classify(frames)
        phases[phase] += n
        kinds[kind] += n
        both[(phase, kind)] += n

    def cell(n: int) -> str:
        share = n / total
        if per_turn_ms is None:
            return f"{100 * share:.1f}%"
        return f"{100 * share:.1f}% ({share * per_turn_ms:.2f} ms)"

    head = "share of the relay's CPU" + (" (ms per turn)" if per_turn_ms else "")
    print(
        f"{total} samples"
        + (f"; {per_turn_ms:.2f} ms of relay CPU per turn" if per_turn_ms else "")
    )
    print(f"\n| phase | {head} | largest kinds inside |\n|---|---|---|")
    for phase, n in phases.most_common():
        inside = sorted(((k, m) for (p, k), m in both.items() if p == phase), key=lambda x: -x[1])
        top = ", ".join(f"{k.split(' (')[0]} {100 * m / n:.0f}%" for k, m in inside[:3])
        print(f"| {phase} | {cell(n)} | {top} |")
    print(f"\n| kind | {head} |\n|---|---|")
    for kind, n in kinds.most_common():
        print(f"| {kind} | {cell(n)} |")


if __name__ == "__main__":
    main()
