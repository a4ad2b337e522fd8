"""Background tasks stop for good, even when a cancellation is lost on its way (Python 3.11's
``asyncio.wait_for`` returns the wrapped operation's result instead of raising when the cancel
lands as that operation completes; redis-py wraps a command's send in it)."""

from __future__ import annotations

import asyncio

import pytest

from relayline.store import turn_queue
from relayline.tasks import cancel_all, cancel_and_wait
from tests.fixtures import RelayFactory


def losing_first_cancel(rounds: list[int]) -> asyncio.Task[None]:
    """A loop whose first cancellation is lost, as one landing in redis-py's send can be."""

    async def loop() -> None:
        lost = False
        while True:
            rounds.append(1)
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost = True  # the operation "completed": its result is returned, not the cancel

    return asyncio.get_running_loop().create_task(loop())


def failing_when_cancelled(error: Exception) -> asyncio.Task[None]:
    """A task whose clean-up, once cancelled, fails with ``error``."""

    async def failing() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise error from None

    return asyncio.get_running_loop().create_task(failing())


async def test_a_plain_cancel_and_await_waits_for_ever_on_a_lost_cancel() -> None:
    """The failure itself, so that the test below is known to exercise it."""
    task = losing_first_cancel([])
    await asyncio.sleep(0.02)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done  # still looping
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_and_wait_ends_a_loop_whose_cancel_was_lost() -> None:
    rounds: list[int] = []
    task = losing_first_cancel(rounds)
    await asyncio.sleep(0.02)
    async with asyncio.timeout(5):
        await cancel_and_wait(task, recancel_s=0.05)
    assert task.cancelled()
    ended_at = len(rounds)
    await asyncio.sleep(0.05)
    assert len(rounds) == ended_at


async def test_cancel_and_wait_raises_what_the_task_failed_with() -> None:
    task = failing_when_cancelled(RuntimeError("cleanup failed"))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)
    await cancel_and_wait(None)  # nothing to stop


async def test_cancel_and_wait_leaves_the_callers_own_cancel_alone() -> None:
    task = losing_first_cancel([])
    await asyncio.sleep(0.02)
    stopper = asyncio.get_running_loop().create_task(cancel_and_wait(task, recancel_s=10))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_all_waits_for_every_task_then_raises_the_first_failure() -> None:
    failed = failing_when_cancelled(ValueError("first"))
    stubborn = losing_first_cancel([])
    await asyncio.sleep(0.02)
    async with asyncio.timeout(5):
        with pytest.raises(ValueError, match="first"):
            await cancel_all([failed, stubborn], recancel_s=0.05)
    assert stubborn.cancelled()


async def test_a_relay_stops_when_its_lease_loop_lost_a_cancel(
    start_relay: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay's shutdown stops the lease loop while it renews in the store; the first cancel
    is lost there (as in a Redis command's send on Python 3.11): the relay still stops."""
    relay = await start_relay(turn_lease_s=0.3, shutdown_drain_s=1)
    renewing = asyncio.Event()
    lost: list[bool] = []
    real_renew = turn_queue.renew

    async def renew(*args: object, **kwargs: object) -> turn_queue.Renewal:
        renewing.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(True)
        return await real_renew(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(turn_queue, "renew", renew)
    async with asyncio.timeout(10):
        await renewing.wait()
    await relay.stop()  # bounded by the drain time + 10 s: a hang fails the test
    assert lost == [True]
