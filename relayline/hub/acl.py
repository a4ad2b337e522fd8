"""Who may read or write which topic.

- ``admin``: the admin key only.
- ``tenant:<id>``: the tenant's own keys (and the admin key). Session tokens are scoped to chats
  and do not see the tenant-wide topic.
- ``chat:<id>``: a key of the chat's tenant, or a session token that lists the chat.
- ``term:<id>``: whoever may watch that terminal session (see
  :mod:`relayline.terminals.access`): the admin key, a tenant key with the ``terminals``
  scope, or a session token minted with ``terminals`` that reaches it.

Chat ownership never changes, so positive lookups are cached for the life of the process.
"""

from __future__ import annotations

from collections import OrderedDict

from relayline.auth import Principal
from relayline.envelope import Topic
from relayline.errors import Forbidden
from relayline.store.database import Database
from relayline.store.models import Chat
from relayline.terminals.service import TerminalService

_CACHE_SIZE = 100_000


class TopicAcl:
    def __init__(self, db: Database, terminals: TerminalService | None = None) -> None:
        self._db = db
        self._terminals = terminals
        self._owners: OrderedDict[str, str] = OrderedDict()

    async def chat_owner(self, chat_id: str) -> str | None:
        owner = self._owners.get(chat_id)
        if owner is not None:
            return owner
        async with self._db.read() as session:
            chat = await session.get(Chat, chat_id)
        if chat is None:
            return None
        self._owners[chat_id] = chat.tenant_id
        if len(self._owners) > _CACHE_SIZE:
            self._owners.popitem(last=False)
        return chat.tenant_id

    async def check(self, who: Principal, topic: str) -> None:
        """Raise ``Forbidden`` unless ``who`` may subscribe to (and act on) ``topic``."""
        parsed = Topic.parse(topic)
        if who.kind == "admin":
            return
        ident = parsed.id or ""
        if parsed.kind == "chat" and who.tenant_id is not None and who.allows_chat(ident):
            if await self.chat_owner(ident) == who.tenant_id:
                return
        elif parsed.kind == "tenant" and who.kind == "tenant" and ident == who.tenant_id:
            return
        if parsed.kind == "term" and await self._sees_terminal(who, ident):
            return
        raise Forbidden("topic not allowed")

    async def _sees_terminal(self, who: Principal, session_id: str) -> bool:
        return self._terminals is not None and await self._terminals.can_view(who, session_id)
