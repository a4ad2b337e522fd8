"""Row and event ids: ULIDs as python-ulid reads and writes them."""

from __future__ import annotations

import itertools
import os
import time

import pytest
from ulid import ULID

from relayline import ids


def test_an_id_is_a_ulid_of_now() -> None:
    before = time.time_ns() // 1_000_000
    made = ids.new_id()
    after = time.time_ns() // 1_000_000
    assert len(made) == 26
    parsed = ULID.from_str(made)
    assert str(parsed) == made  # the canonical spelling (upper case, Crockford's alphabet)
    assert before <= parsed.milliseconds <= after


@pytest.mark.parametrize("ms", [0, 1, 31, 32, 1_765_000_000_000, (1 << 48) - 1])
def test_the_time_part_is_python_ulids(ms: int) -> None:
    reference = str(ULID.from_timestamp(ms / 1000))[:10]
    assert ids._time_prefix(ms) == reference
    assert ULID.from_str(ids._time_prefix(ms) + "0" * 16).milliseconds == ms


def test_a_time_outside_the_range_is_refused() -> None:
    with pytest.raises(ValueError):
        ids._time_prefix(1 << 48)
    with pytest.raises(ValueError):
        ids._time_prefix(-1)


class _Clock:
    """``time.time_ns`` of a clock that moves as the test says."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def time_ns(self) -> int:
        return self.ms * 1_000_000


def _clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """A clock for ``ids`` to read, and no id made before it."""
    clock = _Clock(1_765_000_000_000)
    monkeypatch.setattr(ids, "time", clock)
    monkeypatch.setattr(ids, "_made", (-1, 0))
    return clock


def test_the_random_part_covers_every_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """80 random bits in 16 characters: every character position takes many values, and each
    id differs from the others (each made in a millisecond of its own)."""
    clock = _clock(monkeypatch)

    def one() -> str:
        clock.ms += 1
        return ids.new_id()

    made = [one() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for position in range(10, 26):
        assert len({m[position] for m in made}) > 20
    # Every bit of the random part is set in some id and clear in another.
    bits = [int(ULID.from_str(m)) & ((1 << 80) - 1) for m in made]
    union = intersection = bits[0]
    for value in bits[1:]:
        union |= value
        intersection &= value
    assert union == (1 << 80) - 1 and intersection == 0


def test_ids_sort_by_time() -> None:
    first = ids.new_id()
    time.sleep(0.002)
    second = ids.new_id()
    assert first < second
    assert ULID.from_str(first).milliseconds < ULID.from_str(second).milliseconds


def test_ids_made_in_the_same_millisecond_sort_in_the_order_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _clock(monkeypatch)
    made = [ids.new_id() for _ in range(2000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert {ULID.from_str(m).milliseconds for m in made} == {clock.ms}
    # Each step is random (1 to 2^24), not a fixed increment.
    randoms = [int(ULID.from_str(m)) & ((1 << 80) - 1) for m in made]
    assert len({b - a for a, b in itertools.pairwise(randoms)}) > 1900


def test_an_id_made_after_the_clock_stepped_back_still_sorts_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _clock(monkeypatch)
    first = ids.new_id()
    clock.ms -= 5_000
    second = ids.new_id()
    assert first < second
    assert ULID.from_str(second).milliseconds == ULID.from_str(first).milliseconds
    clock.ms += 10_000  # the clock has passed the last id's time again: its own time
    assert ULID.from_str(ids.new_id()).milliseconds == clock.ms


def test_a_spent_millisecond_moves_on_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _clock(monkeypatch)
    monkeypatch.setattr(ids, "_made", (clock.ms, (1 << 80) - 1))
    made = ids.new_id()
    assert ULID.from_str(made).milliseconds == clock.ms + 1
    assert made > ids._time_prefix(clock.ms) + "Z" * 16


def test_a_forked_child_does_not_make_its_parents_ids() -> None:
    """Random bytes are read in blocks; a child forked with part of a block left must not use
    the same bytes as its parent (the next ids of both would then share their random part)."""
    ids.new_id()  # a block is read and partly used
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out at once
        try:
            os.write(write_end, ids.new_id().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    parents = ids.new_id()
    with os.fdopen(read_end, "rb") as pipe:
        childs = pipe.read().decode()
    os.waitpid(pid, 0)
    assert len(childs) == 26
    assert childs[10:] != parents[10:]
