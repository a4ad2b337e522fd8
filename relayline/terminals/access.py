"""Who may watch a terminal session and who may type into it.

- the admin key: every session, read and write (an operator's tool);
- a tenant key: its tenant's sessions, read and write, when it holds the ``terminals`` scope
  (a key created without scopes holds every scope);
- a session token minted with ``terminals``: the sessions of its tenant attached to one of its
  chats, listed in its ``terminal_ids``, or opened with this very token; ``"read"`` watches
  them, ``"write"`` also types, resizes and ends them.

Anything else sees nothing: a session it may not watch is answered as not found.
"""

from __future__ import annotations

from typing import Literal

from relayline.auth import Principal
from relayline.terminals.registry import TerminalRecord

Access = Literal["read", "write"]
SCOPE = "terminals"


def key_may_use_terminals(who: Principal) -> bool:
    return who.kind == "tenant" and (not who.scopes or SCOPE in who.scopes)


def may_open(who: Principal, chat_id: str | None) -> bool:
    """Whether ``who`` may open a terminal (attached to ``chat_id``, if given)."""
    if key_may_use_terminals(who):
        return True
    if who.kind == "session" and who.terminals == "write":
        return chat_id is None or who.allows_chat(chat_id)
    return False


def access(who: Principal, record: TerminalRecord) -> Access | None:
    if who.kind == "admin":
        return "write"
    if who.tenant_id is None or who.tenant_id != record.tenant_id:
        return None
    if key_may_use_terminals(who):
        return "write"
    if who.kind != "session" or who.terminals is None:
        return None
    if (
        record.id in who.terminal_ids
        or (record.opener is not None and record.opener == who.rate_key)
        or (record.chat_id is not None and record.chat_id in (who.chat_ids or ()))
    ):
        return who.terminals
    return None
