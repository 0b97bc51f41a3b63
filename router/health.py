"""Circuit breakers with hysteresis, one per backend, so the chat does not flap between sides.

States::

    closed ──N consecutive failures, or one Unauthorized──▶ open
    open ──cool-down passed──▶ half-open (one probe request at a time)
    half-open ──M consecutive successes──▶ closed
    half-open ──any failure──▶ open (the cool-down doubles, up to a cap)

A single success in `closed` resets the failure count, so alternating failures never open the
circuit; a single success in `half-open` does not close it, so one lucky probe does not send
traffic back to a side that is still failing. Separately, an Overloaded (HTTP 429) answer makes
the backend unavailable until its Retry-After passes, without counting as a failure: a busy
service is healthy, just full.

Pure: time comes from an injectable clock, so tests step through it without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from router.protocol import BackendError, ContextTooLong, Overloaded, Unauthorized

__all__ = ["BreakerSettings", "BreakerState", "CircuitBreaker"]


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 3
    """Consecutive failures that open the circuit."""
    success_threshold: int = 2
    """Consecutive successes in half-open that close it again."""
    cooldown_s: float = 30.0
    """How long an open circuit refuses requests before letting one probe through."""
    max_cooldown_s: float = 300.0
    """The cool-down doubles after each failed probe, up to this."""
    default_retry_after_s: float = 10.0
    """How long an Overloaded answer without Retry-After makes the backend unavailable."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("breaker thresholds must be at least 1")
        if self.cooldown_s <= 0 or self.max_cooldown_s < self.cooldown_s:
            raise ValueError("cooldown_s must be positive and at most max_cooldown_s")


class CircuitBreaker:
    """The health of one backend as the router sees it."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._successes = 0
        self._opened_at = 0.0
        self._cooldown = self.settings.cooldown_s
        self._probe_in_flight = False
        self._busy_until = 0.0
        self.last_error: str = ""
        """The sentence of the failure that opened the circuit (for the route record)."""
        self.unauthorized = False
        """True while the circuit is open because the key was refused."""

    @property
    def state(self) -> BreakerState:
        """The state now; an open circuit whose cool-down has passed reads as half-open."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            self._state = BreakerState.HALF_OPEN
            self._successes = 0
            self._probe_in_flight = False
        return self._state

    def busy_for(self) -> float:
        """Seconds left until an Overloaded backend may be tried again (0: not busy)."""
        return max(0.0, self._busy_until - self._clock())

    def allows(self) -> bool:
        """Whether a request may go to this backend now (does not reserve the probe)."""
        if self.busy_for() > 0:
            return False
        state = self.state
        if state is BreakerState.OPEN:
            return False
        return not (state is BreakerState.HALF_OPEN and self._probe_in_flight)

    def begin(self) -> None:
        """A request is going to this backend: in half-open it is the one probe."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_in_flight = True

    def abandon(self) -> None:
        """The request was cancelled by its consumer: it proved nothing either way."""
        self._probe_in_flight = False

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN:
            self._successes += 1
            if self._successes >= self.settings.success_threshold:
                self._close()

    def record_failure(self, error: BaseException) -> None:
        """Count a failure. Overloaded only marks the backend busy; ContextTooLong says nothing
        about the backend's health (that request was simply too long)."""
        self._probe_in_flight = False
        if isinstance(error, ContextTooLong):
            return
        if isinstance(error, Overloaded):
            wait = error.retry_after
            wait = self.settings.default_retry_after_s if wait is None else max(0.0, wait)
            self._busy_until = max(self._busy_until, self._clock() + wait)
            return
        self.last_error = str(error) if isinstance(error, BackendError) else type(error).__name__
        state = self.state
        if isinstance(error, Unauthorized):
            self.unauthorized = True
            self._open(self.settings.cooldown_s)
        elif state is BreakerState.HALF_OPEN:
            self._open(min(self._cooldown * 2, self.settings.max_cooldown_s))
        elif state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.settings.failure_threshold:
                self._open(self.settings.cooldown_s)

    def reason(self) -> str:
        """Why this backend is not taking requests now, as a phrase ("" if it is)."""
        busy = self.busy_for()
        if busy > 0:
            return f"{self.name} is busy (try again in {busy:.0f} s)"
        state = self.state
        if state is BreakerState.OPEN:
            if self.unauthorized:
                return f"{self.name} refused the API key"
            return f"{self.name} is failing ({self._failures_phrase()})"
        if state is BreakerState.HALF_OPEN and self._probe_in_flight:
            return f"{self.name} is being re-tested after failures"
        return ""

    def _failures_phrase(self) -> str:
        return self.last_error.rstrip(".") or "repeated errors"

    def _open(self, cooldown: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._cooldown = cooldown
        self._failures = 0
        self._successes = 0

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._cooldown = self.settings.cooldown_s
        self._failures = 0
        self._successes = 0
        self.unauthorized = False
