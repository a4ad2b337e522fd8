"""Terminal sessions, relay side: open on a worker that offers the program, route clients' ops
to that worker, publish what it sends on ``term:<id>``.

Guarantees:

- A session runs on exactly one worker; frames about it from any other link are ignored, and
  so is anything about a session already reported ended.
- ``open`` returns once the worker said the program runs (its first ``term.state``), or
  raises the refusal with a stable code: ``no_terminal_worker`` (503, no connected worker runs
  terminals), ``unknown_program`` (422, none offers it), ``too_many_terminals`` (429, the
  tenant's limit or every offering worker full), ``cwd_not_allowed`` (422), ``unavailable``
  (503, the worker did not answer within ``RELAYLINE_TERMINAL_OPEN_TIMEOUT_S``).
- Output is published in the order the worker sent it, on the bus, so every instance's
  viewers get it. ``term.exited`` is published once per session.
- A worker that disconnects leaves its sessions ``detached``; when it comes back with them
  (its ``hello`` lists them) they are ``running`` again, else after
  ``RELAYLINE_TERMINAL_DETACH_GRACE_S`` (plus a margin) they end as ``lost``. A relay that
  restarted adopts the sessions its workers list, owner and all (``meta``).
- Input is checked here, at the edge (write grant, at most ``TERM_INPUT_MAX_BYTES`` of valid
  UTF-8), and again by the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

from relayline.auth import Principal
from relayline.bus.base import Bus
from relayline.config import Settings
from relayline.envelope import now_ms
from relayline.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RelaylineError,
    Unavailable,
    ValidationFailed,
)
from relayline.ids import new_id
from relayline.observability import terminal_metrics as m
from relayline.protocol.limits import TERM_INPUT_MAX_BYTES, TERM_MAX_SIZE, TERM_MIN_SIZE
from relayline.protocol.names import ErrorCode, EventType, TermExitReason, WorkerFrame
from relayline.terminals.access import Access, access, may_open
from relayline.terminals.hosts import TerminalHostLink, parse_announcement
from relayline.terminals.registry import TerminalRecord, TerminalRegistry
from relayline.turns.worker_link import WorkerLink

log = structlog.get_logger("relayline.terminals")

DETACH_MARGIN_S = 10.0  # the worker's own detach grace ends first; then the relay gives up
REDRAW_COALESCE_S = 0.02  # viewers that subscribe together share one snapshot


def check_size(cols: object, rows: object) -> tuple[int, int]:
    for name, value in (("cols", cols), ("rows", rows)):
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not TERM_MIN_SIZE <= value <= TERM_MAX_SIZE
        ):
            raise ValidationFailed(f"{name}: an integer from {TERM_MIN_SIZE} to {TERM_MAX_SIZE}")
    assert isinstance(cols, int) and isinstance(rows, int)
    return cols, rows


def check_input(data: object) -> None:
    """Raise unless ``data`` is at most ``TERM_INPUT_MAX_BYTES`` of valid UTF-8 text."""
    if not isinstance(data, str):
        raise ValidationFailed("data: a string is required")
    if len(data) > TERM_INPUT_MAX_BYTES:
        raise PayloadTooLarge(f"data: at most {TERM_INPUT_MAX_BYTES} bytes of UTF-8")
    try:
        size = len(data.encode("utf-8"))  # a lone surrogate ("\ud800" in JSON) does not encode
    except UnicodeEncodeError:
        raise ValidationFailed("data: not valid UTF-8", code=ErrorCode.INVALID_UTF8) from None
    if size > TERM_INPUT_MAX_BYTES:
        raise PayloadTooLarge(f"data: at most {TERM_INPUT_MAX_BYTES} bytes of UTF-8")


def _refusal(error: object) -> RelaylineError:
    """The error a worker's refusal to start a session becomes."""
    code = error.get("code") if isinstance(error, dict) else None
    detail = error.get("detail") if isinstance(error, dict) else None
    text = str(detail)[:300] if detail else "the worker could not start the program"
    if code in (ErrorCode.UNKNOWN_PROGRAM, ErrorCode.CWD_NOT_ALLOWED, ErrorCode.VALIDATION_ERROR):
        return ValidationFailed(text, code=str(code))
    if code == ErrorCode.TOO_MANY_TERMINALS:
        return RateLimited(text, code=ErrorCode.TOO_MANY_TERMINALS)
    return Unavailable(text)


class TerminalService:
    """See the module docstring. One per relay process; also the workers' link observer."""

    frame_types: frozenset[str] = frozenset(
        {WorkerFrame.TERM_OUTPUT, WorkerFrame.TERM_STATE, WorkerFrame.TERM_EXITED}
    )

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.registry = TerminalRegistry()
        self.hosts: dict[str, TerminalHostLink] = {}
        self._opening: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._redraws: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        for handle in [*self._timers.values(), *self._redraws.values()]:
            handle.cancel()
        self._timers.clear()
        self._redraws.clear()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, record: TerminalRecord, kind: str, data: dict[str, Any]) -> None:
        try:
            await self.bus.publish(record.topic, kind, data)
        except Exception as exc:  # the bus is away: viewers redraw from the next snapshot
            log.warning("terminal_publish_failed", session=record.id, error=type(exc).__name__)

    def _gauge(self) -> None:
        m.SESSIONS.set(self.registry.live_count())

    # Workers (the LinkObserver side)

    def attached(self, link: WorkerLink, hello: dict[str, Any]) -> None:
        parsed = parse_announcement(hello.get("terminals"))
        if parsed is None:
            return
        programs, capacity, sessions = parsed
        self.hosts[link.worker_id] = TerminalHostLink(link, programs, capacity, sessions)
        for info in sessions:
            self._reattach(link, info)
        self._gauge()

    def _reattach(self, link: WorkerLink, info: dict[str, Any]) -> None:
        session_id = info.get("id")
        if not isinstance(session_id, str):
            return
        record = self.registry.get(session_id)
        if record is None:
            record = TerminalRecord.adopted(info, link.worker_id)
            if record is None:
                link.send({"type": WorkerFrame.TERM_CLOSE, "id": session_id})
                return
            self.registry.add(record)
            log.info("terminal_adopted", session=session_id, worker_id=link.worker_id)
        elif not record.live:  # already reported ended: it must not run on
            link.send({"type": WorkerFrame.TERM_CLOSE, "id": session_id})
            return
        record.worker_id = link.worker_id
        record.state = "running"
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        self._spawn(self._publish(record, EventType.TERM_STATE, self._state_data(record)))

    def state(self, link: WorkerLink, frame: dict[str, Any]) -> None:
        parsed = parse_announcement(frame.get("terminals"))
        host = self.hosts.get(link.worker_id)
        if parsed is None or host is None or host.link is not link:
            return
        host.programs, host.capacity, host.sessions = parsed

    async def frame(self, link: WorkerLink, frame: dict[str, Any]) -> None:
        session_id = frame.get("id")
        record = self.registry.get(session_id) if isinstance(session_id, str) else None
        if record is None or not record.live or record.worker_id != link.worker_id:
            return  # a session this link does not run (any more)
        kind = frame.get("type")
        if kind == WorkerFrame.TERM_OUTPUT:
            text = frame.get("data")
            if not isinstance(text, str):
                return
            data: dict[str, Any] = {"data": text}
            if frame.get("snapshot") is True:
                data["snapshot"] = True
                data["cols"], data["rows"] = record.cols, record.rows
            m.OUTPUT_BYTES.inc(len(text))
            await self._publish(record, EventType.TERM_OUTPUT, data)
        elif kind == WorkerFrame.TERM_STATE:
            with contextlib.suppress(ValidationFailed):
                record.cols, record.rows = check_size(frame.get("cols"), frame.get("rows"))
            record.state = "running"
            await self._publish(record, EventType.TERM_STATE, self._state_data(record))
            self._resolve(record.id, None)
        elif kind == WorkerFrame.TERM_EXITED:
            await self._ended(record, self._exit_data(frame))

    @staticmethod
    def _state_data(record: TerminalRecord) -> dict[str, Any]:
        return {
            "state": record.state,
            "program": record.program,
            "cols": record.cols,
            "rows": record.rows,
        }

    @staticmethod
    def _exit_data(frame: dict[str, Any]) -> dict[str, Any]:
        reason = frame.get("reason")
        known = {r.value for r in TermExitReason}
        data: dict[str, Any] = {"reason": reason if reason in known else TermExitReason.EXITED}
        for name in ("status", "signal"):
            value = frame.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                data[name] = value
        error = frame.get("error")
        if isinstance(error, dict):
            data["error"] = {
                "code": str(error.get("code", ErrorCode.INTERNAL))[:64],
                "detail": str(error.get("detail", ""))[:300],
            }
        return data

    def _resolve(self, session_id: str, exit_data: dict[str, Any] | None) -> None:
        future = self._opening.get(session_id)
        if future is not None and not future.done():
            future.set_result(exit_data)

    async def _ended(self, record: TerminalRecord, data: dict[str, Any]) -> None:
        if not record.live:
            return
        record.state = "exited"
        record.exit = data
        record.ended_at = now_ms()
        timer = self._timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        m.EXITS.labels(str(data["reason"])).inc()
        self._gauge()
        self._resolve(record.id, data)
        log.info("terminal_ended", session=record.id, **data)
        self._timers[record.id] = asyncio.get_running_loop().call_later(
            self.settings.terminal_keep_ended_s, self._forget, record.id
        )
        await self._publish(record, EventType.TERM_EXITED, data)

    def _forget(self, session_id: str) -> None:
        self._timers.pop(session_id, None)
        record = self.registry.get(session_id)
        if record is not None and not record.live:
            self.registry.forget(session_id)

    async def detached(self, link: WorkerLink) -> None:
        host = self.hosts.get(link.worker_id)
        if host is not None and host.link is link:
            del self.hosts[link.worker_id]
        loop = asyncio.get_running_loop()
        for record in self.registry.live_on(link.worker_id):
            if record.state == "starting":
                await self._ended(
                    record,
                    {
                        "reason": TermExitReason.FAILED,
                        "error": {"code": ErrorCode.UNAVAILABLE, "detail": "the worker went away"},
                    },
                )
                continue
            record.state = "detached"
            await self._publish(record, EventType.TERM_STATE, self._state_data(record))
            self._timers[record.id] = loop.call_later(
                self.settings.terminal_detach_grace_s + DETACH_MARGIN_S,
                self._lost,
                record.id,
                link.worker_id,
            )

    def _lost(self, session_id: str, worker_id: str) -> None:
        self._timers.pop(session_id, None)
        record = self.registry.get(session_id)
        if record is not None and record.state == "detached" and record.worker_id == worker_id:
            self._spawn(self._ended(record, {"reason": TermExitReason.LOST}))

    # Clients

    def programs(self) -> list[str]:
        """The programs some connected worker offers now."""
        return sorted({p for host in self.hosts.values() if host.usable for p in host.programs})

    def visible(self, who: Principal) -> list[tuple[TerminalRecord, Access]]:
        found = []
        for record in self.registry.records.values():
            granted = access(who, record)
            if granted is not None:
                found.append((record, granted))
        found.sort(key=lambda item: item[0].created_at)
        return found

    def lookup(self, who: Principal, session_id: str) -> tuple[TerminalRecord, Access]:
        """The session and what ``who`` may do with it; NotFound when it may not see it."""
        record = self.registry.get(session_id)
        granted = access(who, record) if record is not None else None
        if record is None or granted is None:
            raise NotFound("terminal not found")
        return record, granted

    def can_view(self, who: Principal, session_id: str) -> bool:
        record = self.registry.get(session_id)
        return record is not None and access(who, record) is not None

    def _link_of(self, record: TerminalRecord) -> WorkerLink:
        host = self.hosts.get(record.worker_id)
        if record.state == "detached" or host is None or host.link.closed:
            raise Unavailable("the terminal's worker is away; try again when it is back")
        return host.link

    async def open(
        self,
        who: Principal,
        *,
        program: str,
        cols: int,
        rows: int,
        chat_id: str | None = None,
        cwd: str | None = None,
    ) -> TerminalRecord:
        """Start ``program`` on a worker that offers it; see the module docstring."""
        try:
            record = await self._open(who, program, cols, rows, chat_id, cwd)
        except RelaylineError as exc:
            m.OPENS.labels(exc.code).inc()
            raise
        m.OPENS.labels("ok").inc()
        return record

    async def _open(
        self,
        who: Principal,
        program: str,
        cols: int,
        rows: int,
        chat_id: str | None,
        cwd: str | None,
    ) -> TerminalRecord:
        tenant_id = who.require_tenant()
        if not may_open(who, chat_id):
            raise Forbidden("this credential may not open terminals")
        cols, rows = check_size(cols, rows)
        hosts = [h for h in self.hosts.values() if h.usable]
        if not hosts:
            raise Unavailable(
                "no connected worker runs terminals", code=ErrorCode.NO_TERMINAL_WORKER
            )
        offering = [h for h in hosts if program in h.programs]
        if not offering:
            raise ValidationFailed(
                "no connected worker offers this program", code=ErrorCode.UNKNOWN_PROGRAM
            )
        limit = self.settings.terminal_max_per_tenant
        if self.registry.live_of_tenant(tenant_id) >= limit:
            raise RateLimited(
                f"at most {limit} terminals per tenant", code=ErrorCode.TOO_MANY_TERMINALS
            )
        load = {h.link.worker_id: len(self.registry.live_on(h.link.worker_id)) for h in offering}
        with_room = [h for h in offering if load[h.link.worker_id] < h.capacity]
        if not with_room:
            raise RateLimited(
                "every worker that offers this program is full", code=ErrorCode.TOO_MANY_TERMINALS
            )
        host = min(with_room, key=lambda h: load[h.link.worker_id] / max(h.capacity, 1))
        record = TerminalRecord(
            id=new_id(),
            tenant_id=tenant_id,
            program=program,
            cols=cols,
            rows=rows,
            worker_id=host.link.worker_id,
            chat_id=chat_id,
            opener=who.rate_key,
        )
        self.registry.add(record)
        self._gauge()
        frame: dict[str, Any] = {
            "type": WorkerFrame.TERM_OPEN,
            "id": record.id,
            "program": program,
            "cols": cols,
            "rows": rows,
            "meta": record.meta(),
        }
        if cwd:
            frame["cwd"] = cwd
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._opening[record.id] = future
        host.link.send(frame)
        try:
            async with asyncio.timeout(self.settings.terminal_open_timeout_s):
                exit_data = await future
        except TimeoutError:
            host.link.send({"type": WorkerFrame.TERM_CLOSE, "id": record.id})
            await self._ended(
                record,
                {
                    "reason": TermExitReason.FAILED,
                    "error": {"code": ErrorCode.UNAVAILABLE, "detail": "no answer from the worker"},
                },
            )
            raise Unavailable("the worker did not start the terminal in time") from None
        finally:
            self._opening.pop(record.id, None)
        if exit_data is not None:
            raise _refusal(exit_data.get("error"))
        log.info("terminal_opened", session=record.id, program=program, worker_id=record.worker_id)
        return record

    def input(self, who: Principal, session_id: str, data: object) -> None:
        try:
            record = self._live_writable(who, session_id)
            check_input(data)
            link = self._link_of(record)
        except RelaylineError as exc:
            m.INPUT_REFUSED.labels(exc.code).inc()
            raise
        link.send({"type": WorkerFrame.TERM_INPUT, "id": session_id, "data": data})

    def resize(self, who: Principal, session_id: str, cols: object, rows: object) -> None:
        try:
            record = self._live_writable(who, session_id)
            size = check_size(cols, rows)
            link = self._link_of(record)
        except RelaylineError as exc:
            m.INPUT_REFUSED.labels(exc.code).inc()
            raise
        link.send(
            {"type": WorkerFrame.TERM_RESIZE, "id": session_id, "cols": size[0], "rows": size[1]}
        )

    def _live_writable(self, who: Principal, session_id: str) -> TerminalRecord:
        record, granted = self.lookup(who, session_id)
        if granted != "write":
            raise Forbidden("this viewer may only watch this terminal", code=ErrorCode.READ_ONLY)
        if not record.live:
            raise Conflict("this terminal has ended", code=ErrorCode.TERMINAL_EXITED)
        return record

    def redraw(self, session_id: str) -> None:
        """Have the worker send the screen as it is now (``term.output`` with ``snapshot``);
        requests within a few milliseconds share one snapshot."""
        if session_id in self._redraws:
            return
        self._redraws[session_id] = asyncio.get_running_loop().call_later(
            REDRAW_COALESCE_S, self._send_redraw, session_id
        )

    def _send_redraw(self, session_id: str) -> None:
        self._redraws.pop(session_id, None)
        record = self.registry.get(session_id)
        host = self.hosts.get(record.worker_id) if record is not None else None
        if record is not None and record.state == "running" and host is not None:
            host.link.send({"type": WorkerFrame.TERM_REDRAW, "id": session_id})

    async def close(self, who: Principal, session_id: str) -> TerminalRecord:
        """End the session (idempotent: an ended one is returned as it is)."""
        record, granted = self.lookup(who, session_id)
        if granted != "write":
            raise Forbidden("this viewer may only watch this terminal", code=ErrorCode.READ_ONLY)
        if not record.live:
            return record
        host = self.hosts.get(record.worker_id)
        if record.state == "detached" or host is None:
            # Its worker is away: reported ended now, and closed if it comes back with it.
            await self._ended(record, {"reason": TermExitReason.TERMINATED})
        else:
            host.link.send({"type": WorkerFrame.TERM_CLOSE, "id": session_id})
        return record
