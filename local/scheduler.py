"""Who runs next on one lane, and how: pure decisions, no MLX (the runner executes them).

Like nano-vllm's scheduler: an explicit state machine and deques. A sequence moves

    WAITING ──admitted (a slot is free)──▶ PREFILLING ──prompt in the cache──▶ RUNNING ──▶ FINISHED
        └──────────────── cancelled (any state) ────────────────────────────────────────▲

- **Admission.** At most `max_batch` sequences hold a slot (prefilling or running); the rest
  wait in arrival order (the queue depth the router reads).
- **Chunked prefill.** An admitted sequence's prompt (what its kept cache does not already
  hold) is prefilled `chunk_tokens` at a time, one chunk per step, between decode steps of the
  others: a long prompt neither stalls the running answers nor keeps a cancellation waiting
  for the whole prefill. The last piece (at most one chunk) is fed by the decode path itself.
- **Single stream or batch.** A sequence that is ready alone (nothing else running, prefilling
  or waiting) runs on the single-stream path (speculative with a draft model). When another
  becomes ready while a single stream runs, the single stream moves into the batch (with its
  cache: no second prefill), and both continue there; the batch runs until it empties.
- **Cancellation.** A sequence whose consumer closed the stream is taken out at the start of
  the next step, whatever its state; the runner keeps what its cache holds for the next turn.

The scheduler reads two things of a sequence: `cancelled` (set by the consumer) and
`prefill_left` (prompt tokens not yet in its cache, set by the runner).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from itertools import chain
from typing import Generic, Protocol, TypeVar

__all__ = ["Mode", "Placement", "Scheduled", "Scheduler", "SeqStatus"]

CHUNK_TOKENS = 512
"""Prompt tokens prefilled per step: small enough that Esc or a running answer waits at most
one chunk, large enough that the model runs at its prefill speed."""


class SeqStatus(Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    RUNNING = "running"
    FINISHED = "finished"


class Mode(Enum):
    """Which decode path runs this step."""

    SINGLE = "single"
    BATCH = "batch"


class Scheduled(Protocol):
    """What the scheduler needs of a sequence."""

    status: SeqStatus
    cancelled: bool
    prefill_left: int


T = TypeVar("T", bound=Scheduled)


@dataclass(slots=True)
class Placement(Generic[T]):
    """What the runner does this step, in this order."""

    to_batch: bool = False
    """Move the running single stream into the batch (before `insert`)."""
    single: T | None = None
    """Start this prefilled sequence on the single-stream path."""
    insert: list[T] = field(default_factory=list)
    """Insert these prefilled sequences into the batch."""
    chunk: T | None = None
    """Prefill one more chunk of this sequence's prompt."""
    decode: Mode | None = None
    """Then one decode step of this path (None: nothing runs)."""


class Scheduler(Generic[T]):
    """The state of one lane's sequences, and the decisions of each step."""

    def __init__(self, max_batch: int = 8, chunk_tokens: int = CHUNK_TOKENS) -> None:
        if max_batch < 1 or chunk_tokens < 1:
            raise ValueError("max_batch and chunk_tokens must be at least 1")
        self.max_batch = max_batch
        self.chunk_tokens = chunk_tokens
        self.waiting: deque[T] = deque()
        self.prefilling: deque[T] = deque()
        self.single: T | None = None
        self.batched: list[T] = []

    # --- what the worker and the load snapshot read -----------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        """Sequences holding a slot: prefilling or running."""
        return len(self.prefilling) + (self.single is not None) + len(self.batched)

    def has_work(self) -> bool:
        return bool(self.waiting) or self.active > 0

    def all(self) -> list[T]:
        """Every sequence not finished, in no particular order."""
        out = [*self.waiting, *self.prefilling, *self.batched]
        return out if self.single is None else [*out, self.single]

    # --- the steps ----------------------------------------------------------------------------

    def add(self, seq: T) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def reap(self) -> list[T]:
        """Take out every cancelled sequence; the runner drops those that hold a cache."""
        single = self.single
        if not (single is not None and single.cancelled) and not any(
            s.cancelled for s in chain(self.batched, self.prefilling, self.waiting)
        ):
            return []  # the common case, checked without building a list (every token)
        gone = [s for s in self.all() if s.cancelled]
        for seq in gone:
            self.finish(seq)
        return gone

    def admit(self) -> list[T]:
        """Waiting sequences that get a slot now (they start prefilling)."""
        admitted: list[T] = []
        while self.waiting and self.active < self.max_batch:
            seq = self.waiting.popleft()
            seq.status = SeqStatus.PREFILLING
            self.prefilling.append(seq)
            admitted.append(seq)
        return admitted

    def place(self) -> Placement[T]:
        """Where the prefilled sequences go, which prefill advances, which path decodes."""
        plan = Placement[T]()
        if not self.prefilling:  # the common case: only decoding
            plan.decode = Mode.SINGLE if self.single is not None else (
                Mode.BATCH if self.batched else None
            )
            return plan
        ready = [s for s in self.prefilling if s.prefill_left <= self.chunk_tokens]
        still = [s for s in self.prefilling if s.prefill_left > self.chunk_tokens]
        alone = (
            len(ready) == 1 and not still and not self.waiting
            and self.single is None and not self.batched
        )
        if ready and (alone or self.max_batch == 1) and self.single is None and not self.batched:
            plan.single = ready.pop(0)
        if ready and self.single is not None:
            plan.to_batch = True
        for seq in [plan.single, *ready]:
            if seq is not None:
                self.prefilling.remove(seq)
                seq.status = SeqStatus.RUNNING
        if plan.to_batch:
            assert self.single is not None
            self.batched.append(self.single)
            self.single = None
        if plan.single is not None:
            self.single = plan.single
        self.batched.extend(ready)
        plan.insert = ready
        plan.chunk = still[0] if still else None
        if self.single is not None:
            plan.decode = Mode.SINGLE
        elif self.batched:
            plan.decode = Mode.BATCH
        return plan

    def finish(self, seq: T) -> None:
        """`seq` is done (finished, failed or cancelled): it leaves every list."""
        if seq.status is SeqStatus.FINISHED:
            return
        if seq is self.single:
            self.single = None
        for queue in (self.waiting, self.prefilling):
            if seq in queue:
                queue.remove(seq)
        if seq in self.batched:
            self.batched.remove(seq)
        seq.status = SeqStatus.FINISHED
