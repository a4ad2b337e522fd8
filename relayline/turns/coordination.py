"""What relay instances tell each other about turns, beyond the shared store.

- ``broadcast``: a small control message to every *other* instance — wake up (a turn was
  queued), cancel a turn, a tool-approval decision — for the instance whose worker holds the
  turn. Delivery is best effort (at most once): a lost wake-up is covered by the periodic
  claim, a lost cancel by the client's retry, and leases cover a lost instance.
- ``append_partial``/``partial``: the text of a running answer published so far, so a
  snapshot served by any instance shows it. Each flush sends only its new text (bytes written
  per answer are proportional to the answer, not to its square).
- ``set_approvals``/``approvals``: the open tool-approval requests of a chat's running turn
  (each as announced in ``tool.approval_requested``), for the same reason. The holder replaces
  the whole list on every change; an empty list removes it.
- ``report_workers``/``workers_elsewhere``: the workers each instance holds (as the admin API
  describes them), so the relay says ``no_worker`` only when no instance has one, and the
  operator's worker list shows the workers of every instance. A report lives a little longer
  than the periodic re-report interval: an instance that dies drops out of both by itself.

:class:`LocalCoordinator` is the single-instance version (nothing to tell anyone);
:class:`RedisCoordinator` shares it all through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from relayline.ids import new_id
from relayline.tasks import cancel_and_wait

log = structlog.get_logger("relayline.turns")

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class Coordinator(Protocol):
    instance_id: str
    # Whether other instances may exist: a lone instance may take back every running turn
    # at start-up instead of waiting for their leases to run out.
    shared: bool

    async def start(self, handler: Handler) -> None:
        """Begin receiving other instances' broadcasts into ``handler``."""

    async def close(self) -> None: ...

    async def broadcast(self, message: dict[str, Any]) -> None:
        """Best-effort delivery to every other instance (never to this one)."""

    async def append_partial(
        self,
        chat_id: str,
        message_id: str,
        attempt: int,
        offset: int,
        text: str,
        whole: Callable[[], str],
    ) -> None:
        """Record that attempt ``attempt`` of the running answer ``message_id`` published
        ``text`` at character ``offset`` (call it before publishing, in publishing order).

        Only ``text`` is written when the stored partial is this attempt's and exactly
        ``offset`` characters long. Otherwise (offset 0, another message's partial, an earlier
        attempt's, none at all, or one an earlier failed append left short) the partial is
        replaced once by ``whole()``, the text this attempt published so far: a lost append
        (a Redis blip, a failure swallowed here) is repaired by the next append. A partial
        stored by a *later* attempt of the same message is left alone: an attempt taken over
        by another instance never writes into its successor's text.

        What a reader sees: a message id and a prefix of the text the attempt that wrote it
        last published (short only while a lost append awaits its repair), never text of
        another message or attempt under that id. The partial expires ``20 * ttl_s`` after
        its last append (an instance that dies mid-answer leaves nothing behind for long).
        Best effort: a failure is swallowed.
        """

    async def partial(self, chat_id: str) -> tuple[str, str] | None:
        """``(message_id, text so far)`` of the chat's running answer, when one is stored
        (the id and the text read together, as one append left them)."""

    async def clear_partial(self, chat_id: str) -> None:
        """Forget the chat's partial, whoever wrote it (an attempt still streaming restores
        its whole text on its next append)."""

    async def set_approvals(self, chat_id: str, items: list[dict[str, Any]]) -> None:
        """Store the chat's open approval requests, oldest first (none: forget them)."""

    async def approvals(self, chat_id: str) -> list[dict[str, Any]]:
        """The list last stored by :meth:`set_approvals`, as stored (empty when unknown)."""

    async def report_workers(self, workers: list[dict[str, Any]]) -> None:
        """Tell the other instances which workers this one holds now."""

    async def workers_elsewhere(self) -> list[dict[str, Any]]:
        """The workers the other live instances reported last, each with its ``instance``."""

    async def lead(self, role: str, ttl_s: float) -> bool:
        """Whether this instance holds ``role`` for the next ``ttl_s`` seconds (taking it when
        no live instance does, keeping it while it asks again in time).

        At most one instance holds a role at a time, except for at most ``ttl_s`` after a
        holder's clock or connection stalls; the only instance always holds every role.
        """


class LocalCoordinator:
    """One instance: there is nobody else to tell."""

    def __init__(self, instance_id: str | None = None) -> None:
        self.instance_id = instance_id or new_id()
        self.shared = False

    async def start(self, handler: Handler) -> None:
        return None

    async def close(self) -> None:
        return None

    async def broadcast(self, message: dict[str, Any]) -> None:
        return None

    async def lead(self, role: str, ttl_s: float) -> bool:
        return True

    async def append_partial(
        self,
        chat_id: str,
        message_id: str,
        attempt: int,
        offset: int,
        text: str,
        whole: Callable[[], str],
    ) -> None:
        return None

    async def partial(self, chat_id: str) -> tuple[str, str] | None:
        return None

    async def clear_partial(self, chat_id: str) -> None:
        return None

    async def set_approvals(self, chat_id: str, items: list[dict[str, Any]]) -> None:
        return None

    async def approvals(self, chat_id: str) -> list[dict[str, Any]]:
        return []

    async def report_workers(self, workers: list[dict[str, Any]]) -> None:
        return None

    async def workers_elsewhere(self) -> list[dict[str, Any]]:
        return []


# KEYS: the meta hash (m: message id, a: attempt, n: length in characters); the text is at the
# same key plus ":text". ARGV: message id, attempt, offset (characters), text. Every flush runs
# this, so it carries nothing it can do without: the text key is derived (the relay does not run
# on Redis Cluster), the text's length is counted here (its UTF-8 lead bytes: Python's ``len``
# of the same text), and the expiry (s) is written into the script at registration.
# Returns -1 when a later attempt of the message holds the partial (nothing written), 1 when
# written, 0 when an append did not fit (another message's or attempt's partial, not exactly
# ``offset`` long, or a text evicted without its hash: the caller then sends the whole text
# with offset 0, which replaces).
_APPEND_PARTIAL = r"""
local meta = KEYS[1]
local text_key = meta .. ':text'
local attempt, offset, text = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local _, added = string.gsub(text, '[^\128-\191]', '')
local found = redis.call('HMGET', meta, 'm', 'a', 'n')
local same_message = found[1] == ARGV[1]
local stored_attempt = tonumber(found[2]) or -1
if same_message and stored_attempt > attempt then return -1 end
if offset == 0 then
  redis.call('DEL', meta, text_key)
  redis.call('HSET', meta, 'm', ARGV[1], 'a', attempt, 'n', added)
  redis.call('SET', text_key, text)
else
  if not same_message or stored_attempt ~= attempt or tonumber(found[3]) ~= offset
    or redis.call('EXISTS', text_key) == 0 then
    return 0
  end
  redis.call('APPEND', text_key, text)
  redis.call('HSET', meta, 'n', offset + added)
end
redis.call('EXPIRE', meta, @TTL@)
redis.call('EXPIRE', text_key, @TTL@)
return 1
"""


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# KEYS: the role's key. ARGV: this instance's id, the lease (ms). Take the role when free, keep
# it when it is ours; 1 when held.
_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class RedisCoordinator:
    """Pub/sub for broadcasts; plain keys (with expiry) for partial answers, open approval
    requests and worker counts."""

    def __init__(
        self, redis: Any, key_prefix: str, *, ttl_s: float = 30.0, instance_id: str | None = None
    ) -> None:
        self.instance_id = instance_id or new_id()
        self.shared = True
        self._redis = redis
        self._prefix = key_prefix
        self._channel = f"{key_prefix}turns:control"
        self._workers = f"{key_prefix}turns:workers"
        self._ttl_s = ttl_s
        self._task: asyncio.Task[None] | None = None
        self._partial_ttl = int(ttl_s * 20)
        self._append = redis.register_script(
            _APPEND_PARTIAL.replace("@TTL@", str(self._partial_ttl))
        )
        self._lead = redis.register_script(_LEAD)

    async def lead(self, role: str, ttl_s: float) -> bool:
        held = await self._lead(
            keys=[f"{self._prefix}lead:{role}"], args=[self.instance_id, int(ttl_s * 1000)]
        )
        return bool(held)

    async def start(self, handler: Handler) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(handler))

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        with contextlib.suppress(Exception):
            await self._redis.hdel(self._workers, self.instance_id)

    async def _listen(self, handler: Handler) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    # Polled with a short timeout rather than ``listen()``: the shared client's
                    # socket timeout would otherwise end an idle subscription every few seconds.
                    item = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if item is None or item.get("type") != "message":
                        continue
                    message = json.loads(item["data"])
                    if message.get("from") == self.instance_id:
                        continue
                    try:
                        await handler(message)
                    except Exception:
                        log.exception("control_message_failed", kind=message.get("kind"))
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: leases and periodic claims keep things moving
                log.warning("control_channel_lost")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def broadcast(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self._redis.publish(
                self._channel, json.dumps({**message, "from": self.instance_id})
            )

    def _partial_keys(self, chat_id: str) -> list[str]:
        # A hash (message id, length in characters) and the text, appended to in place.
        base = f"{self._prefix}turns:answer:{chat_id}"
        return [base, f"{base}:text"]

    async def append_partial(
        self,
        chat_id: str,
        message_id: str,
        attempt: int,
        offset: int,
        text: str,
        whole: Callable[[], str],
    ) -> None:
        keys = self._partial_keys(chat_id)[:1]
        with contextlib.suppress(Exception):
            if offset > 0:
                done = await self._append(keys=keys, args=[message_id, attempt, offset, text])
                if done != 0:
                    return
            await self._append(keys=keys, args=[message_id, attempt, 0, whole()])

    async def partial(self, chat_id: str) -> tuple[str, str] | None:
        meta, text_key = self._partial_keys(chat_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(meta, "m")
                pipe.get(text_key)
                message_id, text = await pipe.execute()
        except Exception:
            return None
        if message_id is None or text is None:
            return None
        return _str(message_id), _str(text)

    async def clear_partial(self, chat_id: str) -> None:
        with contextlib.suppress(Exception):
            await self._redis.delete(*self._partial_keys(chat_id))

    def _approvals_key(self, chat_id: str) -> str:
        return f"{self._prefix}turns:approvals:{chat_id}"

    async def set_approvals(self, chat_id: str, items: list[dict[str, Any]]) -> None:
        key = self._approvals_key(chat_id)
        with contextlib.suppress(Exception):
            if not items:
                await self._redis.delete(key)
                return
            # The partial answer's expiry, or the latest deadline when that is further away.
            latest = max((i.get("deadline") or 0) for i in items) / 1000 - time.time()
            ttl = max(self._partial_ttl, math.ceil(latest))
            await self._redis.set(key, json.dumps(items), ex=ttl)

    async def approvals(self, chat_id: str) -> list[dict[str, Any]]:
        try:
            raw = await self._redis.get(self._approvals_key(chat_id))
            items = json.loads(raw) if raw is not None else []
        except Exception:
            return []
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def report_workers(self, workers: list[dict[str, Any]]) -> None:
        value = json.dumps({"workers": workers, "until": time.time() + self._ttl_s})
        with contextlib.suppress(Exception):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(self._workers, self.instance_id, value)
                # Dead instances' entries are skipped when read; this bounds the hash too.
                pipe.expire(self._workers, int(self._ttl_s * 20))
                await pipe.execute()

    async def workers_elsewhere(self) -> list[dict[str, Any]]:
        try:
            entries = await self._redis.hgetall(self._workers)
        except Exception:
            return []
        now = time.time()
        found: list[dict[str, Any]] = []
        for instance, raw in entries.items():
            name = instance.decode() if isinstance(instance, bytes) else str(instance)
            if name == self.instance_id:
                continue
            try:
                entry = json.loads(raw)
                if entry.get("until", 0) <= now:
                    continue
                found += [{**w, "instance": name} for w in entry.get("workers", [])]
            except (ValueError, TypeError, AttributeError):
                continue  # an entry in another format (an older relay during an upgrade)
        return found


def create_coordinator(
    redis: Any | None, key_prefix: str, instance_id: str | None = None
) -> Coordinator:
    """The coordinator of this process's shared-state backend: Redis when the process has a
    Redis client (``RELAYLINE_REDIS_URL``), else the single-instance one."""
    if redis is None:
        return LocalCoordinator(instance_id)
    return RedisCoordinator(redis, key_prefix, instance_id=instance_id)
