"""The scheduling of one model variant on the worker thread: single stream or continuous batch.

A `Lane` serves the sequences of one model object (the base model, or the base model with one
LoRA adapter). Each call to `step()` does one unit of work, so the worker can look at its inbox
(new requests, cancellations) between steps:

- **Alone → single stream.** A request that finds the lane idle runs on mlx-lm's
  `generate_step` (or `speculative_generate_step` when a draft model is configured): the
  lowest-latency path, and the only one that speculates.
- **Arrivals join → batch.** When requests arrive while a single stream runs, the single stream
  finishes its current step, then moves into mlx-lm's `BatchGenerator` together with the new
  arrivals: its cache is aligned to the tokens it has produced and handed over, so it continues
  without prefilling again (it loses the draft model, which the batch path does not use). While a
  batch runs, new requests are inserted into it up to `max_batch`; past that they wait in order
  (the queue depth the router reads). The batch runs until it is empty; the next lone request
  takes the single-stream path again.
- **Cancellation.** A sequence whose consumer closed the stream is dropped at the start of the
  next `step()`, i.e. within one decode step, and its slot is free for the next arrival.
- **KV reuse.** Every sequence that ends (finished or cancelled) leaves its cache in the
  `ConversationCaches` store under its conversation; the next turn takes it back, trimmed to
  the common prefix, and prefills only the new tokens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from local.kvcache import CachedPrefix, ConversationCaches, align_cache, cache_offset, trim_to
from local.sequence import Sequence
from router.protocol import BackendError, FinishReason, ModelError

__all__ = ["Lane", "model_error"]

PREFILL_STEP = 2048


def _sampler(seq: Sequence) -> Any:
    from mlx_lm.sample_utils import make_sampler

    s = seq.request.sampling
    if s.seed is not None:
        import mlx.core as mx

        mx.random.seed(s.seed)  # MLX's generator is global: exact only for a lone request
    return make_sampler(temp=s.temperature, top_p=s.top_p)


class _Single:
    """A sequence on the single-stream path: the token generator and the caches it fills."""

    def __init__(self, seq: Sequence, tokens: Iterator[tuple[int, bool]], cache: list[Any],
                 draft_cache: list[Any] | None, num_draft: int = 0) -> None:
        self.seq = seq
        self.tokens = tokens
        self.cache = cache
        self.draft_cache = draft_cache
        self.num_draft = num_draft
        self.budget = seq.remaining  # the generator's max_tokens
        self.produced = 0
        self.round_start = 0
        self.run = 0

    def count(self, from_draft: bool) -> None:
        """Count draft proposals the way speculative_generate_step makes them: each round
        proposes min(num_draft, tokens left) and ends with one token of the target's."""
        if not self.num_draft:
            return
        self.produced += 1
        if from_draft:
            self.run += 1
            if self.produced == self.budget:  # the last round ended on a draft token
                self.seq.draft_tokens_proposed += self.run
                self.run = 0
        else:
            self.seq.draft_tokens_proposed += min(self.num_draft, self.budget - self.round_start)
            self.round_start = self.produced
            self.run = 0

    def settle(self) -> None:
        """The stream stops mid-round (finished, cancelled, moved to the batch): count the
        round's drafts that were accepted so far; the rest were discarded, not rejected."""
        if self.num_draft and self.run:
            self.seq.draft_tokens_proposed += self.run
            self.run = 0


class Lane:
    """One model object and the sequences that run on it."""

    def __init__(
        self,
        model: Any,
        eos_ids: frozenset[int],
        caches: ConversationCaches,
        *,
        draft_model: Any | None = None,
        num_draft_tokens: int = 3,
        max_batch: int = 8,
        on_tokens: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.model = model
        self.draft_model = draft_model
        self.num_draft_tokens = num_draft_tokens
        self.max_batch = max(1, max_batch)
        self.eos_ids = eos_ids
        self.caches = caches
        self.on_tokens = on_tokens
        self.waiting: deque[Sequence] = deque()
        self.single: _Single | None = None
        self.batch: Any | None = None  # mlx_lm BatchGenerator, made on first use
        self.by_uid: dict[int, Sequence] = {}

    # --- state the worker and the engine read ---------------------------------------------

    @property
    def active(self) -> int:
        return (1 if self.single else 0) + len(self.by_uid)

    def has_work(self) -> bool:
        return bool(self.waiting) or self.active > 0

    def submit(self, seq: Sequence) -> None:
        seq.state = "waiting"
        self.waiting.append(seq)

    def fail_all(self, error: BackendError) -> None:
        """Fail every sequence of this lane (the engine is shutting down or the lane broke)."""
        for seq in self._all():
            seq.fail(error)
        self.waiting.clear()
        self._drop_single()
        self.by_uid.clear()
        self.batch = None

    def _all(self) -> list[Sequence]:
        out = list(self.waiting) + list(self.by_uid.values())
        if self.single:
            out.append(self.single.seq)
        return out

    # --- one unit of work -----------------------------------------------------------------

    def step(self) -> None:
        self._reap_cancelled()
        self._admit()
        if self.single is not None:
            self._step_single()
        elif self.by_uid:
            self._step_batch()

    def _reap_cancelled(self) -> None:
        if any(s.cancelled for s in self.waiting):
            for seq in [s for s in self.waiting if s.cancelled]:
                seq.finish("cancelled")
            self.waiting = deque(s for s in self.waiting if not s.cancelled)
        if self.single is not None and self.single.seq.cancelled:
            single = self.single
            self._close_single(keep_cache=True)
            single.seq.finish("cancelled")
        gone = [uid for uid, s in self.by_uid.items() if s.cancelled]
        if gone:
            self._remove_from_batch(gone, "cancelled")

    def _admit(self) -> None:
        if not self.waiting:
            return
        if self.single is None and not self.by_uid:
            if len(self.waiting) == 1 or self.max_batch == 1:
                self._start_one(self._start_single, self.waiting.popleft())
                return
        elif self.single is not None:
            if self.max_batch == 1:
                return
            self._single_to_batch()
        room = self.max_batch - len(self.by_uid)
        while room > 0 and self.waiting:
            self._start_one(self._insert, self.waiting.popleft())
            room -= 1

    @staticmethod
    def _start_one(start: Callable[[Sequence], None], seq: Sequence) -> None:
        """Start one sequence; if its own set-up fails (its sampler, its prompt), fail it alone.
        Raising here would fail the whole lane, and this sequence, already out of `waiting`
        and not yet running, would be in no list: its caller would wait forever."""
        try:
            start(seq)
        except Exception as exc:
            seq.fail(model_error(exc))

    # --- the single stream ----------------------------------------------------------------

    def _take_cache(self, seq: Sequence) -> CachedPrefix | None:
        entry = self.caches.take(seq.key, seq.prompt) if seq.key is not None else None
        seq.cached_prompt_tokens = len(entry.tokens) if entry else 0
        return entry

    def _start_single(self, seq: Sequence) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step, speculative_generate_step
        from mlx_lm.models.cache import make_prompt_cache

        entry = self._take_cache(seq)
        cache = entry.cache if entry else make_prompt_cache(self.model)
        done = seq.cached_prompt_tokens
        new = mx.array(seq.prompt[done:], mx.uint32)
        sampler = _sampler(seq)
        draft_cache: list[Any] | None = None
        tokens: Iterator[tuple[int, bool]]
        if self.draft_model is not None:
            draft_cache = entry.draft_cache if entry and entry.draft_cache else None
            if draft_cache is None:
                draft_cache = make_prompt_cache(self.draft_model)
            behind = seq.prompt[cache_offset(draft_cache) : done]
            self._prefill(self.draft_model, draft_cache, behind)
            gen = speculative_generate_step(
                new, self.model, self.draft_model, prompt_cache=cache + draft_cache,
                num_draft_tokens=self.num_draft_tokens, max_tokens=seq.remaining,
                sampler=sampler, prefill_step_size=PREFILL_STEP,
            )
            tokens = ((int(t), bool(d)) for t, _, d in gen)
        else:
            gen2 = generate_step(new, self.model, prompt_cache=cache, max_tokens=seq.remaining,
                                 sampler=sampler, prefill_step_size=PREFILL_STEP)
            tokens = ((int(t), False) for t, _ in gen2)
        seq.state = "active"
        num_draft = self.num_draft_tokens if self.draft_model is not None else 0
        self.single = _Single(seq, tokens, cache, draft_cache, num_draft)

    @staticmethod
    def _prefill(model: Any, cache: list[Any], tokens: list[int]) -> None:
        import mlx.core as mx

        for i in range(0, len(tokens), PREFILL_STEP):
            model(mx.array(tokens[i : i + PREFILL_STEP], mx.uint32)[None], cache=cache)
            mx.eval([c.state for c in cache])

    def _step_single(self) -> None:
        single = self.single
        assert single is not None
        seq = single.seq
        try:
            token, from_draft = next(single.tokens)
        except StopIteration:
            self._finish_single("length")
            return
        except Exception as exc:  # the model failed on this request only
            self._drop_single()
            seq.fail(model_error(exc))
            return
        self.on_tokens(1)
        single.count(from_draft)
        reason = seq.add_token(token, from_draft=from_draft)
        if reason is not None:
            self._finish_single(reason)

    def _finish_single(self, reason: FinishReason) -> None:
        single = self.single
        assert single is not None
        self._close_single(keep_cache=True)
        single.seq.finish(reason, _peak_memory())

    def _release_single(self) -> _Single:
        """Stop the single stream's generator (its cache settled) and hand the stream back."""
        single = self.single
        assert single is not None
        self.single = None
        single.settle()
        close = getattr(single.tokens, "close", None)
        if close is not None:
            close()  # runs the speculative generator's cache rewind
        return single

    def _close_single(self, *, keep_cache: bool) -> None:
        single = self._release_single()
        if keep_cache:
            self._keep(single.seq, single.cache, single.draft_cache, single.seq.fed_tokens())

    def _drop_single(self) -> None:
        if self.single is not None:
            self._close_single(keep_cache=False)

    def _keep(self, seq: Sequence, cache: list[Any] | None, draft_cache: list[Any] | None,
              tokens: list[int]) -> None:
        if seq.key is None or not cache:
            return
        keep = align_cache(cache, tokens)
        if draft_cache is not None:
            keep = min(keep, cache_offset(draft_cache))
            trim_to(cache, keep)
            trim_to(draft_cache, keep)
        if keep > 0:
            self.caches.put(seq.key, CachedPrefix(tokens[:keep], cache, draft_cache))

    # --- the batch ------------------------------------------------------------------------

    def _batch(self) -> Any:
        if self.batch is None:
            from mlx_lm.generate import BatchGenerator

            self.batch = BatchGenerator(
                self.model,
                stop_tokens=[[t] for t in sorted(self.eos_ids)],
                completion_batch_size=self.max_batch,
                prefill_batch_size=self.max_batch,
                prefill_step_size=PREFILL_STEP,
            )
        return self.batch

    def _single_to_batch(self) -> None:
        """Hand the running single stream over to the batch, cache and all."""
        single = self._release_single()
        seq = single.seq
        tokens = seq.fed_tokens()
        keep = align_cache(single.cache, tokens)
        if keep >= len(tokens):  # the batch needs one token to feed
            keep = len(tokens) - 1
            trim_to(single.cache, keep)
        self._insert_tokens(seq, tokens[keep:], single.cache, tokens[:keep])

    def _insert(self, seq: Sequence) -> None:
        entry = self._take_cache(seq)
        done = seq.cached_prompt_tokens
        self._insert_tokens(seq, seq.prompt[done:], entry.cache if entry else None,
                            seq.prompt[:done])

    def _insert_tokens(self, seq: Sequence, new: list[int], cache: list[Any] | None,
                       cached: list[int]) -> None:
        batch = self._batch()
        (uid,) = batch.insert(
            [new], max_tokens=[seq.remaining], caches=[cache] if cache else None,
            all_tokens=[list(cached)], samplers=[_sampler(seq)],
        )
        seq.state = "active"
        self.by_uid[uid] = seq

    def _step_batch(self) -> None:
        batch = self._batch()
        try:
            _, responses = batch.next()
        except Exception as exc:  # a failure inside a batched step takes the whole batch
            error = model_error(exc)
            for seq in self.by_uid.values():
                seq.fail(error)
            self.by_uid.clear()
            self.batch = None
            return
        if responses:
            self.on_tokens(len(responses))
        stopped: list[int] = []
        for r in responses:
            owner = self.by_uid.get(r.uid)
            if owner is None or owner.done:
                continue
            seq = owner
            reason = seq.add_token(int(r.token))
            if r.finish_reason is not None:
                # BatchGenerator has already removed it and hands over its cache.
                del self.by_uid[r.uid]
                self._keep(seq, r.prompt_cache, None, list(r.all_tokens))
                seq.finish(reason or r.finish_reason, _peak_memory())
            elif reason is not None:
                stopped.append(r.uid)
                seq.finish(reason, _peak_memory())
        if stopped:
            self._remove_from_batch(stopped, None)

    def _remove_from_batch(self, uids: list[int], reason: FinishReason | None) -> None:
        caches = self._batch().remove(uids, return_prompt_caches=True)
        for uid in uids:
            seq = self.by_uid.pop(uid)
            if uid in caches:
                cache, tokens = caches[uid]
                self._keep(seq, list(cache), None, list(tokens))
            if reason is not None:
                seq.finish(reason)


def _peak_memory() -> int | None:
    import mlx.core as mx

    peak = int(mx.get_peak_memory())
    return peak or None


def model_error(exc: BaseException) -> ModelError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError) or "memory" in text.lower():
        return ModelError(f"the model ran out of memory ({text}); try a shorter prompt or a "
                          "smaller model")
    return ModelError(f"the model failed on this request ({text}); try again")

