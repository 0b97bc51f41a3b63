"""The MLX side of one lane: executes what `local/scheduler.py` decides, on the worker thread.

A `Runner` holds one model object (the base model, or the base model with one LoRA adapter)
and, per sequence, the MLX state the scheduler does not see:

- **prefill** — the sequence's cache (its kept cache from the last turn, trimmed to the common
  prefix, or a fresh one) and how far the prompt is in it; `prefill_chunk` feeds one more
  chunk (to the draft model's cache too, when there is one);
- **single stream** — mlx-lm's `generate_step` (or `speculative_generate_step` with a draft
  model) fed the rest of the prompt: the lowest-latency path, and the only one that speculates;
- **batch** — mlx-lm's `BatchGenerator`: prefilled sequences are inserted with their caches,
  the single stream moves in with its cache aligned to the tokens it produced (no second
  prefill; it loses the draft model, which the batch path does not use).

Every sequence that ends (finished or cancelled) leaves its cache in `ConversationCaches`
under its conversation, so the next turn prefills only its new tokens. A failure of one
sequence's own set-up or step fails that sequence alone (`model_error`); a failure of a batched
step fails the batch; anything else propagates to the worker, which fails every open sequence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from local.kvcache import CachedPrefix, ConversationCaches, align_cache, cache_offset, trim_to
from local.sequence import Sequence
from router.protocol import BackendError, FinishReason, ModelError

__all__ = ["Runner", "model_error"]

PREFILL_STEP = 2048
"""mlx-lm's own prefill step, for the last piece of a prompt (at most one scheduler chunk)."""


def _sampler(seq: Sequence) -> Any:
    from mlx_lm.sample_utils import make_sampler

    s = seq.request.sampling
    if s.seed is not None:
        import mlx.core as mx

        mx.random.seed(s.seed)  # MLX's generator is global: exact only for a lone request
    return make_sampler(temp=s.temperature, top_p=s.top_p)


@dataclass(slots=True)
class _Prefill:
    """A sequence's cache while its prompt goes in: `done` prompt tokens are in it."""

    cache: list[Any]
    draft_cache: list[Any] | None
    done: int


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


class Runner:
    """One model object and the MLX state of the sequences the scheduler gave it."""

    def __init__(
        self,
        model: Any,
        eos_ids: frozenset[int],
        caches: ConversationCaches,
        *,
        draft_model: Any | None = None,
        num_draft_tokens: int = 3,
        max_batch: int = 8,
        chunk_tokens: int = 512,
        on_tokens: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.model = model
        self.draft_model = draft_model
        self.num_draft_tokens = num_draft_tokens
        self.max_batch = max(1, max_batch)
        self.chunk_tokens = chunk_tokens
        self.eos_ids = eos_ids
        self.caches = caches
        self.on_tokens = on_tokens
        self.prefills: dict[Sequence, _Prefill] = {}
        self.single: _Single | None = None
        self.batch: Any | None = None  # mlx_lm BatchGenerator, made on first use
        self.by_uid: dict[int, Sequence] = {}

    # --- prefill --------------------------------------------------------------------------

    def begin(self, seq: Sequence) -> None:
        """Take the sequence's kept cache (or a fresh one); sets `seq.prefill_left`."""
        from mlx_lm.models.cache import make_prompt_cache

        entry = self.caches.take(seq.key, seq.prompt) if seq.key is not None else None
        seq.cached_prompt_tokens = len(entry.tokens) if entry else 0
        cache = entry.cache if entry else make_prompt_cache(self.model)
        draft_cache: list[Any] | None = None
        if self.draft_model is not None:
            draft_cache = entry.draft_cache if entry and entry.draft_cache else None
            if draft_cache is None:
                draft_cache = make_prompt_cache(self.draft_model)
        done = seq.cached_prompt_tokens
        self.prefills[seq] = _Prefill(cache, draft_cache, done)
        seq.prefill_left = len(seq.prompt) - done

    def prefill_chunk(self, seq: Sequence) -> None:
        """Feed one chunk of the prompt (never its last token: decoding needs one to feed)."""
        state = self.prefills[seq]
        end = min(state.done + self.chunk_tokens, len(seq.prompt) - 1)
        chunk = seq.prompt[state.done : end]
        if self.draft_model is not None and state.draft_cache is not None:
            behind = seq.prompt[cache_offset(state.draft_cache) : end]
            _feed(self.draft_model, state.draft_cache, behind)
        _feed(self.model, state.cache, chunk)
        state.done = end
        seq.prefill_left = len(seq.prompt) - end

    def _keep_prefill(self, seq: Sequence) -> None:
        state = self.prefills.pop(seq, None)
        if state is not None:
            self._keep(seq, state.cache, state.draft_cache, seq.prompt[: state.done])

    # --- the single stream ----------------------------------------------------------------

    def start_single(self, seq: Sequence) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step, speculative_generate_step

        state = self.prefills.pop(seq)
        cache, draft_cache, done = state.cache, state.draft_cache, state.done
        new = mx.array(seq.prompt[done:], mx.uint32)
        sampler = _sampler(seq)
        tokens: Iterator[tuple[int, bool]]
        if self.draft_model is not None and draft_cache is not None:
            _feed(self.draft_model, draft_cache, seq.prompt[cache_offset(draft_cache) : done])
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
        num_draft = self.num_draft_tokens if self.draft_model is not None else 0
        self.single = _Single(seq, tokens, cache, draft_cache, num_draft)

    def step_single(self) -> list[Sequence]:
        """One token of the single stream; the sequences that ended."""
        single = self.single
        assert single is not None
        seq = single.seq
        try:
            token, from_draft = next(single.tokens)
        except StopIteration:
            return self._finish_single("length")
        except Exception as exc:  # the model failed on this request only
            self._close_single(keep_cache=False)
            seq.fail(model_error(exc))
            return [seq]
        self.on_tokens(1)
        single.count(from_draft)
        reason = seq.add_token(token, from_draft=from_draft)
        return [] if reason is None else self._finish_single(reason)

    def _finish_single(self, reason: FinishReason) -> list[Sequence]:
        single = self.single
        assert single is not None
        self._close_single(keep_cache=True)
        single.seq.finish(reason, _peak_memory())
        return [single.seq]

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

    def single_to_batch(self) -> None:
        """Hand the running single stream over to the batch, cache and all."""
        single = self._release_single()
        seq = single.seq
        tokens = seq.fed_tokens()
        keep = align_cache(single.cache, tokens)
        if keep >= len(tokens):  # the batch needs one token to feed
            keep = len(tokens) - 1
            trim_to(single.cache, keep)
        self._insert_tokens(seq, tokens[keep:], single.cache, tokens[:keep])

    def insert(self, seq: Sequence) -> None:
        """Insert a prefilled sequence into the batch (the batch feeds the rest)."""
        state = self.prefills.pop(seq)
        done = state.done
        cache = state.cache if done > 0 else None
        self._insert_tokens(seq, seq.prompt[done:], cache, seq.prompt[:done])

    def _insert_tokens(self, seq: Sequence, new: list[int], cache: list[Any] | None,
                       cached: list[int]) -> None:
        batch = self._batch()
        (uid,) = batch.insert(
            [new], max_tokens=[seq.remaining], caches=[cache] if cache else None,
            all_tokens=[list(cached)], samplers=[_sampler(seq)],
        )
        self.by_uid[uid] = seq

    def step_batch(self) -> list[Sequence]:
        """One decode step of the batch; the sequences that ended."""
        batch = self._batch()
        try:
            _, responses = batch.next()
        except Exception as exc:  # a failure inside a batched step takes the whole batch
            error = model_error(exc)
            failed = list(self.by_uid.values())
            for seq in failed:
                seq.fail(error)
            self.by_uid.clear()
            self.batch = None
            return failed
        if responses:
            self.on_tokens(len(responses))
        ended: list[Sequence] = []
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
                ended.append(seq)
            elif reason is not None:
                stopped.append(r.uid)
                seq.finish(reason, _peak_memory())
                ended.append(seq)
        if stopped:
            self._remove_from_batch(stopped)
        return ended

    def _remove_from_batch(self, uids: list[int]) -> None:
        caches = self._batch().remove(uids, return_prompt_caches=True)
        for uid in uids:
            seq = self.by_uid.pop(uid)
            if uid in caches:
                cache, tokens = caches[uid]
                self._keep(seq, list(cache), None, list(tokens))

    # --- ending ---------------------------------------------------------------------------

    def drop(self, seq: Sequence) -> None:
        """A cancelled sequence leaves, wherever it is; what its cache holds is kept."""
        if seq in self.prefills:
            self._keep_prefill(seq)
        elif self.single is not None and self.single.seq is seq:
            self._close_single(keep_cache=True)
        else:
            uid = next((u for u, s in self.by_uid.items() if s is seq), None)
            if uid is not None:
                self._remove_from_batch([uid])

    def fail_all(self, error: BackendError, sequences: list[Sequence]) -> None:
        """Fail `sequences` and forget every MLX state (this lane broke, or the engine stops).
        Each step is guarded: a second failure here must not leave anyone waiting."""
        for seq in sequences:
            with contextlib.suppress(Exception):  # the worker's last resort fails it again
                seq.fail(error)
        self.prefills.clear()
        self.by_uid.clear()
        self.batch = None
        single, self.single = self.single, None
        if single is not None:
            close = getattr(single.tokens, "close", None)
            with contextlib.suppress(Exception):  # the generator's own failure: nothing kept
                if close is not None:
                    close()


def _feed(model: Any, cache: list[Any], tokens: list[int]) -> None:
    """Run `tokens` through `model` into `cache` (in mlx-lm's prefill steps)."""
    import mlx.core as mx

    for i in range(0, len(tokens), PREFILL_STEP):
        model(mx.array(tokens[i : i + PREFILL_STEP], mx.uint32)[None], cache=cache)
        mx.eval([c.state for c in cache])


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
