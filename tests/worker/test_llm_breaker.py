from __future__ import annotations

import pytest

from relayline.worker.llm.base import LLMError
from relayline.worker.llm.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(
    threshold: int = 3, recovery: float = 10.0, half_open_max: int = 1
) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(threshold, recovery, half_open_max, clock=clock), clock


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.acquire().failure()


def test_opens_after_consecutive_failures() -> None:
    breaker, _ = make(threshold=3)
    breaker.acquire().failure()
    breaker.acquire().failure()
    assert breaker.state == "closed"
    breaker.acquire().failure()
    assert breaker.state == "open"
    with pytest.raises(LLMError) as info:
        breaker.acquire()
    assert info.value.category == "circuit_open"


def test_success_resets_the_count() -> None:
    breaker, _ = make(threshold=2)
    breaker.acquire().failure()
    breaker.acquire().success()
    breaker.acquire().failure()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 1


def test_half_open_after_recovery_and_probe_success_closes() -> None:
    breaker, clock = make()
    trip(breaker)
    clock.now += 9.9
    assert breaker.state == "open"
    clock.now += 0.1
    assert breaker.state == "half_open"
    probe = breaker.acquire()
    assert probe.is_probe
    with pytest.raises(LLMError):
        breaker.acquire()  # only half_open_max probes at once
    probe.success()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0


def test_probe_failure_reopens_for_another_recovery_period() -> None:
    breaker, clock = make()
    trip(breaker)
    clock.now += 10
    breaker.acquire().failure()
    assert breaker.state == "open"
    clock.now += 9
    assert breaker.state == "open"
    clock.now += 1
    assert breaker.state == "half_open"


def test_released_probe_frees_its_slot() -> None:
    breaker, clock = make(half_open_max=2)
    trip(breaker)
    clock.now += 10
    first, second = breaker.acquire(), breaker.acquire()
    with pytest.raises(LLMError):
        breaker.acquire()
    first.release()
    third = breaker.acquire()
    second.release()
    third.success()
    assert breaker.state == "closed"


def test_stale_permits_do_not_change_a_newer_state() -> None:
    breaker, clock = make(threshold=1)
    old = breaker.acquire()
    breaker.acquire().failure()
    assert breaker.state == "open"
    old.success()  # started before the circuit opened: must not close it
    assert breaker.state == "open"
    clock.now += 10
    probe = breaker.acquire()
    probe.success()
    old.failure()
    assert breaker.state == "closed"


def test_outcome_is_recorded_once() -> None:
    breaker, _ = make(threshold=2)
    permit = breaker.acquire()
    permit.failure()
    permit.failure()
    assert breaker.consecutive_failures == 1


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
