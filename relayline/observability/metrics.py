"""Prometheus metrics of the relay (module-level, on the default registry)."""

from __future__ import annotations

import asyncio

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

HTTP_REQUESTS = Counter(
    "relayline_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "relayline_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter(
    "relayline_rate_limited_total", "Requests refused by a rate limit", ["category"]
)


BACKUP_LAST_SUCCESS = Gauge(
    "relayline_backup_last_success_timestamp_seconds",
    "When the newest complete backup in RELAYLINE_BACKUP_DIR finished (Unix time; 0: none)",
)
BACKUP_FAILURES = Counter(
    "relayline_backup_failures_total", "Scheduled backups that failed (see backup_failed lines)"
)
ASYNCIO_TASKS = Gauge(
    "relayline_asyncio_tasks",
    "Tasks alive on the relay's event loop (flat under steady load: a leak grows it)",
)


def _tasks() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # read off the loop's thread: no figure
        return 0.0


ASYNCIO_TASKS.set_function(_tasks)

READY = Gauge(
    "relayline_ready",
    "1 when the last readiness check of this part passed, else 0 (store, bus, limits, shared)",
    ["check"],
)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every registered metric and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
