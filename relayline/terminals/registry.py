"""The terminal sessions this relay knows: where each runs, whose it is, how it is now.

Records live in memory on the instance whose worker runs the session (the holder, which also
shares them through :mod:`.directory` when there are several instances). A relay that restarts
learns the sessions again from its workers: each worker lists its running sessions in its
``hello`` with the ``meta`` the relay gave at ``term.open`` (tenant, chat, opener), so the
owner of a session survives a relay restart without a database row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from relayline.envelope import now_ms

State = Literal["starting", "running", "detached", "exited"]


@dataclass(slots=True)
class TerminalRecord:
    id: str
    tenant_id: str
    program: str
    cols: int
    rows: int
    worker_id: str
    chat_id: str | None = None
    opener: str | None = None  # the rate key of the credential that opened it
    state: State = "starting"
    created_at: int = field(default_factory=now_ms)
    ended_at: int | None = None
    exit: dict[str, Any] | None = None  # term.exited's data once it ended
    instance: str | None = None  # the relay instance whose worker runs it

    @property
    def topic(self) -> str:
        return f"term:{self.id}"

    @property
    def live(self) -> bool:
        return self.state != "exited"

    def meta(self) -> dict[str, Any]:
        """What the worker keeps for the relay (returned in its announcement)."""
        return {
            "tenant_id": self.tenant_id,
            "chat_id": self.chat_id,
            "opener": self.opener,
            "created_at": self.created_at,
        }

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: str | bytes) -> TerminalRecord | None:
        """A record stored by :meth:`as_json` (by this or another instance), or None."""
        try:
            value = json.loads(raw)
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in value.items() if k in names})
        except (ValueError, TypeError, AttributeError):
            return None

    @classmethod
    def adopted(cls, info: dict[str, Any], worker_id: str) -> TerminalRecord | None:
        """A record rebuilt from a worker's announcement (after a relay restart), or None
        when the announcement lacks what the relay needs."""
        meta = info.get("meta")
        if not isinstance(meta, dict):
            return None
        tenant_id, chat_id, opener = meta.get("tenant_id"), meta.get("chat_id"), meta.get("opener")
        created_at = meta.get("created_at")
        session_id, program = info.get("id"), info.get("program")
        cols, rows = info.get("cols"), info.get("rows")
        if not (
            isinstance(session_id, str)
            and isinstance(tenant_id, str)
            and isinstance(program, str)
            and isinstance(cols, int)
            and isinstance(rows, int)
        ):
            return None
        return cls(
            id=session_id,
            tenant_id=tenant_id,
            program=program,
            cols=cols,
            rows=rows,
            worker_id=worker_id,
            chat_id=chat_id if isinstance(chat_id, str) else None,
            opener=opener if isinstance(opener, str) else None,
            state="running",
            created_at=created_at if isinstance(created_at, int) else now_ms(),
        )


class TerminalRegistry:
    """Every session of this instance, live or recently ended, by id."""

    def __init__(self) -> None:
        self.records: dict[str, TerminalRecord] = {}

    def add(self, record: TerminalRecord) -> None:
        self.records[record.id] = record

    def get(self, session_id: str) -> TerminalRecord | None:
        return self.records.get(session_id)

    def forget(self, session_id: str) -> None:
        self.records.pop(session_id, None)

    def live_of_tenant(self, tenant_id: str) -> int:
        return sum(1 for r in self.records.values() if r.live and r.tenant_id == tenant_id)

    def live_on(self, worker_id: str) -> list[TerminalRecord]:
        return [r for r in self.records.values() if r.live and r.worker_id == worker_id]

    def live_count(self) -> int:
        return sum(1 for r in self.records.values() if r.live)
