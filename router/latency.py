"""How soon each side has lately started answering, per answer it already had in progress:
the evidence the overflow rule weighs to estimate each side's wait.

Overflow exists to answer sooner. When the cloud starts answering later than the busy device
would (a cloud far away or itself loaded; in this project's tests, vLLM on the same two CPU
cores as the device), overflowing makes answers slower: 16 chats overflowing from the device
to such a cloud had a p95 time to first token 6× the device's alone. A single average per side
is not enough, though: once the overflow is declined, the cloud's average never moves again
while the device's queue grows. So each sample is divided by one plus the answers that side
already had in progress when it started (a batch, or a queue, shares its compute among them),
and the policy estimates a new answer's wait on each side as that figure times one plus the
answers in progress there now: the busier side is the slower one, as it is.

A figure older than `memory_s` is forgotten, so a cloud that was slow once gets tried again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FirstTokenTimes"]


@dataclass(slots=True)
class _Average:
    value: float
    at: float


class FirstTokenTimes:
    """Exponential moving averages of time to first token per answer in progress, per side
    ("local", "cloud"), each forgotten `memory_s` after its last sample."""

    def __init__(
        self,
        *,
        memory_s: float = 120.0,
        weight: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if memory_s <= 0 or not 0.0 < weight <= 1.0:
            raise ValueError("memory_s must be positive and weight in (0, 1]")
        self.memory_s = memory_s
        self.weight = weight
        self._clock = clock
        self._averages: dict[str, _Average] = {}

    def record(self, side: str, seconds: float, ahead: int = 0) -> None:
        """A first token after `seconds`, for an answer that started with `ahead` others in
        progress on that side."""
        seconds /= 1 + max(ahead, 0)
        now = self._clock()
        current = self._averages.get(side)
        if current is None or now - current.at > self.memory_s:
            self._averages[side] = _Average(seconds, now)
        else:
            current.value += self.weight * (seconds - current.value)
            current.at = now

    def recent(self, side: str) -> float | None:
        """The side's average per answer in progress (a new answer with n ahead of it waits
        about this × (1 + n)), or None when it has no sample younger than `memory_s`."""
        current = self._averages.get(side)
        if current is None or self._clock() - current.at > self.memory_s:
            return None
        return current.value
