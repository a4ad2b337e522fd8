"""Every terminal session of one worker: the relay's frames, limits, timers, the announcement.

The relay sends ``term.open`` / ``term.input`` / ``term.resize`` / ``term.redraw`` /
``term.close``; the host answers with ``term.state``, ``term.output`` and ``term.exited``
through the outbox. What the relay checks, the host checks again (it runs the programs):
the program must be a name of the allowlist, the working directory inside the workspace
roots, the size within bounds, input at most ``TERM_INPUT_MAX_BYTES`` of valid UTF-8, and no
more than ``max_sessions`` at once. A refused open ends as ``term.exited`` with reason
``failed`` and an ``error`` {code, detail}.

Sessions end by themselves, on ``term.close``, after ``idle_s`` without input or output,
after ``max_lifetime_s``, when the worker stops (:meth:`close_all`), and when the worker has
been without a relay for ``detach_grace_s`` (:meth:`link_down`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from relayline.protocol.limits import TERM_INPUT_MAX_BYTES, TERM_MAX_SIZE, TERM_MIN_SIZE
from relayline.protocol.names import ErrorCode, TermExitReason, WorkerFrame
from relayline.worker.terminals import metrics
from relayline.worker.terminals.environment import CwdNotAllowed, resolve_cwd, terminal_env
from relayline.worker.terminals.outbox import Send, TerminalOutbox
from relayline.worker.terminals.session import SessionLimits, TerminalSession

log = structlog.get_logger("relayline.worker.terminals")

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_META_KEYS = 16


@dataclass(frozen=True, slots=True)
class HostSettings:
    programs: Mapping[str, tuple[str, ...]]
    roots: Sequence[Path]
    max_sessions: int = 8
    idle_s: float = 3600.0  # 0: never
    max_lifetime_s: float = 86_400.0  # 0: never
    detach_grace_s: float = 60.0
    outbox_max_bytes: int = 1024 * 1024
    session: SessionLimits = field(default_factory=SessionLimits)


class TerminalRefused(Exception):
    """A ``term.open`` the host will not run; ``code`` is an :class:`ErrorCode`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _size(frame: Mapping[str, Any]) -> tuple[int, int] | None:
    cols, rows = frame.get("cols"), frame.get("rows")
    for value in (cols, rows):
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        if not TERM_MIN_SIZE <= value <= TERM_MAX_SIZE:
            return None
    assert isinstance(cols, int) and isinstance(rows, int)
    return cols, rows


def input_bytes(data: object) -> bytes | str:
    """``data`` as the bytes to type, or the refusal's error code."""
    if not isinstance(data, str):
        return ErrorCode.VALIDATION_ERROR
    if len(data) > TERM_INPUT_MAX_BYTES:  # each character is at least one byte
        return ErrorCode.PAYLOAD_TOO_LARGE
    try:
        raw = data.encode("utf-8")  # lone surrogates (JSON "\ud800") do not encode
    except UnicodeEncodeError:
        return ErrorCode.INVALID_UTF8
    if len(raw) > TERM_INPUT_MAX_BYTES:
        return ErrorCode.PAYLOAD_TOO_LARGE
    return raw


class TerminalHost:
    """The worker's terminal sessions (see the module docstring)."""

    def __init__(self, settings: HostSettings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = terminal_env(env)
        self.outbox = TerminalOutbox(settings.outbox_max_bytes)
        self.sessions: dict[str, TerminalSession] = {}
        for name, argv in settings.programs.items():
            if shutil.which(argv[0], path=self.env.get("PATH")) is None:
                log.warning("terminal_program_missing", program=name, command=argv[0])
        self._sweeper: asyncio.Task[None] | None = None
        self._detach_timer: asyncio.TimerHandle | None = None

    # What the relay learns

    def announce(self) -> dict[str, Any]:
        """``terminals`` of ``hello`` and ``state``."""
        return {
            "programs": sorted(self.settings.programs),
            "capacity": self.settings.max_sessions,
            "sessions": [s.info() for s in self.sessions.values() if s.ending is None],
        }

    # The relay link

    def link_up(self, send: Send) -> None:
        """A relay connection is up: frames flow again, and every viewer gets a fresh screen
        (frames may have been lost with the previous connection)."""
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        self.outbox.attach(send)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        for session in self.sessions.values():
            if session.ending is None:
                session.send_snapshot()

    def link_down(self) -> None:
        """The relay connection is gone: sessions live on for ``detach_grace_s``."""
        self.outbox.detach()
        if self._detach_timer is None and self.sessions:
            self._detach_timer = asyncio.get_running_loop().call_later(
                self.settings.detach_grace_s, self._detached
            )

    def _detached(self) -> None:
        self._detach_timer = None
        if self.sessions:
            log.warning("terminals_detached", sessions=len(self.sessions))
        for session in list(self.sessions.values()):
            session.terminate(TermExitReason.DETACHED)

    # Frames from the relay

    def handle(self, frame: Mapping[str, Any]) -> None:
        kind = frame.get("type")
        session_id = frame.get("id")
        if not isinstance(session_id, str) or not _ID.fullmatch(session_id):
            log.warning("terminal_frame_refused", type=kind, detail="no valid id")
            return
        if kind == WorkerFrame.TERM_OPEN:
            self._open(session_id, frame)
            return
        session = self.sessions.get(session_id)
        if session is None:
            if kind == WorkerFrame.TERM_CLOSE:
                # The relay believes in a session this worker does not run: tell it it ended.
                self.outbox.push(
                    {"type": WorkerFrame.TERM_EXITED, "id": session_id, "reason": "lost"}
                )
            elif kind == WorkerFrame.TERM_INPUT:
                metrics.INPUT_REFUSED.labels("not_running").inc()
            return
        if kind == WorkerFrame.TERM_INPUT:
            raw = input_bytes(frame.get("data"))
            if isinstance(raw, str):
                refusal = "invalid_utf8" if raw == ErrorCode.INVALID_UTF8 else raw
                if refusal in metrics.INPUT_REFUSALS:
                    metrics.INPUT_REFUSED.labels(refusal).inc()
                log.warning("terminal_input_refused", session=session_id, code=raw)
                return
            session.write(raw)
        elif kind == WorkerFrame.TERM_RESIZE:
            size = _size(frame)
            if size is None:
                log.warning("terminal_resize_refused", session=session_id)
                return
            session.resize(*size)
        elif kind == WorkerFrame.TERM_REDRAW:
            session.send_snapshot()
        elif kind == WorkerFrame.TERM_CLOSE:
            session.terminate(TermExitReason.TERMINATED)

    def _open(self, session_id: str, frame: Mapping[str, Any]) -> None:
        if session_id in self.sessions:
            # A relay that lost track (it restarted) opens again: this one runs already.
            self.sessions[session_id].send_state()
            return
        program = frame.get("program")
        try:
            session = self._start(session_id, program, frame)
        except TerminalRefused as refused:
            metrics.EXITS.labels(TermExitReason.FAILED).inc()
            log.warning(
                "terminal_refused", session=session_id, code=refused.code, detail=refused.detail
            )
            self.outbox.push(
                {
                    "type": WorkerFrame.TERM_EXITED,
                    "id": session_id,
                    "reason": TermExitReason.FAILED,
                    "error": {"code": refused.code, "detail": refused.detail},
                }
            )
            return
        self.sessions[session_id] = session
        session.send_state()

    def _start(self, session_id: str, program: object, frame: Mapping[str, Any]) -> TerminalSession:
        argv = self.settings.programs.get(program) if isinstance(program, str) else None
        if argv is None or not isinstance(program, str):
            raise TerminalRefused(ErrorCode.UNKNOWN_PROGRAM, "not a program of this worker")
        size = _size(frame)
        if size is None:
            raise TerminalRefused(
                ErrorCode.VALIDATION_ERROR,
                f"cols and rows: integers from {TERM_MIN_SIZE} to {TERM_MAX_SIZE}",
            )
        running = sum(1 for s in self.sessions.values() if s.ending is None)
        if running >= self.settings.max_sessions:
            raise TerminalRefused(
                ErrorCode.TOO_MANY_TERMINALS,
                f"this worker runs at most {self.settings.max_sessions} terminals",
            )
        cwd_asked = frame.get("cwd")
        try:
            cwd = resolve_cwd(
                self.settings.roots, cwd_asked if isinstance(cwd_asked, str) else None
            )
        except CwdNotAllowed as exc:
            raise TerminalRefused(ErrorCode.CWD_NOT_ALLOWED, str(exc)) from None
        if shutil.which(argv[0], path=self.env.get("PATH")) is None:
            raise TerminalRefused(
                ErrorCode.UNAVAILABLE, f"{argv[0]} is not installed on this worker"
            )
        meta = frame.get("meta")
        if not isinstance(meta, dict) or len(meta) > _MAX_META_KEYS:
            meta = {}
        try:
            return TerminalSession.start(
                session_id,
                program,
                argv,
                cols=size[0],
                rows=size[1],
                cwd=cwd,
                env=self.env,
                meta=meta,
                outbox=self.outbox,
                limits=self.settings.session,
                on_ended=self._ended,
            )
        except OSError as exc:
            raise TerminalRefused(ErrorCode.INTERNAL, f"cannot start: {exc.strerror}") from None

    def _ended(self, session: TerminalSession) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    # Timers and the end

    async def _sweep(self) -> None:
        idle, lifetime = self.settings.idle_s, self.settings.max_lifetime_s
        bounds = [b for b in (idle, lifetime) if b > 0]
        tick = min([1.0, *(b / 4 for b in bounds)])
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if lifetime > 0 and now - session.started >= lifetime:
                    session.terminate(TermExitReason.LIFETIME)
                elif idle > 0 and now - session.last_activity >= idle:
                    session.terminate(TermExitReason.IDLE)

    async def close_all(self, reason: TermExitReason = TermExitReason.SHUTDOWN) -> None:
        """End every session and wait until each has been reaped."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.terminate(reason)
        for session in sessions:
            await session.wait()

    async def aclose(self, flush_s: float = 2.0) -> None:
        """Stop: every session ended (``shutdown``), their last frames sent if a relay is
        connected (for up to ``flush_s``), timers and the writer stopped."""
        await self.close_all(TermExitReason.SHUTDOWN)
        if self.outbox.linked:
            await self.outbox.drained(flush_s)
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.outbox.close()
