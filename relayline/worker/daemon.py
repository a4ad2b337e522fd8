"""Assemble a worker from its settings: model client, tools, agent runner, relay link."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import start_http_server

from relayline.worker import metrics
from relayline.worker.agent import AgentRunner
from relayline.worker.connection import RelayConnection
from relayline.worker.llm.base import LLMClient
from relayline.worker.llm.breaker import CircuitBreaker
from relayline.worker.llm.instrumented import InstrumentedLLM
from relayline.worker.llm.local import LocalModel
from relayline.worker.llm.openai_compat import OpenAICompatClient, RetryPolicy, Timeouts
from relayline.worker.malloc import keep_freed_memory
from relayline.worker.settings import WorkerSettings
from relayline.worker.terminals.host import HostSettings, TerminalHost
from relayline.worker.terminals.programs import describe
from relayline.worker.terminals.session import SessionLimits
from relayline.worker.tools.builtins import builtin_registry

log = structlog.get_logger("relayline.worker")


def build_llm(settings: WorkerSettings) -> tuple[LLMClient, CircuitBreaker | None]:
    if not settings.llm_url:
        return LocalModel(delay_s=settings.local_model_delay_s), None
    breaker = CircuitBreaker(
        failure_threshold=settings.breaker_failures, recovery_s=settings.breaker_recovery_s
    )
    client = OpenAICompatClient(
        settings.llm_url,
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
        timeouts=Timeouts(
            connect_s=settings.llm_connect_timeout_s,
            read_s=settings.llm_read_timeout_s,
            total_s=settings.llm_total_timeout_s,
        ),
        retry=RetryPolicy(
            max_attempts=settings.llm_max_attempts, max_total_s=settings.llm_retry_total_s
        ),
        breaker=breaker,
        max_inflight=settings.llm_max_inflight,
    )
    return client, breaker


def build_terminals(settings: WorkerSettings) -> TerminalHost | None:
    """The terminal host, when the worker runs terminals (``--terminals``)."""
    if not settings.terminals:
        return None
    programs = settings.terminal_program_map
    log.info("terminals_enabled", programs=describe(programs))
    return TerminalHost(
        HostSettings(
            programs=programs,
            roots=settings.workspace_roots or [Path.cwd()],
            max_sessions=settings.terminal_max_sessions,
            idle_s=settings.terminal_idle_s,
            max_lifetime_s=settings.terminal_max_lifetime_s,
            detach_grace_s=settings.terminal_detach_grace_s,
            outbox_max_bytes=settings.terminal_outbox_bytes,
            session=SessionLimits(
                flush_s=settings.terminal_flush_ms / 1000,
                flush_chars=settings.terminal_flush_bytes,
                grace_s=settings.terminal_grace_s,
                resize_debounce_s=settings.terminal_resize_debounce_ms / 1000,
            ),
        )
    )


def build_connection(settings: WorkerSettings) -> tuple[RelayConnection, LLMClient]:
    """The relay connection, and the model client to probe and to close once it is done.

    The agent gets that client wrapped, so that every call is counted and timed; its breaker
    is reported at scrape time (see :mod:`.metrics`).
    """
    llm, breaker = build_llm(settings)
    label = metrics.upstream_label(settings.llm_url)
    if breaker is not None:
        metrics.watch_breaker(label, breaker)
    roots = settings.workspace_roots or [Path.cwd()]
    runner = AgentRunner(
        InstrumentedLLM(llm, label),
        builtin_registry(roots),
        model=settings.model,
        max_tool_rounds=settings.max_tool_rounds,
    )
    return RelayConnection(
        settings,
        runner,
        (lambda: breaker.state) if breaker else (lambda: "closed"),
        build_terminals(settings),
    ), llm


async def probe_upstream(settings: WorkerSettings, llm: LLMClient) -> None:
    """Learn the upstream's slots and tokenizer before the first turn (``RELAYLINE_LLM_PROBE``)."""
    if settings.llm_probe and isinstance(llm, OpenAICompatClient):
        info = await llm.probe()
        log.info(
            "upstream_probed",
            server=info.server,
            slots=info.slots,
            max_inflight=llm.max_inflight,
            tokenizer=info.tokenizer.url if info.tokenizer else None,
        )


class MetricsUnavailable(Exception):
    """The worker's ``/metrics`` cannot listen where its settings say, so the worker does not
    start; the reason has been logged as one line (``worker_metrics_unavailable``)."""


@contextlib.asynccontextmanager
async def serve_metrics(settings: WorkerSettings) -> AsyncIterator[str | None]:
    """Serve the default registry's ``/metrics`` on ``worker_metrics_host:worker_metrics_port``
    (on its own thread, off the event loop) while the block runs; yield its URL, or ``None``
    when no port is set. A port that cannot be bound raises :class:`MetricsUnavailable`."""
    port = settings.worker_metrics_port
    if port is None:
        yield None
        return
    host = settings.worker_metrics_host
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        log.error(
            "worker_metrics_unavailable",
            host=host,
            port=port,
            error=exc.strerror or str(exc),
            detail=f"cannot serve /metrics on {host}:{port}; the worker does not start",
        )
        raise MetricsUnavailable(f"cannot serve /metrics on {host}:{port}: {exc}") from None
    url = f"http://{_url_host(host)}:{server.server_port}/metrics"
    log.info("worker_metrics_listening", url=url)
    try:
        yield url
    finally:
        await asyncio.to_thread(_stop_server, server)
        await asyncio.to_thread(thread.join, 5)


def _stop_server(server: WSGIServer) -> None:
    server.shutdown()
    server.server_close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# A full collection is considered once per this many collections of the middle generation
# (CPython's default is 10), as the relay does (relayline.server).
GC_FULL_EVERY = 100


def settle_heap() -> None:
    """Once started: what start-up allocated (modules, the model client, the tool registry)
    leaves the garbage collector's view, and full collections are considered less often
    (:data:`GC_FULL_EVERY`). Every full collection is a pause of every answer the worker streams:
    streaming 1,000 answers for 10 s (``bench/turns.py --concurrent --stagger``), the worker held
    2 or 3 of 60 to 65 ms before this, and none after (its longest collection 12 to 13 ms).

    And memory the worker frees stays with it for its next frames (:mod:`.malloc`)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_FULL_EVERY)
    keep_freed_memory()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to its end on uvloop when it is installed (it comes with the relay's
    ``server`` extra; a worker installed alone runs on asyncio's own loop, the same code).

    A worker streaming many answers spends much of its time on the loop's timers and callbacks
    (a timer for each text it holds back, and its model's reads): streaming 1,000 answers,
    asyncio's loop in Python was about 40% of the worker's samples, its timer heap alone 8%
    (the command is in docs/benchmarks.md, "The worker runs on uvloop")."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def run_worker(settings: WorkerSettings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop``), then finish or hand back turns and exit.

    With ``worker_metrics_port`` set, ``/metrics`` is served for as long as the worker runs;
    a port that cannot be bound stops it at start (:class:`MetricsUnavailable`).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    async with serve_metrics(settings):
        connection, llm = build_connection(settings)
        try:
            await probe_upstream(settings, llm)
            settle_heap()
            await connection.run(stop)  # every terminal has ended when it returns
        finally:
            await llm.aclose()
            log.info("worker_stopped")
