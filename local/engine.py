"""The resident local engine: mlx-lm behind the `router.protocol.Backend` contract.

Threads: one worker thread (`local/worker.py`) owns every MLX object (models, caches,
generators) and does all MLX work, fed by a queue. The asyncio side tokenizes the request,
checks it fits the context window, hands a `Sequence` to the worker and then only awaits a
per-request `asyncio.Queue`; after each step the worker delivers that step's events with
`loop.call_soon_threadsafe`, so the event loop never blocks on MLX. Closing the stream
(aclose / GeneratorExit) flags the sequence as cancelled and wakes the worker, which drops it
before its next decode step.

Scheduling (see `local/batching.py`): a request alone runs on the single-stream path (with the
draft model, speculative); requests that arrive meanwhile join a continuous batch, into which
the running single stream moves after its current step without re-prefilling. Each
conversation's KV cache is kept after its turn (LRU, `cache_budget_bytes`) and reused by the
next turn (`local/kvcache.py`). A request naming an adapter runs on its own lane: a second
model object that shares the base weights, with the adapter's LoRA layers on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from local.loading import Loaded
from local.sequence import Sequence
from local.worker import Stop, Submit, Wake, Worker, WorkerSettings
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
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if num_draft_tokens < 1:
            raise ValueError("num_draft_tokens must be at least 1")
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
        self._live: set[Sequence] = set()
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
        )

    def _check_memory(self, folder: Path, draft: Path | None) -> None:
        """The memory guard, run by the worker once the folders are known (before loading)."""
        from local.models import check_fits

        own = _configured_context(folder) or 4096
        planned = self._context_override or min(own, GUARD_CONTEXT_CAP)
        check_fits(folder, context_tokens=planned, draft=draft,
                   available_bytes=self.available_memory_bytes)

    @property
    def ready(self) -> bool:
        return (
            self._starting is not None
            and self._starting.done()
            and self._error is None
            and self._worker is not None
            and self._worker.is_alive()
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
        if self._context_override:
            return self._context_override
        worker = self._worker
        if worker is not None and worker.main is not None:
            return _context_of(worker.main.config)
        return self._config_context or 4096

    def capabilities(self) -> Capabilities:
        live = list(self._live)
        worker = self._worker
        adapters = tuple(sorted(k for k in (worker.lanes if worker else {}) if k is not None))
        return Capabilities(
            model=self.model_name,
            context_window=self.context_window,
            adapters=adapters,
            load=Load(
                queue_depth=sum(1 for s in live if s.state in ("new", "waiting")),
                active_sequences=sum(1 for s in live if s.state == "active"),
                recent_tokens_per_s=worker.rate.rate() if worker else None,
            ),
        )

    async def health(self) -> Health:
        if self.ready:
            return Health(True, f"{self.model_name} loaded")
        if self._error is not None:
            return Health(False, str(self._error))
        return Health(False, "loading" if self._starting else "not started")

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream the answer to `request`; closing the generator cancels it."""
        await self._ensure_started()
        worker = self._worker
        if worker is None or worker.main is None or not worker.is_alive():
            raise Unavailable("the local engine is not running; restart tandem", backend="local")
        events: asyncio.Queue[TextDelta | Final | BackendError] = asyncio.Queue()
        post = functools.partial(worker.post, asyncio.get_running_loop(), events)
        seq = self._sequence(request, worker.main, post)
        self._live.add(seq)
        worker.inbox.put(Submit(seq))
        ended = False
        try:
            while True:
                item = await events.get()
                if isinstance(item, BackendError):
                    ended = True
                    raise item
                if isinstance(item, Final):
                    ended = True
                    yield item
                    return
                yield item
        finally:
            self._live.discard(seq)
            if not ended:
                seq.cancelled = True
                worker.inbox.put(Wake())

    async def _ensure_started(self) -> None:
        if self._error is not None:
            raise self._error
        await self.start()

    def _sequence(self, request: ChatRequest, main: Loaded, post: Callable[..., None]) -> Sequence:
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
        )


def encode_prompt(tokenizer: Any, request: ChatRequest) -> list[int]:
    """Chat template (with the generation prompt) + continue_from, as token ids."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:  # a base model without a template: a plain transcript
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    text += request.continue_from
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
