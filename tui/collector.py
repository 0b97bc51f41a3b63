"""Python's garbage collector, kept off the frames of a streaming answer.

A full (generation 2) collection walks every object the app holds: Textual's widgets, Rich's
renderables, the tokenizer. Here that took 60-200 ms, several times per long answer, and each
one was a frame the screen missed. Two measures: whatever is alive once the model has loaded
lives as long as the app, so it is frozen out of the collector's view; and while an answer
streams, only the young generations are collected (cheap, < 2 ms), the full collection waiting
until the answer is on screen.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

__all__ = ["defer_full_collections", "freeze_long_lived"]

_NEVER = 1 << 30


def freeze_long_lived() -> None:
    """Move every object alive now out of the collector's reach (`gc.freeze`)."""
    gc.freeze()


def defer_full_collections() -> Callable[[], None]:
    """Collect only the young generations from now on; call the returned function to restore
    the thresholds (the full collection that came due then runs at the next young one)."""
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)

    def resume() -> None:
        gc.set_threshold(young, middle, full)

    return resume
