"""The worker's own /metrics (RELAYLINE_WORKER_METRICS_PORT): where it listens, what it counts,
and the ``relayline worker`` process serving it.

Metrics are process-global and other tests move them too, so in-process tests compare a
scrape before with one after; the process test starts from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

import relayline
import relayline.observability.log_writer  # what `relayline worker` configures: its counter
from relayline.testing import RelayServer, WsHarness, free_port
from relayline.worker.daemon import (
    GC_FULL_EVERY,
    MetricsUnavailable,
    build_connection,
    probe_upstream,
    run_worker,
    serve_metrics,
)
from relayline.worker.llm.base import ChatMessage, LLMError
from relayline.worker.llm.instrumented import InstrumentedLLM
from relayline.worker.llm.openai_compat import OpenAICompatClient
from relayline.worker.metrics import upstream_label
from relayline.worker.settings import WorkerSettings
from tests.fixtures import (
    KEY_ID,
    SECRET,
    RelayFactory,
    Tenant,
    Tenants,
    Workers,
    admin,
    post,
    until_event,
)
from tests.worker.llm_fake_upstream import FakeUpstream, answer, status, tool_calls

# run_worker settles the heap of the process it runs in: every test gets the settings back.
pytestmark = pytest.mark.usefixtures("restored_gc")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SOURCE_ROOT = str(Path(relayline.__file__).resolve().parents[1])


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@contextlib.asynccontextmanager
async def served_worker(
    workers: Workers, relay: RelayServer, **overrides: Any
) -> AsyncIterator[str]:
    """A worker run as ``relayline worker`` runs it (``run_worker``), with its /metrics on a
    free port; yields that URL."""
    port = free_port()
    settings = workers.settings(relay, worker_metrics_port=port, **overrides)
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with asyncio.timeout(10), httpx.AsyncClient(timeout=2) as http:
            while True:
                assert not task.done(), task
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(url)).status_code == 200:
                        break
                await asyncio.sleep(0.02)
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def refused(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) != 0


def outward_address() -> str | None:
    """This host's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address: str = sock.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def enable_tools(tenant: Tenant, tools: list[str]) -> None:
    r = await tenant.http.put(
        f"/v1/admin/tenants/{tenant.id}/agent", json={"tools": tools}, headers=admin()
    )
    assert r.status_code == 200, r.text


def test_the_upstream_label_is_the_model_servers_host_and_port() -> None:
    assert upstream_label("http://127.0.0.1:8081/v1") == "127.0.0.1:8081"
    assert upstream_label("https://api.example.com/v1") == "api.example.com:443"
    assert upstream_label("http://gpu-box/v1") == "gpu-box:80"
    assert upstream_label("http://[::1]:8000/v1") == "[::1]:8000"
    assert upstream_label(None) == "local"


async def test_metrics_are_served_on_loopback_only_by_default(
    turn_relay: RelayFactory, workers: Workers
) -> None:
    relay = await turn_relay()
    assert WorkerSettings(_env_file=None).worker_metrics_host == "127.0.0.1"
    async with served_worker(workers, relay) as url:
        port = int(url.split(":")[2].split("/")[0])
        samples = await scrape(url)
        # Served from a thread of its own, not the event loop (the no-port test checks for it).
        assert [t for t in threading.enumerate() if "serve_forever" in t.name]
        # Bound to 127.0.0.1 itself, not to every address: another loopback address and the
        # host's own address are refused.
        assert refused("127.0.0.2", port)
        address = outward_address()
        if address is not None:
            assert refused(address, port)
    assert ("relayline_worker_turns_inflight", frozenset()) in samples
    assert ("relayline_worker_turns_total", frozenset({("outcome", "done")})) in samples
    assert (
        "relayline_worker_llm_calls_total",
        frozenset({("upstream", "local"), ("outcome", "ok")}),
    ) in samples
    # The log pipeline's drop counter (`relayline worker` configures that pipeline) is on the
    # default registry, so it is served here too.
    assert ("relayline_log_records_dropped_total", frozenset()) in samples
    # It stops with the worker.
    assert refused("127.0.0.1", port)


async def test_no_port_no_metrics_server(turn_relay: RelayFactory, workers: Workers) -> None:
    relay = await turn_relay()
    settings = workers.settings(relay)
    assert settings.worker_metrics_port is None
    async with serve_metrics(settings) as url:
        assert url is None
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        await asyncio.sleep(0.3)
        assert not task.done()
        assert not [t for t in threading.enumerate() if "serve_forever" in t.name]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_port_that_cannot_be_bound_stops_the_worker_with_one_line(
    turn_relay: RelayFactory, workers: Workers
) -> None:
    relay = await turn_relay()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = workers.settings(relay, worker_metrics_port=port)
        with structlog.testing.capture_logs() as logs, pytest.raises(MetricsUnavailable) as exc:
            await asyncio.wait_for(run_worker(settings), 5)
    assert f"127.0.0.1:{port}" in str(exc.value)
    errors = [entry for entry in logs if entry["log_level"] in ("error", "critical")]
    assert [e["event"] for e in errors] == ["worker_metrics_unavailable"]
    assert (errors[0]["host"], errors[0]["port"]) == ("127.0.0.1", port)
    assert not [e for e in logs if e["event"] == "relay_connected"]


async def test_turns_model_calls_tools_and_the_breaker_are_counted(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    upstream = FakeUpstream()
    llm_url = await upstream.start()
    up = upstream_label(llm_url)
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    await enable_tools(tenant, ["list_dir", "edit_file"])
    chat = await tenant.chat()
    try:
        async with (
            served_worker(
                workers,
                relay,
                llm_url=llm_url,
                llm_max_attempts=1,
                breaker_failures=2,
                breaker_recovery_s=60,
                approval_timeout_s=0.2,
            ) as url,
            WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws,
        ):
            # A completed turn: one model call, ok, with a first token.
            start = await scrape(url)
            upstream.play(answer(("Hel", "lo")))
            turn = await post(tenant, chat, "hi")
            await until_event(ws, "message.completed", turn_id=turn)
            done = await scrape(url)
            assert moved(start, done, "relayline_worker_turns_total", outcome="done") == 1
            assert moved(start, done, "relayline_worker_turns_total", outcome="failed") == 0
            assert value(done, "relayline_worker_turns_inflight") == value(
                start, "relayline_worker_turns_inflight"
            )
            calls = "relayline_worker_llm_calls_total"
            assert moved(start, done, calls, upstream=up, outcome="ok") == 1
            first = "relayline_worker_llm_first_token_seconds_count"
            assert moved(start, done, first, upstream=up) == 1
            duration = "relayline_worker_llm_call_seconds_count"
            assert moved(start, done, duration, upstream=up, outcome="ok") == 1
            assert value(done, "relayline_worker_llm_open_streams", upstream=up) == 0
            assert value(done, "relayline_worker_breaker_state", upstream=up) == 0

            # Tools: one that runs, one a person did not approve in time, one that does not
            # exist (counted as "unknown", not under the name the model made up).
            upstream.play(
                tool_calls([("c1", "list_dir", '{"path": "."}')]),
                answer(("listed",)),
                tool_calls([("c2", "edit_file", '{"path": "n.md", "content": "x"}')]),
                answer(("declined",)),
                tool_calls([("c3", "made_up_tool", "{}")]),
                answer(("no such tool",)),
            )
            for text in ("list", "edit", "invent"):
                turn = await post(tenant, chat, text)
                await until_event(ws, "message.completed", turn_id=turn)
            tools = await scrape(url)
            runs = "relayline_worker_tool_runs_total"
            assert moved(done, tools, runs, tool="list_dir", outcome="ok") == 1
            assert moved(done, tools, runs, tool="edit_file", outcome="denied") == 1
            assert moved(done, tools, runs, tool="unknown", outcome="error") == 1
            assert moved(done, tools, runs, tool="made_up_tool", outcome="error") == 0
            seconds = "relayline_worker_tool_run_seconds_count"
            assert moved(done, tools, seconds, tool="list_dir") == 1
            assert moved(done, tools, calls, upstream=up, outcome="ok") == 6
            assert moved(done, tools, "relayline_worker_turns_total", outcome="done") == 3

            # Failed calls: the upstream answers 500; the second opens the breaker (2 failures),
            # which fails the third turn without calling the model.
            upstream.play(status(500, "model exploded"))
            hits = upstream.hits
            turn = await post(tenant, chat, "fail once")
            await until_event(ws, "turn.failed", turn_id=turn)
            once = await scrape(url)
            assert moved(tools, once, calls, upstream=up, outcome="upstream_5xx") == 1
            assert moved(tools, once, duration, upstream=up, outcome="upstream_5xx") == 1
            assert moved(tools, once, "relayline_worker_turns_total", outcome="failed") == 1
            assert value(once, "relayline_worker_breaker_state", upstream=up) == 0
            for text in ("fail twice", "fail fast"):
                turn = await post(tenant, chat, text)
                await until_event(ws, "turn.failed", turn_id=turn)
            failed = await scrape(url)
            assert upstream.hits == hits + 2
            assert moved(tools, failed, calls, upstream=up, outcome="upstream_5xx") == 2
            assert moved(tools, failed, calls, upstream=up, outcome="circuit_open") == 1
            assert moved(tools, failed, "relayline_worker_turns_total", outcome="failed") == 3
            assert value(failed, "relayline_worker_breaker_state", upstream=up) == 2
            assert value(failed, "relayline_worker_llm_open_streams", upstream=up) == 0
            assert value(failed, "relayline_worker_turns_inflight") == value(
                start, "relayline_worker_turns_inflight"
            )
    finally:
        await upstream.close()


async def test_a_cancelled_turn_is_counted_as_cancelled(
    turn_relay: RelayFactory, tenants: Tenants, workers: Workers
) -> None:
    upstream = FakeUpstream()
    llm_url = await upstream.start()
    up = upstream_label(llm_url)
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    try:
        async with (
            served_worker(workers, relay, llm_url=llm_url) as url,
            WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws,
        ):
            before = await scrape(url)
            upstream.play(answer(["word "] * 200, delay=0.05))
            turn = await post(tenant, chat, "talk for a while")
            await until_event(ws, "message.delta")
            streaming = await scrape(url)
            assert value(streaming, "relayline_worker_llm_open_streams", upstream=up) == 1
            assert moved(before, streaming, "relayline_worker_turns_inflight") == 1
            r = await tenant.http.post(f"/v1/chats/{chat}/cancel", headers=tenant.auth)
            assert r.status_code in (200, 202), r.text
            await until_event(ws, "turn.cancelled", turn_id=turn)
            # The relay does not wait for the worker to stop: the worker gets turn.cancel.
            ended: Samples = {}
            async with asyncio.timeout(5):
                while True:
                    ended = await scrape(url)
                    if moved(before, ended, "relayline_worker_turns_total", outcome="cancelled"):
                        break
                    await asyncio.sleep(0.02)
            calls = "relayline_worker_llm_calls_total"
            assert moved(before, ended, calls, upstream=up, outcome="cancelled") == 1
            assert moved(before, ended, calls, upstream=up, outcome="ok") == 0
            assert value(ended, "relayline_worker_llm_open_streams", upstream=up) == 0
            assert moved(before, ended, "relayline_worker_turns_inflight") == 0
    finally:
        await upstream.close()


# The command


def _worker_env(relay: RelayServer, tmp_path: Path, **settings: str) -> dict[str, str]:
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": SOURCE_ROOT,
        "RELAYLINE_RELAY_URL": relay.url,
        "RELAYLINE_WORKER_KEY_ID": KEY_ID,
        "RELAYLINE_WORKER_SECRET": SECRET,
        "RELAYLINE_LOCAL_MODEL_DELAY_S": "0.001",
        "RELAYLINE_WORKSPACE_ROOTS": str(workspace),
        "RELAYLINE_LOG_FORMAT": "json",
        **{f"RELAYLINE_{name.upper()}": value for name, value in settings.items()},
    }


@contextlib.contextmanager
def worker_process(env: dict[str, str], cwd: Path) -> Any:
    log = cwd / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relayline", "worker"],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_the_worker_command_serves_its_metrics(
    turn_relay: RelayFactory, tenants: Tenants, tmp_path: Path
) -> None:
    relay = await turn_relay()
    tenant = await tenants.new(relay)
    chat = await tenant.chat()
    port = free_port()
    env = _worker_env(relay, tmp_path, worker_metrics_port=str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    with worker_process(env, tmp_path) as (proc, log):
        async with httpx.AsyncClient(timeout=2) as http:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(url)).status_code == 200:
                        break
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.05)
        async with WsHarness(relay, token=tenant.key, topics=[f"chat:{chat}"]) as ws:
            turn = await post(tenant, chat, "hello from a process")
            await until_event(ws, "message.completed", 20, turn_id=turn)
        samples = await scrape(url)
        # A process of its own: the figures are this worker's alone.
        assert value(samples, "relayline_worker_turns_total", outcome="done") == 1
        assert value(samples, "relayline_worker_turns_inflight") == 0
        ok = value(samples, "relayline_worker_llm_calls_total", upstream="local", outcome="ok")
        assert ok == 1
        # The CLI's log pipeline counts the records it drops on the same registry.
        assert ("relayline_log_records_dropped_total", frozenset()) in samples
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0, log.read_text()
    assert refused("127.0.0.1", port)
    assert "worker_metrics_listening" in log.read_text()


async def test_the_worker_command_stops_at_start_when_the_port_is_taken(
    turn_relay: RelayFactory, tmp_path: Path
) -> None:
    relay = await turn_relay()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _worker_env(relay, tmp_path, worker_metrics_port=str(port))
        with worker_process(env, tmp_path) as (proc, log):
            code = await asyncio.to_thread(proc.wait, 20)
    output = log.read_text()
    assert code == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "worker_metrics_unavailable" in line]
    assert len(lines) == 1, output
    assert f"127.0.0.1:{port}" in lines[0]


async def test_the_agents_model_client_is_counted_the_callers_is_plain(workers: Workers) -> None:
    upstream = FakeUpstream()
    llm_url = await upstream.start()
    try:
        settings = workers.settings("http://127.0.0.1:9", llm_url=llm_url, llm_probe=True)
        connection, llm = build_connection(settings)
        # The caller gets the client itself (to probe and close); the agent gets it counted.
        assert isinstance(llm, OpenAICompatClient)
        counted = connection.runner.llm
        assert isinstance(counted, InstrumentedLLM) and counted.inner is llm
        assert counted.label == upstream_label(llm_url)
        await probe_upstream(settings, llm)  # a 404: an unknown server
        assert counted.upstream is llm.upstream  # what X-Request-ID needs, seen through it
        await counted.aclose()
        with pytest.raises(LLMError) as failed:
            async for _ in llm.stream([ChatMessage("user", "hi")], [], model="m"):
                pass
        assert failed.value.category == "internal"  # closed: the wrapper closed what it wraps
    finally:
        await upstream.close()


async def test_once_started_the_workers_heap_is_frozen_and_full_collections_are_rarer(
    turn_relay: RelayFactory, workers: Workers, restored_gc: tuple[int, int, int]
) -> None:
    assert restored_gc[2] != GC_FULL_EVERY  # the interpreter's own setting before
    gc.unfreeze()
    relay = await turn_relay()
    async with served_worker(workers, relay):
        async with asyncio.timeout(10):  # /metrics is up before the model is probed
            while gc.get_threshold()[2] != GC_FULL_EVERY:
                await asyncio.sleep(0.02)
        assert gc.get_threshold() == (restored_gc[0], restored_gc[1], GC_FULL_EVERY)
        assert gc.get_freeze_count() > 0
