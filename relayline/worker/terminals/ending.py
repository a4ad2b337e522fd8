"""Knowing when a terminal's supervisor has ended, and ending its session's processes.

:class:`ChildWatch` learns that the supervisor (the PTY's child, the session's leader) ended
through a pidfd on the event loop (Linux 5.3+; elsewhere by polling) and reaps it. The
supervisor ends last, once nothing of its session runs, so its end is the session's end.

:func:`stop_session` is the one way a session is ended from the worker: SIGHUP and SIGTERM to
every process group of the session, up to the grace period for it to end, then SIGKILL to every
member but the supervisor (which reaps them and ends), then to the supervisor if it lingers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

from ptyprocess import PtyProcess

from relayline.worker.terminals.processes import kill_members, signal_session

POLL_S = 0.05
KILL_WAIT_S = 2.0  # SIGKILL is acted on at once; this only bounds a wedged kernel


class ChildWatch:
    """Calls ``on_exit`` once the PTY's child has ended; :attr:`gone` is set then."""

    def __init__(self, proc: PtyProcess, on_exit: Callable[[], None]) -> None:
        self.proc = proc
        self.gone = asyncio.Event()
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._pidfd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # no pidfds: poll instead
            self._poller = self._loop.create_task(self._poll())
        else:
            self._loop.add_reader(self._pidfd, self._exited)

    def alive(self) -> bool:
        """Whether it still runs; reaps it (WNOHANG) once it has ended."""
        try:
            return bool(self.proc.isalive())
        except Exception:  # already reaped
            return False

    def _exited(self) -> None:
        self._close_pidfd()
        if not self.gone.is_set():
            self.gone.set()
            self._on_exit()

    async def _poll(self) -> None:
        # Nothing wakes a waiter when a child ends without a pidfd, hence the polling.
        while self.alive():  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)
        self._exited()

    async def within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the child to end; whether it has."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.gone.wait()
        return self.gone.is_set()

    async def reap(self) -> None:
        """After it ended: collect its status (immediate; bounded for a wedged kernel)."""
        deadline = time.monotonic() + KILL_WAIT_S
        while self.alive() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(POLL_S / 5)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close(self) -> None:
        self._close_pidfd()
        if self._poller is not None:
            self._poller.cancel()


async def stop_session(sid: int, watch: ChildWatch, grace_s: float) -> bool:
    """End session ``sid`` (its leader being ``watch``'s child); True when something in it
    outlived the grace period and was SIGKILLed."""
    signal_session(sid, signal.SIGHUP)
    signal_session(sid, signal.SIGTERM)
    if await watch.within(grace_s):
        return False
    # Everything but the supervisor first: it reaps them, then ends by itself.
    kill_members(sid, spare=sid)
    if not await watch.within(KILL_WAIT_S):
        with contextlib.suppress(ProcessLookupError):
            os.kill(sid, signal.SIGKILL)
        await watch.within(KILL_WAIT_S)
    return True
