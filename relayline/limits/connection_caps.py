"""Caps on concurrent long-lived connections (WebSockets, SSE) per identity and per IP.

Rate limits count how often a client *opens* something; these caps bound how many things it
*holds open* at once, which is what costs memory and file descriptors in a relay.

Counting lives behind :class:`ConnectionCapStore` so that a store shared by several instances
(Redis) can replace the in-process :class:`MemoryConnectionCapStore`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

from relayline.errors import RateLimited

TOO_MANY_CONNECTIONS: Final = "too_many_connections"
"""``code`` of the error raised when a cap is reached."""


class ConnectionCapStore(Protocol):
    """Counts the holders of each ``(kind, key)`` slot.

    Guarantees every implementation gives:

    * ``acquire`` is an atomic check-and-increment: with ``limit`` n, at most n acquisitions of
      one ``(kind, key)`` are outstanding at any moment, however many callers race, across
      everything that shares the store (one process for the memory store, every instance for a
      shared one).
    * A refused ``acquire`` changes nothing.
    * ``release`` gives back one acquisition and never takes the count below zero; releasing a
      slot with no holders is a no-op. Counts carry no owner, so each successful ``acquire``
      must be released exactly once: :meth:`ConnectionCaps.hold` does that.
    * Slots with no holders cost no memory.
    * Holds die with their holder: the memory store loses them with the process; a shared store
      must expire the holds of an instance that stops (e.g. leases renewed while alive), so a
      crash cannot lock a key out for good.
    """

    async def acquire(self, kind: str, key: str, limit: int) -> bool:
        """Take one slot if fewer than ``limit`` (>= 1) are held; True when taken."""
        ...

    async def release(self, kind: str, key: str) -> None:
        """Give back one slot taken by :meth:`acquire`."""
        ...

    async def count(self, kind: str, key: str) -> int:
        """How many slots of ``(kind, key)`` are held now."""
        ...

    def drop_all(self) -> None:
        """This process is stopping and closes every connection it holds: its holds end
        together (the memory store forgets them; a shared store drops them in one step when it
        closes), and the releases that follow are no-ops instead of one round trip each."""
        ...


class MemoryConnectionCapStore:
    """In-process :class:`ConnectionCapStore` for a single instance.

    Atomic because no method awaits between reading and writing a count: under one event loop
    nothing can interleave. It is not thread-safe; use it from the loop that serves connections.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    async def acquire(self, kind: str, key: str, limit: int) -> bool:
        slot = (kind, key)
        held = self._counts.get(slot, 0)
        if held >= limit:
            return False
        self._counts[slot] = held + 1
        return True

    async def release(self, kind: str, key: str) -> None:
        slot = (kind, key)
        held = self._counts.get(slot, 0)
        if held <= 1:
            self._counts.pop(slot, None)
        else:
            self._counts[slot] = held - 1

    async def count(self, kind: str, key: str) -> int:
        return self._counts.get((kind, key), 0)

    def drop_all(self) -> None:
        self._counts.clear()

    def __len__(self) -> int:
        """Number of slots with at least one holder."""
        return len(self._counts)

    def __repr__(self) -> str:
        return f"MemoryConnectionCapStore(slots={len(self._counts)})"


class ConnectionCaps:
    """Per-key caps on concurrent connections, e.g. ``kind="identity"`` and ``kind="ip"``.

    Prefer :meth:`hold`, which releases on every exit path (normal close, error, cancellation).
    ``acquire``/``release`` are for code whose lifetime does not fit one ``async with``; the
    caller then owns the exactly-once release.
    """

    def __init__(self, store: ConnectionCapStore | None = None, *, retry_after: int = 5) -> None:
        """``retry_after`` is advertised on refusal: a slot frees only when another connection
        closes, so clients are asked to back off longer than the 1 s minimum to avoid a
        reconnect storm."""
        self._store: ConnectionCapStore = store if store is not None else MemoryConnectionCapStore()
        self._retry_after = max(1, retry_after)

    @property
    def store(self) -> ConnectionCapStore:
        """The store that counts the holders."""
        return self._store

    async def acquire(self, kind: str, key: str, limit: int) -> bool:
        """Take a slot of ``(kind, key)`` if fewer than ``limit`` are held; True when taken."""
        _check_limit(limit)
        return await self._store.acquire(kind, key, limit)

    async def release(self, kind: str, key: str) -> None:
        """Give back a slot taken by :meth:`acquire`; call exactly once per successful acquire."""
        await self._store.release(kind, key)

    async def count(self, kind: str, key: str) -> int:
        """How many connections of ``(kind, key)`` are held now."""
        return await self._store.count(kind, key)

    @asynccontextmanager
    async def hold(self, kind: str, key: str, limit: int) -> AsyncIterator[None]:
        """Hold a slot of ``(kind, key)`` for the body of an ``async with``.

        Raises :class:`~relayline.errors.RateLimited` with ``code="too_many_connections"``
        (before the body runs, holding nothing) when ``limit`` connections are already held.
        The slot is released exactly once when the body exits, however it exits.
        """
        if not await self.acquire(kind, key, limit):
            raise RateLimited(
                f"too many concurrent connections for this {kind}",
                retry_after=self._retry_after,
                code=TOO_MANY_CONNECTIONS,
            )
        try:
            yield
        finally:
            await self._store.release(kind, key)

    def __repr__(self) -> str:
        return f"ConnectionCaps(store={self._store!r}, retry_after={self._retry_after})"


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"connection limit must be at least 1, not {limit}")


def create_cap_store(
    redis: Any | None, key_prefix: str, instance_id: str | None = None
) -> ConnectionCapStore:
    """The cap store of this process's shared-state backend: Redis when the process has a
    Redis client (caps count every instance's connections), else in-process."""
    if redis is None:
        return MemoryConnectionCapStore()
    from relayline.limits.redis_caps import RedisConnectionCapStore

    return RedisConnectionCapStore(redis, key_prefix, instance_id=instance_id)
