"""Identifiers: time-ordered ids for rows and events, and request-id validation."""

from __future__ import annotations

import os
import re
import threading
import time

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

_CROCKFORD = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # base32 as ULIDs spell it
# Every 10-bit value as its two characters: the random part is 8 look-ups.
_PAIRS = tuple(chr(_CROCKFORD[i >> 5]) + chr(_CROCKFORD[i & 31]) for i in range(1024))
_TIME_CHARS = 10  # 48 bits of milliseconds in 10 characters (the first carries 3 bits)
_MAX_MS = (1 << 48) - 1

_last: tuple[int, str] = (-1, "")  # the last millisecond and its encoding


def _time_prefix(ms: int) -> str:
    global _last
    last_ms, prefix = _last
    if ms == last_ms:
        return prefix
    if not 0 <= ms <= _MAX_MS:
        raise ValueError("time outside the ULID range")
    chars = bytearray(_TIME_CHARS)
    rest = ms
    for position in range(_TIME_CHARS - 1, -1, -1):
        chars[position] = _CROCKFORD[rest & 31]
        rest >>= 5
    prefix = chars.decode()
    _last = (ms, prefix)
    return prefix


_RANDOM_BITS = 80
_STEP_SHIFT = _RANDOM_BITS - 24  # within a millisecond, ids step up by 1 to 2^24
_made: tuple[int, int] = (-1, 0)  # the millisecond and random part of the last id made
_making = threading.Lock()

# Random bytes from the OS are read 4 KiB at a time and used ten at a time: one system call
# (which also lets go of the interpreter's lock) per 409 ids instead of one per id.
_POOL_BYTES = 4096
_pool = b""
_pool_at = 0


def _after_fork_in_child() -> None:
    """A forked child must not make the ids its parent makes from the same bytes, nor wait
    for a lock that a thread of its parent held at the fork."""
    global _pool, _pool_at, _making
    _pool, _pool_at = b"", 0
    _making = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def new_id() -> str:
    """A 26-character ULID: unique, URL-safe, and sorted by creation time.

    The same ids as :pypi:`python-ulid`'s ``str(ULID())`` (48 bits of Unix milliseconds, then 80
    random bits from ``os.urandom``, in Crockford's base32), made in less than half the time
    (``bench/store_tx.py``): an event carries a new one, and on the streaming path
    ``str(ULID())`` was 3 to 4% of the relay's CPU (``bench/turns.py --concurrent --profile``).
    The time part is encoded once per millisecond, the random part ten bits at a time, from
    random bytes read in blocks.

    Within one process the ids also sort in the order they were made when several are made in
    the same millisecond (or the clock steps back): such an id keeps the last one's time and
    adds a random step of 1 to 2^24 to its random part, as monotonic ULIDs do. Rows whose order
    is their id's (a chat's turns, chats newest first) keep the order they were created in.
    """
    global _made, _pool, _pool_at
    with _making:  # the store's thread makes ids too
        at = _pool_at
        if at + 10 > len(_pool):
            _pool, at = os.urandom(_POOL_BYTES), 0
        _pool_at = at + 10
        fresh = int.from_bytes(_pool[at : at + 10], "big")
        ms = time.time_ns() // 1_000_000
        last_ms, last_r = _made
        if ms <= last_ms:
            ms = last_ms
            r = last_r + 1 + (fresh >> _STEP_SHIFT)
            if r >> _RANDOM_BITS:  # the millisecond's ids are spent (2^56 of them): the next one
                ms += 1
                r &= (1 << _RANDOM_BITS) - 1
        else:
            r = fresh
        _made = (ms, r)
    p = _PAIRS
    return (
        _time_prefix(ms)
        + p[r >> 70]
        + p[(r >> 60) & 1023]
        + p[(r >> 50) & 1023]
        + p[(r >> 40) & 1023]
        + p[(r >> 30) & 1023]
        + p[(r >> 20) & 1023]
        + p[(r >> 10) & 1023]
        + p[r & 1023]
    )


def valid_request_id(value: str | None) -> bool:
    """Whether a client-supplied ``X-Request-ID`` is safe to adopt (and to log)."""
    return value is not None and bool(_REQUEST_ID.match(value))
