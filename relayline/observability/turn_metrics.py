"""Prometheus metrics of turns and workers (module-level, on the default registry).

Counters and histograms count what *this* instance did, so summing them across instances is
right. The queue figures (``relayline_turns_queued``, ``relayline_turn_oldest_queued_seconds``)
are shared: every instance sees the same store. Only the instance that currently leads (one
at a time, by a Redis lease; the only instance without Redis) sets them; the others report 0,
so a sum across instances is the true figure, never a multiple of it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds: first tokens arrive in ms to s; whole turns in s to minutes.
_FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TURN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

TURNS_STARTED = Counter(
    "relayline_turns_started_total", "Turn attempts assigned to a worker (retries included)"
)
TURNS_ENDED = Counter(
    "relayline_turns_ended_total",
    "Turns that ended, by outcome (completed, cancelled, failed)",
    ["outcome"],
)
TURNS_FAILED = Counter(
    "relayline_turns_failed_total", "Turns that failed, by failure category", ["category"]
)
TURN_RETRIES = Counter(
    "relayline_turn_retries_total",
    "Turn attempts queued again after their worker was lost, by reason",
    ["reason"],
)
TURN_RECLAIMS = Counter(
    "relayline_turn_reclaims_total",
    "Running turns taken back from a relay instance that stopped renewing their lease",
)
FIRST_TOKEN = Histogram(
    "relayline_turn_first_token_seconds",
    "Time from an attempt's start to its first answer text, by outcome",
    ["outcome"],
    buckets=_FIRST_TOKEN_BUCKETS,
)
TURN_DURATION = Histogram(
    "relayline_turn_duration_seconds",
    "Time from an attempt's start to the turn's end, by outcome",
    ["outcome"],
    buckets=_TURN_BUCKETS,
)
TURNS_QUEUED = Gauge(
    "relayline_turns_queued", "Turns waiting for a worker (set by the leading instance only)"
)
OLDEST_QUEUED = Gauge(
    "relayline_turn_oldest_queued_seconds",
    "Age of the oldest turn waiting for a worker; 0 when none (leading instance only)",
)
QUEUE_LEADER = Gauge(
    "relayline_queue_figures_leader", "1 on the instance that reports the shared queue figures"
)

WORKERS_CONNECTED = Gauge("relayline_workers_connected", "Workers connected to this instance")
WORKER_CAPACITY = Gauge(
    "relayline_worker_capacity", "Turns the workers connected to this instance announced"
)
WORKER_INFLIGHT = Gauge(
    "relayline_worker_inflight", "Turns running on the workers connected to this instance"
)
WORKERS_BREAKER_OPEN = Gauge(
    "relayline_workers_breaker_open",
    "Workers connected to this instance whose model circuit breaker is open",
)


# The OpenAI-compatible gateway (each completion is also a turn, counted above).
COMPLETIONS = Counter(
    "relayline_completions_total",
    "Completions of the OpenAI-compatible gateway, by how they ended (completed, failed, "
    "disconnected: the client went away and the turn was cancelled) and whether they streamed",
    ["outcome", "stream"],
)
COMPLETIONS_IN_PROGRESS = Gauge(
    "relayline_completions_in_progress", "Completions this instance is answering now"
)
