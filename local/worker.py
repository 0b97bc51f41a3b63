"""The engine's worker thread: it owns every MLX object and does all MLX work.

It blocks on its inbox while idle; while any lane has work it takes whatever has arrived
(new requests, wake-ups after a cancellation, stop) between steps, steps each lane once, then
delivers the events of that step to the asyncio side with one `call_soon_threadsafe` per event
loop (not one per token and sequence).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.batching import Lane, model_error
from local.kvcache import ConversationCaches
from local.loading import Loaded, load_adapter_model, load_main, resolve_folder
from local.sequence import Sequence
from router.protocol import BackendError, ModelError, Unavailable

__all__ = ["Stop", "Submit", "Wake", "Worker", "WorkerSettings"]


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What the worker loads and how it schedules (from the LocalEngine's arguments)."""

    model: str | Path
    draft_model: str | Path | None
    num_draft_tokens: int
    max_batch: int
    cache_budget_bytes: int
    adapter_resolver: Callable[[str], Path] | None
    guard: Callable[[Path, Path | None], None] | None = None
    """The memory guard: raises when the model (and draft) at these folders would not fit."""


RATE_WINDOW_S = 5.0


@dataclass(frozen=True, slots=True)
class Submit:
    seq: Sequence


@dataclass(frozen=True, slots=True)
class Stop:
    pass


class Wake:
    pass


class _TokenRate:
    """Aggregate decode tokens/s over the last few seconds (written by the worker)."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()
        self.seen_any = False

    def add(self, n: int) -> None:
        now = time.monotonic()
        self.seen_any = True
        self._events.append((now, n))
        while self._events and self._events[0][0] < now - RATE_WINDOW_S:
            self._events.popleft()

    def rate(self) -> float | None:
        if not self.seen_any:
            return None
        now = time.monotonic()
        events = [e for e in list(self._events) if e[0] >= now - RATE_WINDOW_S]
        if len(events) < 2:
            return 0.0
        span = now - events[0][0]
        return sum(n for _, n in events[1:]) / span if span > 0 else 0.0


class Worker(threading.Thread):
    """Owns the models and runs the lanes; everything here happens on this one thread."""

    def __init__(self, settings: WorkerSettings) -> None:
        super().__init__(name="tandem-mlx", daemon=True)
        self.settings = settings
        self.inbox: queue.SimpleQueue[Submit | Stop | Wake] = queue.SimpleQueue()
        self.lanes: dict[str | None, Lane] = {}
        self.main: Loaded | None = None
        self.draft: Loaded | None = None
        self.caches = ConversationCaches(settings.cache_budget_bytes)
        self.rate = _TokenRate()
        self.ready: Callable[[BaseException | None], None] = lambda e: None
        # Events produced during one step, delivered with one wake-up of each event loop per
        # step instead of one per token and sequence (8 sequences: 8× fewer wake-ups).
        self.outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any], Any]] = []

    def post(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[Any], item: Any) -> None:
        self.outbox.append((loop, events, item))

    def flush(self) -> None:
        if not self.outbox:
            return
        items, self.outbox = self.outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
        for loop, events, item in items:
            by_loop.setdefault(loop, []).append((events, item))
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(_deliver, batch)

    def run(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self.ready(exc)
            return
        self.ready(None)
        stopping = False
        while not stopping:
            busy = any(lane.has_work() for lane in self.lanes.values())
            stopping = self._drain(block=not busy)
            for lane in list(self.lanes.values()):
                if lane.has_work():
                    try:
                        lane.step()
                    except Exception as exc:  # a bug or fault: fail this lane, keep serving
                        lane.fail_all(model_error(exc))
            self.flush()
        error = Unavailable("the local engine was shut down", backend="local")
        for lane in self.lanes.values():
            lane.fail_all(error)
        self.flush()
        self.lanes.clear()
        self.caches.clear()
        self.main = self.draft = None

    def _drain(self, *, block: bool) -> bool:
        """Take every message waiting in the inbox; True when told to stop."""
        try:
            msg = self.inbox.get(block=block)
        except queue.Empty:
            return False
        while True:
            if isinstance(msg, Stop):
                return True
            if isinstance(msg, Submit):
                self._route(msg.seq)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return False

    def _load(self) -> None:
        from mlx_lm.utils import maybe_set_recommended_wired_limit

        settings = self.settings
        folder = resolve_folder(settings.model)
        draft = resolve_folder(settings.draft_model) if settings.draft_model is not None else None
        if settings.guard is not None:
            settings.guard(folder, draft)
        self.main = load_main(folder)
        if draft is not None:
            self.draft = load_main(draft)
            if self.draft.tokenizer.vocab_size != self.main.tokenizer.vocab_size:
                raise ModelError(
                    "the draft model does not share the target's tokenizer; pick a draft from "
                    "the same model family"
                )
        maybe_set_recommended_wired_limit()  # keep the weights resident on Apple silicon
        self.lanes[None] = self._lane(self.main.model, self.draft.model if self.draft else None)

    def _lane(self, model: Any, draft: Any | None) -> Lane:
        assert self.main is not None
        return Lane(
            model,
            frozenset(self.main.tokenizer.eos_token_ids),
            self.caches,
            draft_model=draft,
            num_draft_tokens=self.settings.num_draft_tokens,
            max_batch=self.settings.max_batch,
            on_tokens=self.rate.add,
        )

    def _route(self, seq: Sequence) -> None:
        if seq.cancelled:
            seq.finish("cancelled")
            return
        name = seq.request.adapter
        lane = self.lanes.get(name)
        if lane is None:
            try:
                lane = self._adapter_lane(name)
            except Exception as exc:
                error = exc if isinstance(exc, BackendError) else model_error(exc)
                error.backend = "local"
                seq.fail(error)
                return
        lane.submit(seq)

    def _adapter_lane(self, name: str | None) -> Lane:
        assert self.main is not None and name is not None
        resolver = self.settings.adapter_resolver
        if resolver is None:
            raise ModelError(f"adapter {name!r} was asked for, but this engine has no adapters")
        try:
            folder = Path(resolver(name))
        except Exception as exc:  # the resolver's own errors carry a sentence for a person
            raise ModelError(str(exc) or f"no adapter called {name!r}") from exc
        model = load_adapter_model(self.main, folder)
        lane = self._lane(model, None)
        self.lanes[name] = lane
        return lane


def _deliver(batch: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for events, item in batch:
        events.put_nowait(item)
