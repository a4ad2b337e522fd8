"""Terminal sessions for clients: open one on a worker that offers the program, list and look
them up, route typing, resizes, redraws and endings to the worker that runs the session.

Guarantees:

- ``open`` returns once the worker said the program runs (its first ``term.state``), or
  raises the refusal with a stable code: ``no_terminal_worker`` (503, no connected worker runs
  terminals, or none offers this program now though one did before), ``unknown_program``
  (422, no worker ever offered it), ``too_many_terminals`` (429, the
  tenant's limit or every offering worker full), ``cwd_not_allowed`` (422), ``unavailable``
  (503, the worker did not answer within ``RELAYLINE_TERMINAL_OPEN_TIMEOUT_S``).
- Every instance answers for every session: a session another instance's worker runs is found
  in the directory, and its ops are broadcast to that instance (best effort, at most once, like
  the turns' cancel: a lost one is the client's to retry). Its output reaches every instance's
  viewers through the bus.
- Input is checked here, at the edge (write grant, at most ``TERM_INPUT_MAX_BYTES`` of valid
  UTF-8), and again by the worker. Who may do what: :mod:`.access`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from relayline.auth import Principal
from relayline.bus.base import Bus
from relayline.config import Settings
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
from relayline.protocol.limits import TERM_INPUT_MAX_BYTES
from relayline.protocol.names import ErrorCode, TermExitReason, WorkerFrame
from relayline.terminals.access import Access, access, may_open
from relayline.terminals.directory import LocalDirectory, TerminalDirectory
from relayline.terminals.registry import TerminalRecord
from relayline.terminals.remote import Broadcast, OtherInstances
from relayline.terminals.sessions import LocalSessions, check_size

log = structlog.get_logger("relayline.terminals")

REDRAW_COALESCE_S = 0.02  # viewers that subscribe together share one snapshot


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


def _read_only() -> Forbidden:
    return Forbidden("this viewer may only watch this terminal", code=ErrorCode.READ_ONLY)


class TerminalService:
    """See the module docstring. One per relay process; :attr:`local` observes its workers."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        *,
        directory: TerminalDirectory | None = None,
        instance_id: str | None = None,
        broadcast: Broadcast | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.directory = directory or LocalDirectory()
        self.instance_id = instance_id or new_id()
        self.local = LocalSessions(settings, bus, self.directory, self.instance_id)
        self.remote = OtherInstances(self.local, bus, broadcast)
        self._redraws: dict[str, asyncio.TimerHandle] = {}

    def start(self) -> None:
        self.local.start()

    async def stop(self) -> None:
        for handle in self._redraws.values():
            handle.cancel()
        self._redraws.clear()
        await self.local.stop()

    # Finding sessions

    async def find(self, session_id: str) -> TerminalRecord | None:
        """The session's record: this instance's while it runs it, else the directory's (a
        session detached here may have been adopted by another instance), else this one's."""
        record = self.local.holds(session_id)
        if record is None and self.directory.shared:
            record = await self.directory.get(session_id)
        return record or self.local.registry.get(session_id)

    async def lookup(self, who: Principal, session_id: str) -> tuple[TerminalRecord, Access]:
        """The session and what ``who`` may do with it; NotFound when it may not see it."""
        record = await self.find(session_id)
        granted = access(who, record) if record is not None else None
        if record is None or granted is None:
            raise NotFound("terminal not found")
        return record, granted

    async def can_view(self, who: Principal, session_id: str) -> bool:
        record = await self.find(session_id)
        return record is not None and access(who, record) is not None

    async def visible(self, who: Principal) -> list[tuple[TerminalRecord, Access]]:
        records: dict[str, TerminalRecord] = {}
        if self.directory.shared and who.tenant_id is not None:
            records = {r.id: r for r in await self.directory.of_tenant(who.tenant_id)}
        for record in self.local.registry.records.values():
            # This instance's word, unless it lost the session's worker and another has it.
            if record.state != "detached" or record.id not in records:
                records[record.id] = record
        found = [(r, a) for r in records.values() if (a := access(who, r)) is not None]
        found.sort(key=lambda item: item[0].created_at)
        return found

    async def _live_of_tenant(self, tenant_id: str) -> int:
        live = {
            r.id
            for r in self.local.registry.records.values()
            if r.live and r.tenant_id == tenant_id
        }
        if self.directory.shared:
            live |= {r.id for r in await self.directory.of_tenant(tenant_id) if r.live}
        return len(live)

    async def programs(self) -> list[str]:
        """The programs some connected worker (of any instance) offers now."""
        names = {p for host in self.local.hosts.values() if host.usable for p in host.programs}
        for report in await self.directory.hosts_elsewhere(self.instance_id):
            names.update(p for p in report.get("programs", []) if isinstance(p, str))
        return sorted(names)

    # Opening

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
        log.info("terminal_opened", session=record.id, program=program, worker_id=record.worker_id)
        return record

    async def _hosts(self) -> list[dict[str, Any]]:
        """Every usable terminal host, this instance's first: worker_id, programs, capacity,
        load and instance."""
        here = [{**h, "instance": self.instance_id} for h in self.local.host_reports()]
        return here + await self.directory.hosts_elsewhere(self.instance_id)

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
        hosts = await self._hosts()
        if not hosts:
            raise Unavailable(
                "no connected worker runs terminals", code=ErrorCode.NO_TERMINAL_WORKER
            )
        offering = [h for h in hosts if program in h.get("programs", ())]
        if not offering and program in self.local.programs_seen:
            raise Unavailable(
                "no connected worker offers this program now", code=ErrorCode.NO_TERMINAL_WORKER
            )
        if not offering:
            raise ValidationFailed("no worker offers this program", code=ErrorCode.UNKNOWN_PROGRAM)
        limit = self.settings.terminal_max_per_tenant
        if await self._live_of_tenant(tenant_id) >= limit:
            raise RateLimited(
                f"at most {limit} terminals per tenant", code=ErrorCode.TOO_MANY_TERMINALS
            )
        with_room = [h for h in offering if h["load"] < h["capacity"]]
        if not with_room:
            raise RateLimited(
                "every worker that offers this program is full", code=ErrorCode.TOO_MANY_TERMINALS
            )
        # The least loaded; this instance's own worker on a tie (no hop through Redis).
        host = min(with_room, key=lambda h: h["load"] / max(h["capacity"], 1))
        record = TerminalRecord(
            id=new_id(),
            tenant_id=tenant_id,
            program=program,
            cols=cols,
            rows=rows,
            worker_id=str(host["worker_id"]),
            chat_id=chat_id,
            opener=who.rate_key,
            instance=str(host["instance"]),
        )
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
        if record.instance == self.instance_id:
            outcome = await self._open_here(record, frame)
        else:
            timeout = self.settings.terminal_open_timeout_s
            outcome = await self.remote.open(record, frame, timeout)
        if outcome is not None:
            raise _refusal(outcome.get("error"))
        return record

    async def _open_here(
        self, record: TerminalRecord, frame: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Start it on this instance's worker: None once running, else term.exited's data."""
        host = self.local.hosts.get(record.worker_id)
        if host is None or not host.usable:
            raise Unavailable("the terminal's worker went away; try again")
        self.local.registry.add(record)
        self.local.changed(record)
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self.local.opening[record.id] = future
        host.link.send(frame)
        try:
            async with asyncio.timeout(self.settings.terminal_open_timeout_s):
                return await future
        except TimeoutError:
            host.link.send({"type": WorkerFrame.TERM_CLOSE, "id": record.id})
            error = {"code": ErrorCode.UNAVAILABLE, "detail": "no answer from the worker"}
            await self.local.ended(record, {"reason": TermExitReason.FAILED, "error": error})
            raise Unavailable("the worker did not start the terminal in time") from None
        finally:
            self.local.opening.pop(record.id, None)

    # Typing, resizing, redrawing, ending

    async def _live_writable(self, who: Principal, session_id: str) -> TerminalRecord:
        record, granted = await self.lookup(who, session_id)
        if granted != "write":
            raise _read_only()
        if not record.live:
            raise Conflict("this terminal has ended", code=ErrorCode.TERMINAL_EXITED)
        if record.state == "detached":
            raise Unavailable("the terminal's worker is away; try again when it is back")
        return record

    async def _deliver(self, record: TerminalRecord, frame: dict[str, Any]) -> None:
        """Send ``frame`` to the worker that runs ``record``, wherever it is connected."""
        if record.instance in (None, self.instance_id):
            link = self.local.link_of(record)
            if link is None:
                raise Unavailable("the terminal's worker is away; try again when it is back")
            link.send(frame)
        else:
            await self.remote.deliver(record.id, frame)

    async def input(self, who: Principal, session_id: str, data: object) -> None:
        try:
            record = await self._live_writable(who, session_id)
            check_input(data)
            await self._deliver(
                record, {"type": WorkerFrame.TERM_INPUT, "id": session_id, "data": data}
            )
        except RelaylineError as exc:
            m.INPUT_REFUSED.labels(exc.code).inc()
            raise

    async def resize(self, who: Principal, session_id: str, cols: object, rows: object) -> None:
        try:
            record = await self._live_writable(who, session_id)
            size = check_size(cols, rows)
            await self._deliver(
                record,
                {
                    "type": WorkerFrame.TERM_RESIZE,
                    "id": session_id,
                    "cols": size[0],
                    "rows": size[1],
                },
            )
        except RelaylineError as exc:
            m.INPUT_REFUSED.labels(exc.code).inc()
            raise

    def redraw(self, session_id: str) -> None:
        """Have the worker send the screen as it is now (``term.output`` with ``snapshot``);
        requests within a few milliseconds share one snapshot."""
        if session_id in self._redraws:
            return
        self._redraws[session_id] = asyncio.get_running_loop().call_later(
            REDRAW_COALESCE_S, self._send_redraw, session_id
        )

    def topic_missed(self, topic: str) -> None:
        """The bus lost events of ``topic``: a terminal's viewers need the screen again."""
        if topic.startswith("term:"):
            self.redraw(topic[5:])

    def _send_redraw(self, session_id: str) -> None:
        self._redraws.pop(session_id, None)
        frame = {"type": WorkerFrame.TERM_REDRAW, "id": session_id}
        record = self.local.holds(session_id)
        if record is None:
            if self.directory.shared:
                self.local.spawn(self.remote.deliver(session_id, frame))
            return
        link = self.local.link_of(record)
        if record.state == "running" and link is not None:
            link.send(frame)

    async def close(self, who: Principal, session_id: str) -> TerminalRecord:
        """End the session (idempotent: an ended one is returned as it is)."""
        record, granted = await self.lookup(who, session_id)
        if granted != "write":
            raise _read_only()
        if record.live:
            if record.instance in (None, self.instance_id):
                await self._close_here(record)
            else:
                await self.remote.close(session_id)
        return record

    async def _close_here(self, record: TerminalRecord) -> None:
        link = self.local.link_of(record)
        if link is None:
            # Its worker is away: reported ended now, and closed if it comes back with it.
            await self.local.ended(record, {"reason": TermExitReason.TERMINATED})
        else:
            link.send({"type": WorkerFrame.TERM_CLOSE, "id": record.id})

    # Other instances

    async def on_control(self, message: dict[str, Any]) -> None:
        """A broadcast of another instance about a session this one may hold."""
        await self.remote.on_control(message, self._close_here)
