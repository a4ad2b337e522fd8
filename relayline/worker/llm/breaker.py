"""A circuit breaker per upstream, so a dead LLM host fails turns fast instead of hanging them.

States::

    closed ──N consecutive failures──▶ open ──recovery_s elapsed──▶ half_open
      ▲                                 ▲                               │
      └────────── probe succeeds ───────┼────── probe fails ────────────┘

Callers take a :class:`BreakerPermit` before each upstream attempt and report its outcome
once. Not thread-safe: it belongs to one event loop, where no await splits its updates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from relayline.worker.llm.base import LLMError

BreakerState = Literal["closed", "open", "half_open"]


class BreakerPermit:
    """Leave to make one upstream attempt; report exactly one outcome (later ones are ignored)."""

    __slots__ = ("_breaker", "_done", "_generation", "is_probe")

    def __init__(self, breaker: CircuitBreaker, generation: int, *, is_probe: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._done = False
        self.is_probe = is_probe

    def success(self) -> None:
        """The upstream answered properly (including a 4xx: it is alive)."""
        if not self._done:
            self._done = True
            self._breaker._on_outcome(self, failed=False)

    def failure(self) -> None:
        """The upstream failed in a way that says it is unhealthy (5xx, timeout, refused)."""
        if not self._done:
            self._done = True
            self._breaker._on_outcome(self, failed=True)

    def release(self) -> None:
        """No verdict (the caller gave up, e.g. cancelled): free a probe slot, count nothing."""
        if not self._done:
            self._done = True
            self._breaker._on_release(self)


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; probes after ``recovery_s``.

    While open, :meth:`acquire` raises ``LLMError("circuit_open")`` without touching the
    upstream. Once ``recovery_s`` has passed, up to ``half_open_max`` concurrent probes are let
    through; the first probe success closes the circuit, a probe failure re-opens it for
    another ``recovery_s``. Outcomes of attempts started in an earlier state (before the
    circuit opened) never close it.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_s: float = 30.0,
        half_open_max: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or half_open_max < 1 or recovery_s < 0:
            raise ValueError("failure_threshold and half_open_max must be >= 1, recovery_s >= 0")
        self.failure_threshold = failure_threshold
        self.recovery_s = recovery_s
        self.half_open_max = half_open_max
        self._clock = clock
        self._open = False
        self._opened_at = 0.0
        self._failures = 0
        self._probes = 0
        # Bumped on every transition so stale permits cannot flip the new state.
        self._generation = 0

    @property
    def state(self) -> BreakerState:
        """Current state, for ``worker.state`` reports; time alone can turn open → half_open."""
        if not self._open:
            return "closed"
        if self._clock() - self._opened_at >= self.recovery_s:
            return "half_open"
        return "open"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def acquire(self) -> BreakerPermit:
        """Return a permit for one attempt, or raise ``LLMError("circuit_open")``."""
        state = self.state
        if state == "closed":
            return BreakerPermit(self, self._generation, is_probe=False)
        if state == "half_open" and self._probes < self.half_open_max:
            self._probes += 1
            return BreakerPermit(self, self._generation, is_probe=True)
        retry_in = max(0.0, self.recovery_s - (self._clock() - self._opened_at))
        raise LLMError("circuit_open", f"upstream circuit open; next probe in {retry_in:.1f}s")

    def _trip(self) -> None:
        self._open = True
        self._opened_at = self._clock()
        self._probes = 0
        self._generation += 1

    def _on_outcome(self, permit: BreakerPermit, *, failed: bool) -> None:
        if permit._generation != self._generation:
            return
        if permit.is_probe:
            self._probes = max(0, self._probes - 1)
            if failed:
                self._trip()
            else:
                self._open = False
                self._failures = 0
                self._probes = 0
                self._generation += 1
            return
        if failed:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._trip()
        else:
            self._failures = 0

    def _on_release(self, permit: BreakerPermit) -> None:
        if permit.is_probe and permit._generation == self._generation:
            self._probes = max(0, self._probes - 1)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state!r}, failures={self._failures}/"
            f"{self.failure_threshold}, recovery_s={self.recovery_s})"
        )
