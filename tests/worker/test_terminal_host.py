"""The worker's terminal host with real programs in PTYs, its frames captured as the relay
would get them: UTF-8 across reads, the worker's own input checks, refusals, timers, resize,
flow control, the environment, metrics."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from relayline.protocol.limits import TERM_INPUT_MAX_BYTES
from relayline.worker.terminals.host import HostSettings, TerminalHost
from relayline.worker.terminals.session import SessionLimits

pytestmark = pytest.mark.timeout(30)

PROGRAMS = {
    "cat": ("/bin/cat",),
    "split": ("/bin/sh", "-c", "printf '\\303'; sleep 0.3; printf '\\251 \\377 done\\n'"),
    "env": ("/usr/bin/env",),
    "pwd": ("/bin/sh", "-c", "pwd"),
    "yes": ("/usr/bin/yes",),
    "sleep": ("/bin/sleep", "30"),
    "missing": ("/nonexistent/program",),
}


class Relay:
    """Stands in for the relay connection: records every frame, or holds them back."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.open = asyncio.Event()
        self.open.set()

    async def send(self, text: str) -> None:
        await self.open.wait()
        self.frames.append(json.loads(text))
        self.arrived.set()

    def of(self, session: str, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["id"] == session and f["type"] == kind]

    def output(self, session: str) -> str:
        return "".join(f["data"] for f in self.of(session, "term.output") if not f.get("snapshot"))

    async def until(self, check: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.arrived.clear()
                await self.arrived.wait()

    async def exited(self, session: str, timeout: float = 10) -> dict[str, Any]:
        await self.until(lambda: bool(self.of(session, "term.exited")), timeout)
        return self.of(session, "term.exited")[0]


@pytest.fixture
def make_host(tmp_path: Path) -> Callable[..., TerminalHost]:
    def make(**settings: Any) -> TerminalHost:
        values: dict[str, Any] = {
            "programs": PROGRAMS,
            "roots": [tmp_path],
            "session": SessionLimits(grace_s=0.5, resize_debounce_s=0.05),
        }
        values.update(settings)
        return TerminalHost(
            HostSettings(**values), env={"PATH": "/usr/bin:/bin", "RELAYLINE_SECRET_KEY": "s"}
        )

    return make


@pytest.fixture
async def linked(
    make_host: Callable[..., TerminalHost],
) -> AsyncIterator[tuple[TerminalHost, Relay]]:
    host = make_host()
    relay = Relay()
    host.link_up(relay.send)
    yield host, relay
    await host.aclose()


def open_frame(session: str, program: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "term.open",
        "id": session,
        "program": program,
        "cols": 80,
        "rows": 24,
        "meta": {},
        **fields,
    }


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_character_split_across_reads_arrives_whole(
    linked: tuple[TerminalHost, Relay],
) -> None:
    host, relay = linked
    host.handle(open_frame("s", "split"))
    exited = await relay.exited("s")
    assert exited["status"] == 0
    # é came in two reads 0.3 s apart; the invalid byte \377 became U+FFFD.
    assert relay.output("s") == "é \ufffd done\r\n"
    # The first byte of é was held back, not sent alone (as U+FFFD) after the first read.
    assert relay.of("s", "term.output")[0]["data"].startswith("é")


async def test_the_worker_checks_input_again(linked: tuple[TerminalHost, Relay]) -> None:
    host, relay = linked
    host.handle(open_frame("c", "cat"))
    await relay.until(lambda: bool(relay.of("c", "term.state")))
    too_large = metric("relayline_worker_terminal_input_refused_total", reason="payload_too_large")
    invalid = metric("relayline_worker_terminal_input_refused_total", reason="invalid_utf8")
    host.handle({"type": "term.input", "id": "c", "data": "x" * (TERM_INPUT_MAX_BYTES + 1)})
    host.handle({"type": "term.input", "id": "c", "data": "bad\ud800\n"})
    host.handle({"type": "term.input", "id": "c", "data": "ok\n"})
    await relay.until(lambda: relay.output("c").count("ok") == 2)
    assert "x" not in relay.output("c") and "bad" not in relay.output("c")
    assert (
        metric("relayline_worker_terminal_input_refused_total", reason="payload_too_large")
        == too_large + 1
    )
    assert (
        metric("relayline_worker_terminal_input_refused_total", reason="invalid_utf8")
        == invalid + 1
    )


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (open_frame("r", "rm"), "unknown_program"),
        (open_frame("r", "cat", cwd="/etc"), "cwd_not_allowed"),
        (open_frame("r", "cat", cols=0), "validation_error"),
        (open_frame("r", "cat", rows=501), "validation_error"),
        (open_frame("r", "missing"), "unavailable"),
    ],
)
async def test_refused_opens_end_as_failed(
    linked: tuple[TerminalHost, Relay], frame: dict[str, Any], code: str
) -> None:
    host, relay = linked
    host.handle(frame)
    exited = await relay.exited("r")
    assert exited["reason"] == "failed" and exited["error"]["code"] == code
    assert not host.sessions


async def test_sessions_beyond_the_worker_limit_are_refused(
    make_host: Callable[..., TerminalHost],
) -> None:
    host, relay = make_host(max_sessions=1), Relay()
    host.link_up(relay.send)
    try:
        host.handle(open_frame("one", "sleep"))
        host.handle(open_frame("two", "sleep"))
        exited = await relay.exited("two")
        assert exited["error"]["code"] == "too_many_terminals"
        assert list(host.sessions) == ["one"]
        assert host.announce()["capacity"] == 1
        assert [s["id"] for s in host.announce()["sessions"]] == ["one"]
    finally:
        await host.aclose()
    assert (await relay.exited("one"))["reason"] == "shutdown"


async def test_idle_and_lifetime_end_sessions(make_host: Callable[..., TerminalHost]) -> None:
    host, relay = make_host(idle_s=0.4), Relay()
    host.link_up(relay.send)
    host.handle(open_frame("idle", "sleep"))
    assert (await relay.exited("idle"))["reason"] == "idle"
    await host.aclose()
    host, relay = make_host(max_lifetime_s=0.4), Relay()
    host.link_up(relay.send)
    host.handle(open_frame("old", "yes"))  # busy, never idle
    assert (await relay.exited("old"))["reason"] == "lifetime"
    await host.aclose()


async def test_resizes_are_debounced(linked: tuple[TerminalHost, Relay]) -> None:
    host, relay = linked
    host.handle(open_frame("c", "cat"))
    await relay.until(lambda: bool(relay.of("c", "term.state")))
    for cols in range(81, 91):
        host.handle({"type": "term.resize", "id": "c", "cols": cols, "rows": 30})
    host.handle({"type": "term.resize", "id": "c", "cols": 1000, "rows": 30})  # out of range
    await relay.until(lambda: len(relay.of("c", "term.state")) == 2)
    await asyncio.sleep(0.2)
    states = relay.of("c", "term.state")
    assert [(s["cols"], s["rows"]) for s in states] == [(80, 24), (90, 30)]
    assert host.sessions["c"].proc.getwinsize() == (30, 90)


async def test_reading_pauses_while_the_relay_is_behind(
    make_host: Callable[..., TerminalHost],
) -> None:
    host, relay = make_host(outbox_max_bytes=64 * 1024), Relay()
    relay.open.clear()  # the relay reads nothing for now
    host.link_up(relay.send)
    pauses = metric("relayline_worker_terminal_read_pauses_total")
    host.handle(open_frame("y", "yes"))
    await asyncio.sleep(1.0)
    # Bounded: the outbox went over once, the session stopped reading, the program blocks.
    assert metric("relayline_worker_terminal_read_pauses_total") > pauses
    queued = host.outbox.queued_bytes
    assert queued <= 64 * 1024 + 2 * 48 * 1024
    await asyncio.sleep(0.3)
    assert host.outbox.queued_bytes == queued
    relay.open.set()  # it catches up: reading resumes
    await relay.until(lambda: relay.output("y").count("y") > 200_000, 20)
    await host.aclose()


async def test_a_program_gets_a_scrubbed_environment_and_its_directory(
    linked: tuple[TerminalHost, Relay], tmp_path: Path
) -> None:
    host, relay = linked
    host.handle(open_frame("e", "env"))
    host.handle(open_frame("p", "pwd"))
    await relay.exited("e")
    await relay.exited("p")
    env = relay.output("e")
    assert "TERM=xterm-256color" in env and "RELAYLINE" not in env
    assert relay.output("p").strip() == str(tmp_path.resolve())


async def test_metrics_follow_the_sessions(linked: tuple[TerminalHost, Relay]) -> None:
    host, relay = linked
    exits = metric("relayline_worker_terminal_exits_total", reason="terminated")
    output = metric("relayline_worker_terminal_output_bytes_total")
    host.handle(open_frame("c", "cat"))
    await relay.until(lambda: bool(relay.of("c", "term.state")))
    assert metric("relayline_worker_terminal_sessions") >= 1
    host.handle({"type": "term.input", "id": "c", "data": "12345\n"})
    await relay.until(lambda: relay.output("c").count("12345") == 2)
    host.handle({"type": "term.close", "id": "c"})
    exited = await relay.exited("c")
    # SIGHUP and SIGTERM go out back to back: which one the program dies of is the scheduler's.
    assert exited.pop("signal") in (signal.SIGHUP, signal.SIGTERM)
    assert exited == {"type": "term.exited", "id": "c", "reason": "terminated"}
    assert metric("relayline_worker_terminal_exits_total", reason="terminated") == exits + 1
    assert metric("relayline_worker_terminal_output_bytes_total") >= output + 14
