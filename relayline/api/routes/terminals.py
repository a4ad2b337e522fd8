"""Terminal sessions: open one of a worker's allowlisted programs in a PTY, list, look, end.

Typing and resizing happen on the WebSocket (``term.input``, ``term.resize`` on
``term:<id>``); output arrives there too. Who may do what: :mod:`relayline.terminals.access`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from relayline import session_tokens
from relayline.api import schemas as s
from relayline.api.deps import State, TenantTerminals
from relayline.api.params import IdPath
from relayline.auth import Principal
from relayline.errors import NotFound
from relayline.terminals.access import Access, may_open
from relayline.terminals.registry import TerminalRecord

router = APIRouter(prefix="/v1/terminals", tags=["terminals"])
MAX_TOKEN_TERMINALS = 50


def _out(record: TerminalRecord, granted: Access) -> s.TerminalOut:
    return s.TerminalOut(
        id=record.id,
        topic=record.topic,
        program=record.program,
        chat_id=record.chat_id,
        state=record.state,
        cols=record.cols,
        rows=record.rows,
        worker_id=record.worker_id,
        created_at=record.created_at,
        ended_at=record.ended_at,
        exit=s.TerminalExitOut.model_validate(record.exit) if record.exit else None,
        writable=granted == "write" and record.live,
    )


def _token_with(who: Principal, terminal_id: str, st: State) -> str | None:
    """A session opener's token, minted again to list the new terminal too (it stays
    visible to the opener whatever becomes of the token it used)."""
    if who.kind != "session" or who.tenant_id is None:
        return None
    now = int(time.time())
    token, _ = session_tokens.mint(
        st.settings.secret_key.get_secret_value(),
        who.tenant_id,
        sorted(who.chat_ids or ()),
        max(1, (who.expires_at or now) - now),
        now,
        can_create_chats=who.can_create_chats,
        can_read_analytics=who.can_read_analytics,
        terminals=who.terminals,
        # Ids are ULIDs, in time order: the token keeps its newest ones.
        terminal_ids=sorted({*who.terminal_ids, terminal_id})[-MAX_TOKEN_TERMINALS:],
        can_use_completions=who.can_use_completions,
    )
    return token


@router.post("", status_code=201)
async def open_terminal(body: s.TerminalIn, who: TenantTerminals, st: State) -> s.NewTerminalOut:
    """Start a program on a worker that offers it. 503 ``no_terminal_worker`` when no
    connected worker runs terminals, 422 ``unknown_program`` when none offers this one, 429
    ``too_many_terminals`` past the tenant's (or the workers') limit, 422 ``cwd_not_allowed``."""
    # A chat that is not the caller's is answered as missing, like every chat route.
    if body.chat_id is not None and (
        not who.allows_chat(body.chat_id)
        or await st.acl.chat_owner(body.chat_id) != who.require_tenant()
    ):
        raise NotFound("chat not found")
    record = await st.terminals.open(
        who,
        program=body.program,
        cols=body.cols,
        rows=body.rows,
        chat_id=body.chat_id,
        cwd=body.cwd,
    )
    out = _out(record, "write")
    epoch, seq = await st.bus.position(record.topic)
    return s.NewTerminalOut(
        **out.model_dump(), epoch=epoch, seq=seq, session_token=_token_with(who, record.id, st)
    )


@router.get("")
async def list_terminals(who: TenantTerminals, st: State) -> s.TerminalList:
    """The sessions this caller may see (running and recently ended), and the programs the
    connected workers offer (to a caller that may open terminals; else none)."""
    return s.TerminalList(
        items=[_out(record, granted) for record, granted in await st.terminals.visible(who)],
        programs=await st.terminals.programs() if may_open(who, None) else [],
    )


@router.get("/{terminal_id}")
async def get_terminal(
    terminal_id: IdPath, who: TenantTerminals, st: State
) -> s.TerminalSnapshotOut:
    """The session as it is, and its topic's position: subscribing with ``epoch`` and
    ``after_seq`` = ``seq`` replays nothing older (the screen comes on the topic anyway)."""
    out = _out(*await st.terminals.lookup(who, terminal_id))
    epoch, seq = await st.bus.position(out.topic)
    return s.TerminalSnapshotOut(**out.model_dump(), epoch=epoch, seq=seq)


@router.delete("/{terminal_id}", status_code=202)
async def close_terminal(terminal_id: IdPath, who: TenantTerminals, st: State) -> s.TerminalOut:
    """End the session: SIGHUP and SIGTERM to its processes, SIGKILL after the worker's grace;
    ``term.exited`` follows on its topic. An ended session is answered as it is."""
    record = await st.terminals.close(who, terminal_id)
    return _out(record, "write")
