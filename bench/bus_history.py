"""What the in-process bus's history costs: memory, a full garbage collection, a replay.

    .venv/bin/python bench/bus_history.py                  # 1,000 topics x 300 deltas
    .venv/bin/python bench/bus_history.py --topics 200 --events 100

The shape of ``bench/turns.py --concurrent``: ``--topics`` chats, each with ``--events``
``message.delta`` events of one word (the answer's ids, an offset and the text, as the relay
publishes them) retained in a :class:`~relayline.bus.memory.MemoryBus`. Reported: the memory
the history takes (tracemalloc, after a collection), the objects the garbage collector tracks
for it, the time of a full collection (``gc.collect()``, median of five) with the history held
against the same process without it, and the time to read a replay page of 100 events
(``bus.history``, what a resuming subscriber costs), median over 200 reads, and of each
page read again right after (another subscriber of the topic resuming from the same point).
Then what every published event pays (median of five timings of 200,000 calls each): an
``Event`` made, ``make_event`` whole (id, encoding, Event) and ``new_id()``. In-process only,
bounded by the counts given.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import timeit
import tracemalloc
from collections.abc import Callable

from relayline.bus.memory import MemoryBus
from relayline.envelope import Event, make_event
from relayline.ids import new_id


def per_call_us(fn: Callable[[], object], number: int = 200_000) -> float:
    """Median over five timings of ``number`` calls, in µs a call."""
    return statistics.median(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def full_collection_ms(rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def run(topics: int, events: int) -> dict[str, float]:
    gc.collect()
    empty_gc_ms = full_collection_ms()
    tracked_before = len(gc.get_objects())
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    bus = MemoryBus(history_max_events=max(events, 1))
    names = [f"chat:{new_id()}" for _ in range(topics)]
    for name in names:
        message_id, turn_id = new_id(), new_id()
        offset = 0
        for i in range(events):
            text = f"word{i} "
            data = {"message_id": message_id, "turn_id": turn_id, "offset": offset, "text": text}
            await bus.publish(name, "message.delta", data)
            offset += len(text)
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracked = len(gc.get_objects()) - tracked_before
    history_gc_ms = full_collection_ms()
    reads, again = [], []
    page_events = min(100, events)
    for k in range(200):
        name = names[k % topics]
        started = time.perf_counter()
        page = await bus.history(name, events - page_events, page_events)
        reads.append((time.perf_counter() - started) * 1e6)
        assert len(page.events) == page_events
        # Another subscriber of the same topic resuming from the same point.
        started = time.perf_counter()
        await bus.history(name, events - page_events, page_events)
        again.append((time.perf_counter() - started) * 1e6)
    await bus.close()
    data = {"message_id": new_id(), "turn_id": new_id(), "offset": 0, "text": "word "}
    return {
        "event_us": per_call_us(lambda: Event("i", "t", "y", 1, "e", 2, data, b"f")),
        "make_event_us": per_call_us(
            lambda: make_event("chat:x", "message.delta", data, seq=1, epoch="e")
        ),
        "new_id_us": per_call_us(new_id),
        "history_mib": (held - base) / 2**20,
        "bytes_per_event": (held - base) / (topics * events),
        "tracked_objects": tracked,
        "full_gc_ms_empty": empty_gc_ms,
        "full_gc_ms_with_history": history_gc_ms,
        "replay_100_us": statistics.median(reads),
        "replay_100_again_us": statistics.median(again),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    found = asyncio.run(run(args.topics, args.events))
    print(f"{args.topics} topics x {args.events} message.delta events retained")
    print("| measure | result |")
    print("|---|---|")
    print(
        f"| history's memory | {found['history_mib']:.1f} MiB "
        f"({found['bytes_per_event']:.0f} bytes an event) |"
    )
    print(f"| objects the collector tracks for it | {found['tracked_objects']:,} |")
    print(
        f"| full collection, without / with the history | {found['full_gc_ms_empty']:.1f} / "
        f"{found['full_gc_ms_with_history']:.1f} ms |"
    )
    print(f"| a replay page of 100 events (`bus.history`) | {found['replay_100_us']:.0f} µs |")
    print(f"| the same page read again | {found['replay_100_again_us']:.0f} µs |")
    print(f"| an `Event(...)` made | {found['event_us']:.2f} µs |")
    print(f"| `make_event` (id, encoding, Event) | {found['make_event_us']:.2f} µs |")
    print(f"| `new_id()` | {found['new_id_us']:.2f} µs |")


if __name__ == "__main__":
    main()
