"""The worker's own Prometheus metrics (module-level, on the default registry).

``run_worker`` serves them on ``RELAYLINE_WORKER_METRICS_PORT`` (see :mod:`.daemon`), with
everything else the process registered there, such as the log pipeline's
``relayline_log_records_dropped_total``.

Every label is bounded: ``upstream`` is the model server's ``host:port`` (``local`` for the
built-in model), one per worker; ``outcome`` comes from a fixed set; ``tool`` is the name of a
tool the worker has registered (``unknown`` for any other name a model asks for).

Recorded once per model call, tool run or turn, never per token: see
:class:`relayline.worker.llm.instrumented.InstrumentedLLM` for model calls, the agent loop for
tool runs and the relay connection for turns.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal, get_args
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from relayline.worker.llm.base import FAILURE_CATEGORIES

if TYPE_CHECKING:
    from relayline.worker.llm.breaker import CircuitBreaker

UPSTREAM_LOCAL = "local"
"""The ``upstream`` label of the built-in model."""

UNKNOWN_TOOL = "unknown"
"""The ``tool`` label of a call to a name the worker has not registered."""

TurnOutcome = Literal["done", "failed", "cancelled"]
TURN_OUTCOMES: tuple[TurnOutcome, ...] = get_args(TurnOutcome)

LLM_OUTCOMES: tuple[str, ...] = (
    "ok",
    "cancelled",
    *(category for category in FAILURE_CATEGORIES if category != "tool_error"),
)
"""``ok``, ``cancelled`` (the caller stopped the stream) or the model's failure category."""

# Seconds: first tokens in ms to s (slot waits and retries included); calls in s to minutes.
_FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOOL_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)

LLM_CALLS = Counter(
    "relayline_worker_llm_calls_total",
    "Model calls (one stream each, retries inside it included), by upstream and outcome "
    "(ok, cancelled or the failure category)",
    ["upstream", "outcome"],
)
LLM_FIRST_TOKEN = Histogram(
    "relayline_worker_llm_first_token_seconds",
    "Time from the start of a model call to its first text (slot wait and retries included)",
    ["upstream"],
    buckets=_FIRST_TOKEN_BUCKETS,
)
LLM_CALL_SECONDS = Histogram(
    "relayline_worker_llm_call_seconds",
    "Duration of a model call, from its start to its end, by upstream and outcome",
    ["upstream", "outcome"],
    buckets=_CALL_BUCKETS,
)
LLM_OPEN_STREAMS = Gauge(
    "relayline_worker_llm_open_streams", "Model calls in progress, by upstream", ["upstream"]
)
TOOL_RUNS = Counter(
    "relayline_worker_tool_runs_total",
    "Tool calls the model made, by tool and outcome (ok, error, denied, cancelled)",
    ["tool", "outcome"],
)
TOOL_RUN_SECONDS = Histogram(
    "relayline_worker_tool_run_seconds",
    "Duration of a tool call, from the request to its result (a person's approval included)",
    ["tool"],
    buckets=_TOOL_BUCKETS,
)
TURNS = Counter(
    "relayline_worker_turns_total",
    "Turns this worker ran, by outcome (done, failed, cancelled)",
    ["outcome"],
)
TURNS_INFLIGHT = Gauge("relayline_worker_turns_inflight", "Turns this worker is running now")

for _outcome in TURN_OUTCOMES:
    TURNS.labels(_outcome)  # every outcome's series exists from the start, at 0

_BREAKER_CODES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


class _BreakerStates(Collector):
    """``relayline_worker_breaker_state``: read from each watched breaker at scrape time, so a
    breaker that time alone turned half-open shows as such. Scrapes run on the metrics
    server's thread; a breaker's state is a read of a few attributes."""

    NAME = "relayline_worker_breaker_state"
    HELP = "Circuit breaker of the model upstream: 0 closed, 1 half-open, 2 open"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, list[weakref.ref[CircuitBreaker]]] = {}

    def watch(self, upstream: str, breaker: CircuitBreaker) -> None:
        with self._lock:
            refs = [r for r in self._breakers.get(upstream, []) if r() is not None]
            refs.append(weakref.ref(breaker))
            self._breakers[upstream] = refs

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["upstream"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["upstream"])
        with self._lock:
            watched = {upstream: list(refs) for upstream, refs in self._breakers.items()}
        for upstream, refs in sorted(watched.items()):
            codes = [_BREAKER_CODES[b.state] for b in (r() for r in refs) if b is not None]
            if codes:
                # Several workers of one process on one upstream (a test, a demo): the worst.
                family.add_metric([upstream], max(codes))
        yield family


_BREAKER_STATES = _BreakerStates()
REGISTRY.register(_BREAKER_STATES)


def watch_breaker(upstream: str, breaker: CircuitBreaker) -> None:
    """Report ``breaker``'s state as ``relayline_worker_breaker_state{upstream}`` while it
    lives (it is held weakly)."""
    _BREAKER_STATES.watch(upstream, breaker)


def upstream_label(url: str | None) -> str:
    """The ``upstream`` label of a model server's base URL: its ``host:port``."""
    if not url:
        return UPSTREAM_LOCAL
    parts = urlsplit(url)
    host = parts.hostname or "unknown"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tool_run(tool: str, outcome: str, seconds: float) -> None:
    """Count one tool call (``tool`` already bounded, see :data:`UNKNOWN_TOOL`)."""
    TOOL_RUNS.labels(tool, outcome).inc()
    TOOL_RUN_SECONDS.labels(tool).observe(seconds)


class TurnCount:
    """One turn on the gauges: in flight from creation until :meth:`end`, which counts its
    outcome; only the first ``end`` counts."""

    __slots__ = ("outcome",)

    def __init__(self) -> None:
        self.outcome: TurnOutcome | None = None
        TURNS_INFLIGHT.inc()

    def end(self, outcome: TurnOutcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            TURNS_INFLIGHT.dec()
            TURNS.labels(outcome).inc()
