"""How soon each side has lately started answering: the evidence the overflow rule weighs.

Overflow exists to answer sooner. When the cloud starts answering later than the busy device
does (a cloud far away or itself loaded; in this project's tests, vLLM on the same two CPU
cores as the device), overflowing makes answers slower: 16 chats overflowing from the device
to such a cloud had a p95 time to first token 6× the device's alone. So the hybrid backend
keeps a moving average of first-token times per side, and the policy only overflows when the
cloud is not known to be slower than the device under load.

The device's figure comes only from answers that started while another was running on it
(an idle device answering in 20 ms says nothing about a busy one). A figure older than
`memory_s` is forgotten, so a cloud that was slow once gets tried again.
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
    """Exponential moving averages of time to first token, per side ("local" under load,
    "cloud"), each forgotten `memory_s` after its last sample."""

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

    def record(self, side: str, seconds: float) -> None:
        now = self._clock()
        current = self._averages.get(side)
        if current is None or now - current.at > self.memory_s:
            self._averages[side] = _Average(seconds, now)
        else:
            current.value += self.weight * (seconds - current.value)
            current.at = now

    def recent(self, side: str) -> float | None:
        """The side's average, or None when it has no sample younger than `memory_s`."""
        current = self._averages.get(side)
        if current is None or self._clock() - current.at > self.memory_s:
            return None
        return current.value
