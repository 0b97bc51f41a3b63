"""Circuit breakers: hysteresis both ways, Unauthorized at once, 429 until Retry-After."""

from __future__ import annotations

from router.health import BreakerSettings, BreakerState, CircuitBreaker
from router.protocol import ContextTooLong, Overloaded, Unauthorized, Unavailable


class Clock:
    """Time the test steps by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock) -> CircuitBreaker:
    settings = BreakerSettings(failure_threshold=3, success_threshold=2, cooldown_s=10)
    return CircuitBreaker("the cloud", settings, clock=clock)


LOST = Unavailable("connection lost")


def test_opens_after_n_consecutive_failures_and_says_why() -> None:
    breaker = _breaker(Clock())
    for _ in range(2):
        breaker.record_failure(LOST)
        assert breaker.allows()
    breaker.record_failure(LOST)
    assert breaker.state is BreakerState.OPEN and not breaker.allows()
    assert breaker.reason() == "the cloud is failing (connection lost)"


def test_does_not_flap_under_alternating_failures() -> None:
    breaker = _breaker(Clock())
    for _ in range(50):
        breaker.record_failure(LOST)
        assert breaker.allows()
        breaker.record_success()
        assert breaker.state is BreakerState.CLOSED


def test_an_open_circuit_stays_open_through_a_flaky_recovery() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure(LOST)
    decisions = []
    for _ in range(6):  # the service alternates: probe ok, probe fails, ...
        clock.now += 1000
        assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
        breaker.begin()
        assert not breaker.allows()  # one probe at a time
        breaker.record_success()
        decisions.append(breaker.state)
        breaker.begin()
        breaker.record_failure(LOST)
        decisions.append(breaker.state)
    # Never closed: one success in half-open is not enough.
    assert BreakerState.CLOSED not in decisions


def test_half_open_closes_after_m_successes_and_waits_a_cooldown_first() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure(LOST)
    clock.now += 9
    assert breaker.state is BreakerState.OPEN
    clock.now += 1
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.begin()
    breaker.record_success()
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.begin()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.reason() == ""


def test_a_failed_probe_doubles_the_cooldown() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure(LOST)
    clock.now += 10
    breaker.begin()
    breaker.record_failure(LOST)
    clock.now += 10
    assert breaker.state is BreakerState.OPEN
    clock.now += 10
    assert breaker.state is BreakerState.HALF_OPEN


def test_unauthorized_opens_at_once() -> None:
    breaker = _breaker(Clock())
    breaker.record_failure(Unauthorized("the key was refused"))
    assert not breaker.allows()
    assert breaker.reason() == "the cloud refused the API key"


def test_overloaded_blocks_until_retry_after_without_counting_as_a_failure() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(5):
        breaker.record_failure(Overloaded("busy", retry_after=30))
    assert not breaker.allows() and "busy" in breaker.reason()
    clock.now += 29
    assert not breaker.allows()
    clock.now += 1.5
    assert breaker.allows() and breaker.state is BreakerState.CLOSED


def test_context_too_long_says_nothing_about_health() -> None:
    breaker = _breaker(Clock())
    for _ in range(5):
        breaker.record_failure(ContextTooLong("too long"))
    assert breaker.allows()


def test_a_cancelled_probe_frees_the_probe_slot() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure(LOST)
    clock.now += 10
    breaker.begin()
    assert not breaker.allows()
    breaker.abandon()
    assert breaker.allows()
