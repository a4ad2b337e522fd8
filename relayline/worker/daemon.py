"""Assemble a worker from its settings: model client, tools, agent runner, relay link."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import structlog

from relayline.worker.agent import AgentRunner
from relayline.worker.connection import RelayConnection
from relayline.worker.llm.base import LLMClient
from relayline.worker.llm.breaker import CircuitBreaker
from relayline.worker.llm.local import LocalModel
from relayline.worker.llm.openai_compat import OpenAICompatClient, RetryPolicy, Timeouts
from relayline.worker.settings import WorkerSettings
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


def build_connection(settings: WorkerSettings) -> tuple[RelayConnection, LLMClient]:
    llm, breaker = build_llm(settings)
    roots = settings.workspace_roots or [Path.cwd()]
    runner = AgentRunner(
        llm, builtin_registry(roots), model=settings.model, max_tool_rounds=settings.max_tool_rounds
    )
    return RelayConnection(
        settings, runner, (lambda: breaker.state) if breaker else (lambda: "closed")
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


async def run_worker(settings: WorkerSettings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop``), then finish or hand back turns and exit."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    connection, llm = build_connection(settings)
    try:
        await probe_upstream(settings, llm)
        await connection.run(stop)
    finally:
        await llm.aclose()
        log.info("worker_stopped")
