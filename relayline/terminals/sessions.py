"""The terminal sessions this instance's workers run, and those workers (the link observer).

This side of the relay talks to worker links: it learns each host's programs and room from
``hello`` and ``state``, publishes the ``term.*`` frames of a session on ``term:<id>`` (on the
bus, so every instance's viewers get them), keeps each session's record (here, and in the
directory for the other instances), and ends sessions:

- a frame about a session from a link that does not run it, or about a session already
  reported ended, is ignored; ``term.exited`` is published once per session;
- a worker that disconnects leaves its sessions ``detached``; when it comes back with them
  (its ``hello`` lists them) they are ``running`` again, else after
  ``RELAYLINE_TERMINAL_DETACH_GRACE_S`` plus :data:`DETACH_MARGIN_S` they end as ``lost``;
- a relay that restarted adopts the sessions its workers list, owner and all (``meta``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

from relayline.bus.base import Bus
from relayline.config import Settings
from relayline.envelope import EncodedData, now_ms
from relayline.errors import ValidationFailed
from relayline.observability import terminal_metrics as m
from relayline.protocol import term_output
from relayline.protocol.limits import TERM_MAX_SIZE, TERM_MIN_SIZE
from relayline.protocol.names import ErrorCode, EventType, TermExitReason, WorkerFrame
from relayline.tasks import cancel_all
from relayline.terminals.directory import LIVE_TTL_S, REFRESH_S, TerminalDirectory
from relayline.terminals.hosts import TerminalHostLink, parse_announcement
from relayline.terminals.registry import TerminalRecord, TerminalRegistry
from relayline.turns.worker_link import WorkerLink

log = structlog.get_logger("relayline.terminals")

DETACH_MARGIN_S = 10.0  # the worker's own detach grace ends first; then the relay gives up


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


def exit_data(frame: dict[str, Any]) -> dict[str, Any]:
    """``term.exited``'s event data from a worker's frame, checked."""
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


def state_data(record: TerminalRecord) -> dict[str, Any]:
    return {
        "state": record.state,
        "program": record.program,
        "cols": record.cols,
        "rows": record.rows,
    }


class LocalSessions:
    """Sessions on this instance's workers; the workers' link observer."""

    frame_types: frozenset[str] = frozenset(
        {WorkerFrame.TERM_OUTPUT, WorkerFrame.TERM_STATE, WorkerFrame.TERM_EXITED}
    )
    # Plain output is read before it is decoded: see raw_frame.
    raw_prefix: str | None = term_output.PREFIX

    def __init__(
        self, settings: Settings, bus: Bus, directory: TerminalDirectory, instance_id: str
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.directory = directory
        self.instance_id = instance_id
        self.registry = TerminalRegistry()
        self.hosts: dict[str, TerminalHostLink] = {}
        # Every program some worker offered since this process started: one that no connected
        # worker offers now is then "no worker hosts it" (503), not "unknown" (422).
        self.programs_seen: set[str] = set()
        self.opening: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.directory.shared:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    async def stop(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = [*self._tasks, *([self._refresher] if self._refresher else [])]
        await cancel_all(tasks)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish(self, record: TerminalRecord, kind: str, data: dict[str, Any]) -> None:
        try:
            await self.bus.publish(record.topic, kind, data)
        except Exception as exc:  # the bus is away: viewers redraw from the next snapshot
            log.warning("terminal_publish_failed", session=record.id, error=type(exc).__name__)

    def changed(self, record: TerminalRecord) -> None:
        """A record changed: the gauge, and the other instances' view of it."""
        m.SESSIONS.set(self.registry.live_count())
        if self.directory.shared:
            ttl = LIVE_TTL_S if record.live else self.settings.terminal_keep_ended_s + LIVE_TTL_S
            self.spawn(self.directory.put(record, ttl))

    async def stored(self, record: TerminalRecord) -> None:
        """As :meth:`changed`, waiting until the other instances can find the record."""
        m.SESSIONS.set(self.registry.live_count())
        if self.directory.shared:
            await self.directory.put(record, LIVE_TTL_S)

    def host_reports(self) -> list[dict[str, Any]]:
        return [
            {
                "worker_id": worker_id,
                "programs": sorted(host.programs),
                "capacity": host.capacity,
                "load": len(self.registry.live_on(worker_id)),
            }
            for worker_id, host in self.hosts.items()
            if host.usable
        ]

    async def _refresh(self) -> None:
        while True:
            await self.directory.report_hosts(self.instance_id, self.host_reports())
            for record in list(self.registry.records.values()):
                if record.live:
                    await self.directory.put(record, LIVE_TTL_S)
            await asyncio.sleep(REFRESH_S)

    def _report_hosts(self) -> None:
        if self.directory.shared:
            self.spawn(self.directory.report_hosts(self.instance_id, self.host_reports()))

    def link_of(self, record: TerminalRecord) -> WorkerLink | None:
        host = self.hosts.get(record.worker_id)
        if record.state == "detached" or host is None or host.link.closed:
            return None
        return host.link

    # The LinkObserver side

    def attached(self, link: WorkerLink, hello: dict[str, Any]) -> None:
        parsed = parse_announcement(hello.get("terminals"))
        if parsed is None:
            return
        programs, capacity, sessions = parsed
        self.programs_seen |= programs
        self.hosts[link.worker_id] = TerminalHostLink(link, programs, capacity, sessions)
        for info in sessions:
            self._reattach(link, info)
        self._report_hosts()

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
        record.instance = self.instance_id
        record.state = "running"
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        self.changed(record)
        self.spawn(self.publish(record, EventType.TERM_STATE, state_data(record)))

    def state(self, link: WorkerLink, frame: dict[str, Any]) -> None:
        parsed = parse_announcement(frame.get("terminals"))
        host = self.hosts.get(link.worker_id)
        if parsed is None or host is None or host.link is not link:
            return
        host.programs, host.capacity, host.sessions = parsed
        self.programs_seen |= host.programs

    def _run_by(self, link: WorkerLink, session_id: object) -> TerminalRecord | None:
        """The live session ``session_id`` when ``link`` runs it; None for one it does not
        run (any more), whose frames are ignored."""
        record = self.registry.get(session_id) if isinstance(session_id, str) else None
        if record is None or not record.live or record.worker_id != link.worker_id:
            return None
        return record

    async def raw_frame(self, link: WorkerLink, text: str) -> bool:
        """A plain ``term.output`` read without a full decode (:mod:`relayline.protocol.
        term_output`): its text goes into the event as the worker encoded it."""
        parsed = term_output.parse(text)
        if parsed is None:
            return False
        session_id, data, literal = parsed
        record = self._run_by(link, session_id)
        if record is not None:
            m.OUTPUT_BYTES.inc(len(data))
            encoded = EncodedData({"data": data}, '{"data":' + literal + "}")
            await self.publish(record, EventType.TERM_OUTPUT, encoded)
        return True

    async def frame(self, link: WorkerLink, frame: dict[str, Any]) -> None:
        record = self._run_by(link, frame.get("id"))
        if record is None:
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
            await self.publish(record, EventType.TERM_OUTPUT, data)
        elif kind == WorkerFrame.TERM_STATE:
            with contextlib.suppress(ValidationFailed):
                record.cols, record.rows = check_size(frame.get("cols"), frame.get("rows"))
            record.state = "running"
            self.changed(record)
            await self.publish(record, EventType.TERM_STATE, state_data(record))
            self._resolve(record.id, None)
        elif kind == WorkerFrame.TERM_EXITED:
            await self.ended(record, exit_data(frame))

    def _resolve(self, session_id: str, data: dict[str, Any] | None) -> None:
        future = self.opening.get(session_id)
        if future is not None and not future.done():
            future.set_result(data)

    async def ended(self, record: TerminalRecord, data: dict[str, Any]) -> None:
        """Report the session ended (once), keep it listed for a while."""
        if not record.live:
            return
        record.state = "exited"
        record.exit = data
        record.ended_at = now_ms()
        timer = self._timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        m.EXITS.labels(str(data["reason"])).inc()
        self.changed(record)
        self._resolve(record.id, data)
        log.info("terminal_ended", session=record.id, **data)
        self._timers[record.id] = asyncio.get_running_loop().call_later(
            self.settings.terminal_keep_ended_s, self._forget, record.id
        )
        await self.publish(record, EventType.TERM_EXITED, data)

    def _forget(self, session_id: str) -> None:
        self._timers.pop(session_id, None)
        record = self.registry.get(session_id)
        if record is not None and not record.live:
            self.registry.forget(session_id)

    async def detached(self, link: WorkerLink) -> None:
        host = self.hosts.get(link.worker_id)
        if host is not None and host.link is link:
            del self.hosts[link.worker_id]
            self._report_hosts()
        loop = asyncio.get_running_loop()
        for record in self.registry.live_on(link.worker_id):
            if record.state == "starting":
                error = {"code": ErrorCode.UNAVAILABLE, "detail": "the worker went away"}
                await self.ended(record, {"reason": TermExitReason.FAILED, "error": error})
                continue
            record.state = "detached"
            self.changed(record)
            await self.publish(record, EventType.TERM_STATE, state_data(record))
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
            self.spawn(self._declare_lost(record))

    async def _declare_lost(self, record: TerminalRecord) -> None:
        """The worker did not come back here with the session. If it went to another
        instance, which adopted the session, the session lives on there: forget it here."""
        if self.directory.shared:
            current = await self.directory.get(record.id)
            if current is not None and current.live and current.instance != self.instance_id:
                self.registry.forget(record.id)
                m.SESSIONS.set(self.registry.live_count())
                return
        await self.ended(record, {"reason": TermExitReason.LOST})

    def holds(self, session_id: str) -> TerminalRecord | None:
        """The session's record when this instance runs it now (not while it is detached)."""
        record = self.registry.get(session_id)
        return record if record is not None and record.state != "detached" else None
