"""One terminal session: a program in a PTY, read on the event loop, ended without leftovers.

The PTY's child is the :mod:`supervisor`, which starts the program and outlives it only to
end and reap what it left. This side:

- reads the PTY master without blocking the loop (``loop.add_reader`` on a non-blocking fd,
  no thread; a few reads an event while there is more) and hands the bytes to :mod:`.output`
  (decoded, mirrored, coalesced);
- stops reading while the outbox is over its bound and resumes when it has drained;
- learns that the supervisor ended (:mod:`.ending`) and reaps it: it ends last, once nothing
  of the session runs, with the program's status;
- terminates (:func:`.ending.stop_session`): SIGHUP and SIGTERM to every process group of the
  session, the grace period, then SIGKILL to whatever is left; then reader removed, PTY
  closed, child reaped, ``term.exited``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from ptyprocess import PtyProcess

import relayline
from relayline.protocol.names import TermExitReason, WorkerFrame
from relayline.worker.terminals import metrics
from relayline.worker.terminals.ending import ChildWatch, stop_session
from relayline.worker.terminals.outbox import TerminalOutbox
from relayline.worker.terminals.output import TerminalOutput

log = structlog.get_logger("relayline.worker.terminals")

READ_CHUNK = 16 * 1024
# Reads per readable event until the PTY has no more (at most READ_CHUNK each: bounds how long
# one event holds the loop). A PTY hands over about 4 KB a read, and a flooding program blocks
# until the reader takes it: reading on while there is more spares the loop's round trips
# (about a third more throughput for a flood, measured worker-side).
READS_PER_EVENT = 4
INPUT_BACKLOG_BYTES = 64 * 1024  # typed ahead of a program that does not read its input
_PACKAGE_ROOT = str(Path(relayline.__file__).resolve().parents[1])
# The supervisor runs isolated from the environment (-I): it finds this package by path.
_SUPERVISOR = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from relayline.worker.terminals.supervisor import main; main()"
)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    flush_s: float = 0.008
    flush_chars: int = 32 * 1024
    grace_s: float = 5.0
    resize_debounce_s: float = 0.05


def supervisor_argv(grace_s: float, program: tuple[str, ...]) -> list[str]:
    """The command line that runs ``program`` under the supervisor."""
    # The supervisor's own deadline is a little later than the worker's: when both live, the
    # worker is the one that kills after the grace (and counts it).
    return [
        sys.executable,
        "-I",
        "-c",
        _SUPERVISOR,
        _PACKAGE_ROOT,
        str(os.getpid()),
        str(grace_s + 1.0),
        "--",
        *program,
    ]


class TerminalSession:
    """A running program in a PTY; create with :meth:`start`."""

    def __init__(
        self,
        session_id: str,
        program: str,
        proc: PtyProcess,
        cols: int,
        rows: int,
        meta: dict[str, Any],
        outbox: TerminalOutbox,
        limits: SessionLimits,
        on_ended: Callable[[TerminalSession], None],
    ) -> None:
        self.id = session_id
        self.program = program
        self.proc = proc
        self.cols = cols
        self.rows = rows
        self.meta = meta
        self.outbox = outbox
        self.limits = limits
        self.on_ended = on_ended
        self.started = time.monotonic()
        self.last_activity = self.started
        self.output = TerminalOutput(
            session_id,
            cols,
            rows,
            outbox,
            flush_s=limits.flush_s,
            flush_chars=limits.flush_chars,
            after_flush=self._check_outbox,
        )
        self._loop = asyncio.get_running_loop()
        self._fd = proc.fd
        self._resize_timer: asyncio.TimerHandle | None = None
        self._wanted_size = (cols, rows)
        self._reading = False
        self._eof = False
        self._input: bytearray = bytearray()
        self._writing = False
        self.ending: TermExitReason | None = None
        self.ended = asyncio.Event()
        self._terminator: asyncio.Task[None] | None = None
        self.child = ChildWatch(proc, self._child_ended)

    # Start

    @classmethod
    def start(
        cls,
        session_id: str,
        program: str,
        argv: tuple[str, ...],
        *,
        cols: int,
        rows: int,
        cwd: Path,
        env: Mapping[str, str],
        meta: dict[str, Any],
        outbox: TerminalOutbox,
        limits: SessionLimits,
        on_ended: Callable[[TerminalSession], None],
    ) -> TerminalSession:
        """Spawn the program (under its supervisor) and start reading; raises ``OSError``."""
        proc = PtyProcess.spawn(
            supervisor_argv(limits.grace_s, argv),
            cwd=str(cwd),
            env=dict(env),
            dimensions=(rows, cols),
        )
        # ptyprocess sleeps (blocking) after closing and terminating by default: not on a loop.
        proc.delayafterclose = 0
        proc.delayafterterminate = 0
        os.set_blocking(proc.fd, False)
        session = cls(session_id, program, proc, cols, rows, meta, outbox, limits, on_ended)
        session._read()
        metrics.SESSIONS_OPEN.inc()
        log.info("terminal_started", session=session_id, program=program, pid=proc.pid)
        return session

    @property
    def pid(self) -> int:
        """The supervisor's pid, which is also the session's id and its leader's group."""
        return int(self.proc.pid)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "program": self.program,
            "cols": self.cols,
            "rows": self.rows,
            "meta": self.meta,
        }

    # Output

    def _read(self) -> None:
        if not self._reading and not self._eof and not self.child.gone.is_set():
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        for _ in range(READS_PER_EVENT):
            try:
                data = os.read(self._fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:  # EIO: every holder of the terminal's side has closed it
                data = b""
            if not data:
                self._eof = True
                self._stop_reading()
                self.output.take(b"", final=True)
                self.output.flush()
                return
            self._take(data)
            if not self._reading:
                return

    def _take(self, data: bytes) -> None:
        metrics.OUTPUT_BYTES.inc(len(data))
        if self.output.take(data):
            self.last_activity = time.monotonic()

    def _check_outbox(self) -> None:
        """After a flush: stop reading while the outbox is over its bound."""
        if self.outbox.over and self._reading:
            self._stop_reading()
            metrics.READ_PAUSES.inc()
            self.outbox.when_drained(self._read)

    def send_snapshot(self) -> None:
        """Send the screen as it is after everything sent so far (``snapshot: true``)."""
        self.output.snapshot()

    def send_state(self) -> None:
        self.outbox.push(
            {
                "type": WorkerFrame.TERM_STATE,
                "id": self.id,
                "state": "running",
                "program": self.program,
                "cols": self.cols,
                "rows": self.rows,
            }
        )

    # Input and size

    def write(self, data: bytes) -> bool:
        """Type ``data``; False (nothing written) when the program has that much unread."""
        if self.ending is not None or self.child.gone.is_set():
            metrics.INPUT_REFUSED.labels("not_running").inc()
            return False
        if len(self._input) + len(data) > INPUT_BACKLOG_BYTES:
            metrics.INPUT_REFUSED.labels("backlog").inc()
            return False
        self.last_activity = time.monotonic()
        metrics.INPUT_BYTES.inc(len(data))
        self.output.typed()
        self._input += data
        self._write_input()
        return True

    def _write_input(self) -> None:
        while self._input:
            try:
                written = os.write(self._fd, self._input)
            except BlockingIOError:
                break
            except OSError:  # the terminal is gone: what was typed goes nowhere
                self._input.clear()
                break
            del self._input[:written]
        if self._input and not self._writing:
            self._loop.add_writer(self._fd, self._write_input)
            self._writing = True
        elif not self._input and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def resize(self, cols: int, rows: int) -> None:
        """Resize after ``resize_debounce_s`` without another resize (a dragged window sends
        many; the program redraws once)."""
        self._wanted_size = (cols, rows)
        if self._resize_timer is not None:
            self._resize_timer.cancel()
        self._resize_timer = self._loop.call_later(self.limits.resize_debounce_s, self._resize)

    def _resize(self) -> None:
        self._resize_timer = None
        cols, rows = self._wanted_size
        if (cols, rows) == (self.cols, self.rows) or self.child.gone.is_set():
            return
        self.output.resize(cols, rows)
        with contextlib.suppress(OSError):
            self.proc.setwinsize(rows, cols)  # the kernel sends SIGWINCH to the program
        self.cols, self.rows = cols, rows
        self.send_state()

    # The end

    def terminate(self, reason: TermExitReason) -> None:
        """End the session (idempotent): the first reason given is the one reported."""
        if self.ending is None:
            self.ending = reason
        if self._terminator is None:
            self._terminator = self._loop.create_task(self._finish())

    async def wait(self) -> None:
        await self.ended.wait()

    def _child_ended(self) -> None:
        if self.ending is None:
            self.ending = TermExitReason.EXITED
        if self._terminator is None:
            self._terminator = self._loop.create_task(self._finish())

    async def _finish(self) -> None:
        try:
            if not self.child.gone.is_set():
                grace = self.limits.grace_s
                if await stop_session(self.pid, self.child, grace):
                    metrics.KILLED_AFTER_GRACE.inc()
                    log.warning("terminal_killed_after_grace", session=self.id, grace_s=grace)
            await self._reap()
        finally:
            self._close()

    async def _reap(self) -> None:
        # Output the program wrote just before the end is still in the PTY: read it out.
        while not self._eof:
            try:
                data = os.read(self._fd, READ_CHUNK)
            except OSError:
                break
            if not data:
                break
            self._take(data)
        self.output.take(b"", final=True)
        self.output.flush()
        await self.child.reap()

    def exit_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": WorkerFrame.TERM_EXITED,
            "id": self.id,
            "reason": self.ending or TermExitReason.EXITED,
        }
        if self.proc.signalstatus is not None:
            frame["signal"] = int(self.proc.signalstatus)
        elif self.proc.exitstatus is not None:
            frame["status"] = int(self.proc.exitstatus)
        return frame

    def _close(self) -> None:
        self.output.close()
        if self._resize_timer is not None:
            self._resize_timer.cancel()
        self._stop_reading()
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self.child.close()
        with contextlib.suppress(Exception):
            self.proc.close(force=True)
        frame = self.exit_frame()
        self.outbox.push(frame)
        reason = str(frame["reason"])
        metrics.SESSIONS_OPEN.dec()
        metrics.EXITS.labels(reason).inc()
        log.info(
            "terminal_exited",
            session=self.id,
            reason=reason,
            status=frame.get("status"),
            signal=frame.get("signal"),
        )
        self.ended.set()
        self.on_ended(self)
