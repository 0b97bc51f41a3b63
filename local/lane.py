"""One lane of the worker: a pure `Scheduler` decides, a `Runner` executes, one step at a time.

A lane serves one model variant (the base model, or one version of one adapter). A sequence
whose own set-up fails (its prompt, its sampler, its cache) fails alone; an error that escapes
`step()` is the worker's to handle (it fails the lane, and, if that fails too, everything).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from local.runner import Runner, model_error
from local.scheduler import Mode, Scheduler
from local.sequence import Sequence
from router.protocol import BackendError

__all__ = ["Lane", "TokenRate"]

RATE_WINDOW_S = 5.0


class TokenRate:
    """Aggregate decode tokens/s over the last few seconds (worker thread only)."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0
        self.seen_any = False

    def add(self, n: int) -> None:
        self.seen_any = True
        self._events.append((time.monotonic(), n))
        self._total += n

    def rate(self) -> float | None:
        if not self.seen_any:
            return None
        now = time.monotonic()
        while self._events and self._events[0][0] < now - RATE_WINDOW_S:
            self._total -= self._events.popleft()[1]
        if len(self._events) < 2:
            return 0.0
        span = now - self._events[0][0]
        return (self._total - self._events[0][1]) / span if span > 0 else 0.0


class Lane:
    """One model variant: the scheduler's decisions carried out by the runner, one step at a
    time. A sequence whose own set-up fails fails alone."""

    def __init__(self, runner: Runner, scheduler: Scheduler[Sequence]) -> None:
        self.runner = runner
        self.scheduler = scheduler

    @property
    def model(self) -> Any:
        return self.runner.model

    @model.setter
    def model(self, value: Any) -> None:
        self.runner.model = value

    @property
    def active(self) -> int:
        return self.scheduler.active

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def submit(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def step(self) -> None:
        s, r = self.scheduler, self.runner
        for seq in s.reap():
            self._alone(seq, r.drop)
            seq.finish("cancelled")
        for seq in s.admit():
            self._alone(seq, r.begin)
        plan = s.place()
        if plan.to_batch and r.single is not None:
            self._alone(r.single.seq, lambda _: r.single_to_batch())
        if plan.single is not None:
            self._alone(plan.single, r.start_single)
        for seq in plan.insert:
            self._alone(seq, r.insert)
        if plan.chunk is not None:
            self._alone(plan.chunk, r.prefill_chunk)
        ended: list[Sequence] = []
        if plan.decode is Mode.SINGLE and r.single is not None:
            ended = r.step_single()
        elif plan.decode is Mode.BATCH and r.by_uid:
            ended = r.step_batch()
        for seq in ended:
            s.finish(seq)

    def _alone(self, seq: Any, action: Callable[[Any], None]) -> None:
        try:
            action(seq)
        except Exception as exc:
            seq.fail(model_error(exc))
            self.scheduler.finish(seq)
            self.runner.prefills.pop(seq, None)

    def fail(self, error: BackendError) -> None:
        """Fail every sequence of this lane (the engine stops, or the lane broke)."""
        open_ = self.scheduler.all()
        for seq in open_:
            self.scheduler.finish(seq)
        self.runner.fail_all(error, open_)
