"""The engine's worker thread: it owns every MLX object and runs the lanes' steps.

One `Lane` per model variant (the base model, or the base model with one version of one
adapter): a pure `Scheduler` (local/scheduler.py) decides, a `Runner` (local/runner.py)
executes. The loop blocks on its inbox while idle; while any lane has work it takes whatever
has arrived between steps (new requests, wake-ups after a cancellation, adapters read, stop),
steps each lane once, publishes an immutable `LoadSnapshot` (whenever a step changed the
counts, and at least every PUBLISH_EVERY_S for the token rate) that the engine reads from any
thread, then delivers that step's events with one `call_soon_threadsafe` per event loop.

Nobody waits forever: a failure inside a lane fails that lane's sequences; a failure anywhere
else, or while failing a lane, ends the loop, and on its way out the worker fails every open
sequence (in the lanes, waiting for an adapter, or still in the inbox) and refuses new ones.

Adapters are read (resolved, read from disk, hashed) on a reader thread of its own; only the
MLX part (LoRA layers over the shared base weights, from bytes in memory) runs here, between
two steps. Lanes are keyed by the adapter's content hash, so a retrained adapter is loaded
again; the old version's lane is dropped once its answers are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.adapters import AdapterFiles, AdapterReader, build_adapter_model
from local.kvcache import ConversationCaches
from local.lane import Lane, TokenRate
from local.loading import Loaded, load_main, resolve_folder
from local.runner import Runner, model_error
from local.scheduler import CHUNK_TOKENS, Scheduler
from local.sequence import Sequence
from router.protocol import BackendError, ModelError, Unavailable

__all__ = ["LoadSnapshot", "Stop", "Submit", "Wake", "Worker", "WorkerSettings"]

PUBLISH_EVERY_S = 0.05

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
    chunk_tokens: int = CHUNK_TOKENS


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """The worker's load after its last step; replaced whole, never changed (any thread may
    read it while the worker works)."""

    queue_depth: int = 0
    active: int = 0
    adapters: tuple[str, ...] = ()
    tokens_per_s: float | None = None
    taken: int = 0
    """Submissions the worker has taken from its inbox so far."""


@dataclass(frozen=True, slots=True)
class Submit:
    seq: Sequence


@dataclass(frozen=True, slots=True)
class Stop:
    pass


class Wake:
    pass


@dataclass(frozen=True, slots=True)
class _AdapterRead:
    name: str
    files: AdapterFiles | None = None
    error: BackendError | None = None


class Worker(threading.Thread):
    """Owns the models and runs the lanes; everything MLX happens on this one thread."""

    def __init__(self, settings: WorkerSettings) -> None:
        super().__init__(name="tandem-mlx", daemon=True)
        self.settings = settings
        self.inbox: queue.SimpleQueue[Submit | Stop | Wake | _AdapterRead] = queue.SimpleQueue()
        self.lanes: dict[Any, Lane] = {}
        """None → the base model's lane; (name, digest) → an adapter version's."""
        self.main: Loaded | None = None
        self.draft: Loaded | None = None
        self.caches = ConversationCaches(settings.cache_budget_bytes)
        self.rate = TokenRate()
        self.ready: Callable[[BaseException | None], None] = lambda e: None
        self.snapshot = LoadSnapshot()
        """Read by the engine from the event loop's thread; replaced after every step."""
        self.dead = False
        self._lock = threading.Lock()  # `dead` and the last inbox drain agree under it
        self._taken = 0
        self._published: tuple[int, ...] = ()
        self._published_at = 0.0
        self._parked: dict[str, list[Sequence]] = {}  # waiting for their adapter to be read
        self._latest: dict[str, str] = {}  # adapter name → the digest of its files on disk
        self._reader = AdapterReader(settings.adapter_resolver)
        self._reads: queue.SimpleQueue[tuple[str, frozenset[tuple[str, str]]] | None] = (
            queue.SimpleQueue()
        )
        # Events produced during one step, delivered with one wake-up of each event loop per
        # step instead of one per token and sequence (8 sequences: 8× fewer wake-ups).
        self.outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any], Any]] = []

    # --- the engine's side ----------------------------------------------------------------

    def submit(self, seq: Sequence) -> bool:
        """Hand a sequence over; False when the worker has stopped (it will never be served)."""
        with self._lock:
            if self.dead:
                return False
            self.inbox.put(Submit(seq))
            return True

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

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self.ready(exc)
            self._fail_everything(Unavailable("the local model did not load", backend="local"))
            return
        self.ready(None)
        reader = threading.Thread(target=self._read_adapters, name="tandem-adapters", daemon=True)
        reader.start()
        error = Unavailable("the local engine was shut down", backend="local")
        try:
            self._loop()
        except BaseException as exc:  # a bug or a fault outside any one lane
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            error = Unavailable(
                f"the local engine stopped ({text}); restart tandem", backend="local"
            )
        finally:
            self._reads.put(None)
            self._fail_everything(error)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            busy = any(lane.has_work() for lane in self.lanes.values())
            stopping = self._drain(block=not busy)
            for key, lane in list(self.lanes.items()):
                if lane.has_work():
                    try:
                        lane.step()
                    except Exception as exc:  # a bug or fault in this lane: fail it, go on
                        lane.fail(model_error(exc))
                if key is not None and not lane.has_work() and self._latest.get(key[0]) != key[1]:
                    del self.lanes[key]  # an older version of a retrained adapter
            self._publish()  # before the events: whoever sees its end sees the load without it
            self.flush()

    def _publish(self) -> None:
        """A new snapshot when the counts changed, and at least every PUBLISH_EVERY_S for the
        token rate (not on every token: the decode loop is the hot path)."""
        lanes = self.lanes
        queue_depth = sum(lane.scheduler.queue_depth for lane in lanes.values()) + sum(
            len(v) for v in self._parked.values()
        )
        active = sum(lane.scheduler.active for lane in lanes.values())
        now = time.monotonic()
        counts = (queue_depth, active, self._taken, len(lanes))
        if counts == self._published and now - self._published_at < PUBLISH_EVERY_S:
            return
        self._published, self._published_at = counts, now
        self.snapshot = LoadSnapshot(
            queue_depth=queue_depth,
            active=active,
            adapters=tuple(sorted({key[0] for key in lanes if key is not None}))
            if len(lanes) > 1 else (),
            tokens_per_s=self.rate.rate(),
            taken=self._taken,
        )

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
                self._taken += 1
                self._route(msg.seq)
            elif isinstance(msg, _AdapterRead):
                self._adapter_read(msg)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return False

    def _fail_everything(self, error: BackendError) -> None:
        """The last thing the worker does: every open sequence gets `error`, none is left
        waiting, and later submissions are refused."""
        with self._lock:
            self.dead = True
            pending: list[Sequence] = []
            while True:
                try:
                    msg = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(msg, Submit):
                    pending.append(msg.seq)
        for lane in self.lanes.values():
            with contextlib.suppress(Exception):
                lane.fail(error)
            for seq in lane.scheduler.all():  # if failing the lane itself failed
                with contextlib.suppress(Exception):
                    seq.fail(error)
            with contextlib.suppress(Exception):  # MLX state dies on the thread that made it
                lane.runner.fail_all(error, [])
        for seq in [*pending, *(s for parked in self._parked.values() for s in parked)]:
            with contextlib.suppress(Exception):
                seq.fail(error)
        self._parked.clear()
        with contextlib.suppress(Exception):
            self.flush()
        self.lanes.clear()
        self.caches.clear()
        self.main = self.draft = None
        self.snapshot = LoadSnapshot(taken=self._taken)

    # --- loading --------------------------------------------------------------------------

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
        s = self.settings
        runner = Runner(
            model,
            frozenset(self.main.tokenizer.eos_token_ids),
            self.caches,
            draft_model=draft,
            num_draft_tokens=s.num_draft_tokens,
            max_batch=s.max_batch,
            chunk_tokens=s.chunk_tokens,
            on_tokens=self.rate.add,
        )
        return Lane(runner, Scheduler[Sequence](s.max_batch, s.chunk_tokens))

    # --- routing and adapters -------------------------------------------------------------

    def _route(self, seq: Sequence) -> None:
        if seq.cancelled:
            seq.finish("cancelled")
            return
        name = seq.request.adapter
        if name is None:
            self.lanes[None].submit(seq)
            return
        parked = self._parked.setdefault(name, [])
        parked.append(seq)
        if len(parked) == 1:  # one read per name at a time; later arrivals ride along
            loaded = frozenset(k for k in self.lanes if k is not None)
            self._reads.put((name, loaded))

    def _read_adapters(self) -> None:
        """The reader thread: resolve, read and hash adapters, never touching MLX."""
        while (job := self._reads.get()) is not None:
            name, loaded = job
            try:
                read = _AdapterRead(name, files=self._reader.read(name, loaded))
            except BackendError as exc:
                read = _AdapterRead(name, error=exc)
            except Exception as exc:
                read = _AdapterRead(name, error=model_error(exc))
            self.inbox.put(read)

    def _adapter_read(self, read: _AdapterRead) -> None:
        files = read.files
        if files is not None and files.key not in self.lanes and not files.weights:
            # Read without its bytes for a version we held then, and have since dropped.
            self._reads.put((read.name, frozenset()))
            return
        waiting = self._parked.pop(read.name, [])
        lane: Lane | None = None
        error = read.error
        if files is not None:
            self._latest[files.name] = files.digest
            lane = self.lanes.get(files.key)
            if lane is None:
                try:
                    lane = self._adapter_lane(files)
                except BackendError as exc:
                    error = exc
                except Exception as exc:
                    error = model_error(exc)
        for seq in waiting:
            if lane is not None and files is not None:
                seq.adapter_version = files.digest
                lane.submit(seq)
            elif seq.cancelled:
                seq.finish("cancelled")
            else:
                assert error is not None
                error.backend = "local"
                seq.fail(error)

    def _adapter_lane(self, files: AdapterFiles) -> Lane:
        assert self.main is not None
        model = build_adapter_model(self.main.model, self.main.path, files)
        lane = self._lane(model, None)
        self.lanes[files.key] = lane
        return lane


def _deliver(batch: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for events, item in batch:
        events.put_nowait(item)
