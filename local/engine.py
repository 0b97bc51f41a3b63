"""The resident local engine: mlx-lm behind the `router.protocol.Backend` contract.

Threads: one worker thread (`local/worker.py`) owns every MLX object (models, caches,
generators) and does all MLX work, fed by a queue. The asyncio side tokenizes the request,
checks it fits the context window, hands a `Sequence` to the worker and then only awaits a
per-request `asyncio.Queue`; after each step the worker delivers that step's events with
`loop.call_soon_threadsafe`, so the event loop never blocks on MLX. Closing the stream
(aclose / GeneratorExit) flags the sequence as cancelled and wakes the worker, which drops it
at its next step (between two prefill chunks, too). If the worker fails, every open stream
ends with Unavailable. `capabilities()` reads the load snapshot the worker publishes after
each step, never the worker's own lists.

Scheduling (`local/scheduler.py` decides, `local/runner.py` executes): a request alone runs on
the single-stream path (with the draft model, speculative); requests that arrive meanwhile
join a continuous batch, into which the running single stream moves after its current step
without re-prefilling. Long prompts are prefilled in chunks between decode steps. Each
conversation's KV cache is kept after its turn (LRU, `cache_budget_bytes`) and reused by the
next turn (`local/kvcache.py`). A request naming an adapter runs on its own lane: a second
model object that shares the base weights, with the adapter's LoRA layers on top, read off
the worker's thread and reloaded when the adapter's files change (`local/adapters.py`).

The context window the engine admits is the one the memory guard planned the KV cache for
(at most GUARD_CONTEXT_CAP tokens unless `context_window` says otherwise): a longer chat is
refused with ContextTooLong, which the router reads as "send it to the cloud".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from local.chatprompt import render_prompt
from local.loading import Loaded
from local.scheduler import CHUNK_TOKENS
from local.sequence import Sequence
from local.streamparse import answer_parser
from local.worker import LoadSnapshot, Stop, Wake, Worker, WorkerSettings
from router.protocol import (
    BackendError,
    Capabilities,
    ChatRequest,
    ContextTooLong,
    Final,
    Health,
    Load,
    ModelError,
    StreamEvent,
    TextDelta,
    Unavailable,
)

__all__ = ["LocalEngine", "encode_prompt"]

# Without an explicit context window, the memory guard plans the KV cache for at most this
# many tokens (the cache grows with use; a 32k-token plan would refuse most laptops).
GUARD_CONTEXT_CAP = 8192


class LocalEngine:
    """The on-device backend: a resident mlx-lm model (and optional draft) behind one worker.

    `available_memory_bytes` (optional, not part of the shared interface) replaces the measured
    free memory in the memory guard; `memory_guard=False` skips the guard.
    `prefill_chunk_tokens`: prompt tokens prefilled per worker step (a cancellation or another
    answer waits at most that long).
    """

    name: str = "local"

    def __init__(
        self,
        model: str | Path,
        *,
        draft_model: str | Path | None = None,
        num_draft_tokens: int = 3,
        max_batch: int = 8,
        cache_budget_bytes: int = 512 * 2**20,
        context_window: int | None = None,
        adapter_resolver: Callable[[str], Path] | None = None,
        memory_guard: bool = True,
        available_memory_bytes: int | None = None,
        prefill_chunk_tokens: int = CHUNK_TOKENS,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if num_draft_tokens < 1:
            raise ValueError("num_draft_tokens must be at least 1")
        if prefill_chunk_tokens < 1:
            raise ValueError("prefill_chunk_tokens must be at least 1")
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.model_spec = model
        self.draft_spec = draft_model
        self.num_draft_tokens = num_draft_tokens
        self.max_batch = max_batch
        self.cache_budget_bytes = cache_budget_bytes
        self.adapter_resolver = adapter_resolver
        self.memory_guard = memory_guard
        self.available_memory_bytes = available_memory_bytes
        self._context_override = context_window
        self._worker: Worker | None = None
        self._starting: asyncio.Future[None] | None = None
        self._error: BackendError | None = None
        self._submitted = 0  # submissions handed to the worker (event-loop thread only)
        self.model_name = Path(str(model)).name or str(model)
        self._config_context = _configured_context(model)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model(s) on the worker thread; return when ready (idempotent)."""
        if self._starting is None:
            loop = asyncio.get_running_loop()
            self._starting = loop.create_future()
            starting = self._starting
            worker = Worker(self._settings())

            def ready(exc: BaseException | None) -> None:
                def settle() -> None:
                    if exc is None:
                        starting.set_result(None)
                        return
                    error = exc if isinstance(exc, BackendError) else ModelError(
                        f"cannot load {self.model_spec}: {exc}")
                    error.backend = "local"
                    self._error = error
                    starting.set_exception(error)

                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(settle)

            worker.ready = ready
            self._worker = worker
            worker.start()
        await asyncio.shield(self._starting)

    def _settings(self) -> WorkerSettings:
        return WorkerSettings(
            model=self.model_spec,
            draft_model=self.draft_spec,
            num_draft_tokens=self.num_draft_tokens,
            max_batch=self.max_batch,
            cache_budget_bytes=self.cache_budget_bytes,
            adapter_resolver=self.adapter_resolver,
            guard=self._check_memory if self.memory_guard else None,
            chunk_tokens=self.prefill_chunk_tokens,
        )

    def _check_memory(self, folder: Path, draft: Path | None) -> None:
        """The memory guard, run by the worker once the folders are known (before loading)."""
        from local.models import check_fits

        check_fits(folder, context_tokens=self._planned(_configured_context(folder)),
                   draft=draft, available_bytes=self.available_memory_bytes)

    def _planned(self, own: int | None) -> int:
        """The context window the memory guard plans for and the engine admits."""
        return self._context_override or min(own or 4096, GUARD_CONTEXT_CAP)

    @property
    def ready(self) -> bool:
        return (
            self._starting is not None
            and self._starting.done()
            and self._error is None
            and self._worker is not None
            and self._worker.is_alive()
            and not self._worker.dead
        )

    async def aclose(self) -> None:
        """Stop the worker and free the model (in-flight streams end with an error)."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if worker.is_alive():
            worker.inbox.put(Stop())
            await asyncio.to_thread(worker.join)
        self._error = Unavailable("the local engine was shut down", backend="local")
        import mlx.core as mx

        mx.clear_cache()

    # --- the contract --------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        """What the engine admits: the model's own window, capped where the memory guard
        planned the KV cache (more would run the device out of memory)."""
        if self._context_override:
            return self._context_override
        worker = self._worker
        main = worker.main if worker is not None else None
        own = _context_of(main.config) if main is not None else self._config_context
        return self._planned(own)

    def capabilities(self) -> Capabilities:
        """From the snapshot the worker published after its last step (immutable)."""
        worker = self._worker
        snap = worker.snapshot if worker is not None else LoadSnapshot()
        in_inbox = max(0, self._submitted - snap.taken) if worker is not None else 0
        return Capabilities(
            model=self.model_name,
            context_window=self.context_window,
            adapters=snap.adapters,
            load=Load(
                queue_depth=snap.queue_depth + in_inbox,
                active_sequences=snap.active,
                recent_tokens_per_s=snap.tokens_per_s,
            ),
        )

    async def health(self) -> Health:
        if self.ready:
            return Health(True, f"{self.model_name} loaded")
        if self._error is not None:
            return Health(False, str(self._error), error=self._error)
        if self._worker is not None and self._worker.dead:
            return Health(False, "the local engine stopped; restart tandem")
        return Health(False, "loading" if self._starting else "not started")

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream the answer to `request`; closing the generator cancels it."""
        submitted = time.perf_counter()  # the time to first token counts templating too
        await self._ensure_started()
        worker = self._worker
        main = worker.main if worker is not None else None
        if worker is None or main is None or not worker.is_alive() or worker.dead:
            raise Unavailable("the local engine is not running; restart tandem", backend="local")
        events: asyncio.Queue[TextDelta | Final | BackendError] = asyncio.Queue()
        post = functools.partial(worker.post, asyncio.get_running_loop(), events)
        seq = self._sequence(request, main, post, submitted)
        if not worker.submit(seq):
            raise Unavailable("the local engine is not running; restart tandem", backend="local")
        self._submitted += 1
        # Reasoning and tool calls split off the text (local/streamparse.py); None for a
        # model that does neither.
        parser = answer_parser(main.tokenizer, request, seq.prompt)
        ended = False
        try:
            while True:
                item = await events.get()
                if isinstance(item, BackendError):
                    ended = True
                    raise item
                if isinstance(item, Final):
                    ended = True
                    if parser is not None:
                        for event in parser.finish():
                            yield event
                        item = parser.final(item)
                    yield item
                    return
                if parser is not None:
                    for event in parser.feed_delta(item):
                        yield event
                    continue
                yield item
        finally:
            if not ended:
                seq.cancelled = True
                worker.inbox.put(Wake())

    async def _ensure_started(self) -> None:
        if self._error is not None:
            raise self._error
        await self.start()

    def _sequence(
        self, request: ChatRequest, main: Loaded, post: Callable[..., None], submitted: float
    ) -> Sequence:
        tokens = encode_prompt(main.tokenizer, request)
        window = self.context_window
        need = len(tokens) + request.sampling.max_tokens
        if need > window:
            raise ContextTooLong(
                f"the conversation needs {need} tokens ({len(tokens)} prompt + "
                f"{request.sampling.max_tokens} answer), more than this model's {window}; "
                "shorten it or let the cloud take it",
                prompt_tokens=len(tokens),
                context_window=window,
                backend="local",
            )
        return Sequence(
            request=request,
            prompt=tokens,
            post=post,
            detokenizer=main.tokenizer.detokenizer,
            eos_ids=frozenset(main.tokenizer.eos_token_ids),
            model_name=self.model_name,
            submitted_at=submitted,
        )


def encode_prompt(tokenizer: Any, request: ChatRequest) -> list[int]:
    """Chat template (with the generation prompt, tools, the thinking switch) + continue_from,
    as token ids (local/chatprompt.py)."""
    text = render_prompt(tokenizer, request)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = bos is None or not text.startswith(bos)
    return list(tokenizer.encode(text, add_special_tokens=add_special))


def _configured_context(spec: str | Path) -> int | None:
    """max_position_embeddings from a local folder's config.json, before anything loads."""
    import json

    try:
        config = json.loads((Path(str(spec)).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return _context_of(config) if isinstance(config, dict) else None


def _context_of(config: dict[str, Any]) -> int:
    for source in (config, config.get("text_config") or {}):
        value = source.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return 4096
