"""The worker's coalescing of an answer's texts (relayline.worker.coalescing): the relay's rule,
applied before the frames are sent."""

from __future__ import annotations

import asyncio
import itertools

from relayline.worker.coalescing import DeltaCoalescer


class Sent:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.times: list[float] = []
        self.arrived = asyncio.Event()

    async def __call__(self, text: str) -> None:
        self.texts.append(text)
        self.times.append(asyncio.get_running_loop().time())
        self.arrived.set()


async def test_the_first_text_leaves_at_once_a_quick_one_waits_for_its_window() -> None:
    sent = Sent()
    coalescer = DeltaCoalescer(0.040, 1024, sent)
    await coalescer.add("first ")
    assert sent.texts == ["first "]
    await coalescer.add("quick ")
    await coalescer.add("and ")
    assert sent.texts == ["first "]
    sent.arrived.clear()
    async with asyncio.timeout(5):
        await sent.arrived.wait()  # the timer, a window after "quick " came
    assert sent.texts == ["first ", "quick and "]


async def test_a_waiting_text_leaves_with_the_next_once_the_window_has_passed() -> None:
    sent = Sent()
    coalescer = DeltaCoalescer(0.040, 1024, sent)
    await coalescer.add("a")
    await coalescer.add("b")  # waits, its timer set
    assert sent.texts == ["a"]
    coalescer._last -= 1.0  # the window has passed before the timer fired
    await coalescer.add("c")
    assert sent.texts == ["a", "bc"]
    await asyncio.sleep(0.080)  # and the timer was dropped: nothing more goes out
    assert sent.texts == ["a", "bc"]


async def test_enough_waiting_text_leaves_within_the_window() -> None:
    sent = Sent()
    coalescer = DeltaCoalescer(5.0, 10, sent)
    await coalescer.add("a")
    await coalescer.add("b" * 5)
    assert sent.texts == ["a"]
    await coalescer.add("c" * 5)  # ten characters wait
    assert sent.texts == ["a", "b" * 5 + "c" * 5]
    coalescer.discard()


async def test_flush_sends_what_waits_and_discard_drops_it_for_good() -> None:
    sent = Sent()
    coalescer = DeltaCoalescer(0.020, 1024, sent)
    await coalescer.add("one ")
    await coalescer.add("two ")
    await coalescer.flush()
    assert sent.texts == ["one ", "two "]
    await coalescer.add("three ")
    coalescer.discard()
    await asyncio.sleep(0.060)  # three windows: its timer was cancelled
    assert sent.texts == ["one ", "two "]
    await coalescer.add("")  # nothing to send
    assert sent.texts == ["one ", "two "]


async def test_a_steady_stream_goes_out_merged_and_a_window_apart() -> None:
    ms = 50
    sent = Sent()
    coalescer = DeltaCoalescer(ms / 1000, 1024, sent)
    words = [f"w{i} " for i in range(24)]
    for word in words:  # one every fifth of a window (a late wake-up still well within it)
        await coalescer.add(word)
        await asyncio.sleep(ms / 5 / 1000)
    await coalescer.flush()
    assert "".join(sent.texts) == "".join(words)
    assert len(sent.texts) <= 1 + len(words) // 2 + 1
    gaps = [b - a for a, b in itertools.pairwise(sent.times[:-1])]
    assert min(gaps) >= ms / 1000 - 0.002
