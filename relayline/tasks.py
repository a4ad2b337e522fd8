"""Stopping a background task for good.

``task.cancel()`` followed by ``await task`` is not enough on Python 3.11: ``asyncio.wait_for``
loses a cancellation that arrives as the operation it wraps completes (fixed in 3.12), and
redis-py wraps a command's send in it. A loop whose cancel was lost that way goes on to its next
round, and whoever awaits it waits for ever: a relay's shutdown hung on it.
:func:`cancel_and_wait` cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_S = 0.2  # how long a cancelled task has to end before it is cancelled again


async def cancel_and_wait(
    task: asyncio.Task[Any] | None, *, recancel_s: float = RECANCEL_S
) -> None:
    """Cancel ``task`` (None: nothing to do) and return once it has ended, cancelling it again
    every ``recancel_s`` while it runs. An exception the task ended with is raised here, as
    ``await task`` would; its cancellation is not. A cancel of the caller itself still
    propagates (the task may then be left cancelled but not yet ended)."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel_s)
    if not task.cancelled():
        task.result()


async def cancel_all(tasks: list[asyncio.Task[Any]], *, recancel_s: float = RECANCEL_S) -> None:
    """:func:`cancel_and_wait` for several tasks: all are cancelled first, then waited for; the
    first exception one of them ended with is raised once all have ended."""
    for task in tasks:
        task.cancel()
    failure: BaseException | None = None
    for task in tasks:
        try:
            await cancel_and_wait(task, recancel_s=recancel_s)
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
