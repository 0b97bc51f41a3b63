"""One request's life on the worker thread: its tokens, its text, its clock and its outbox.

The worker feeds a `Sequence` one sampled token at a time (`add_token`), whichever path
produced it (single stream, speculative, or batch). The sequence turns tokens into text deltas,
holds back text that could be the start of a stop string, and posts events to the asyncio side
through `post` (a thread-safe callable supplied by the engine). Each delta says how many
tokens it holds (text held back makes the next delta hold several). Its `status` and
`prefill_left` are the scheduler's (local/scheduler.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.scheduler import SeqStatus
from router.protocol import BackendError, ChatRequest, Final, FinishReason, TextDelta, Usage

__all__ = ["Sequence", "StopText"]

Post = Callable[[TextDelta | Final | BackendError], None]


class StopText:
    """Streams text while watching for stop strings, which never reach the output."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.emitted = 0
        self._longest = max((len(s) for s in stops), default=0)

    def feed(self, segment: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was hit)."""
        self.text += segment
        if not self.stops:
            out, self.emitted = self.text[self.emitted :], len(self.text)
            return out, False
        start = max(0, self.emitted - self._longest + 1)
        hits = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if hits:
            end = min(hits)
            out = self.text[self.emitted : end] if end > self.emitted else ""
            self.emitted = max(self.emitted, end)
            return out, True
        # Hold back a tail that could still grow into a stop string.
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        end = max(self.emitted, len(self.text) - hold)
        out, self.emitted = self.text[self.emitted : end], end
        return out, False

    def flush(self) -> str:
        """The held-back tail, at the end of a stream that did not stop on a stop string."""
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out


@dataclass(eq=False)
class Sequence:
    """A request being served: created by the engine, driven by the worker thread."""

    request: ChatRequest
    prompt: list[int]
    """The prompt's tokens (chat template + continue_from)."""
    post: Post
    detokenizer: Any
    eos_ids: frozenset[int]
    model_name: str
    submitted_at: float = field(default_factory=time.perf_counter)
    """perf_counter() when the request was handed to the engine (before templating and
    tokenization): the time to first token is measured from here."""
    generated: list[int] = field(default_factory=list)
    cached_prompt_tokens: int = 0
    draft_tokens_accepted: int = 0
    draft_tokens_proposed: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    peak_memory_bytes: int | None = None
    status: SeqStatus = SeqStatus.WAITING
    """The scheduler's state machine (worker thread only)."""
    prefill_left: int = 0
    """Prompt tokens not yet in this sequence's cache (set by the runner)."""
    adapter_version: str | None = None
    """The content hash of the adapter files this sequence runs with (set by the worker)."""
    eos_token: int | None = None
    """The end-of-sequence token that ended the answer, if one did (it is in the KV cache)."""
    done: bool = False
    cancelled: bool = False
    """Set from the asyncio side when the consumer closed the stream; read by the worker."""
    _stop: StopText = field(init=False)
    _stopped_on_text: bool = field(default=False, init=False)
    _unposted: int = field(default=0, init=False)
    """Tokens whose text has not gone out in a delta yet (held back, or not a whole char)."""

    def __post_init__(self) -> None:
        self._stop = StopText(self.request.sampling.stop)
        prior = self.request.continue_from
        if prior:
            # BPE detokenizers drop the leading space of an answer's first token; after a
            # partial answer that space is real text ("The capital of" + " France").
            try:
                self.detokenizer.text = prior
                self.detokenizer.offset = len(prior)
            except AttributeError:  # a detokenizer that derives its text from its tokens
                pass

    @property
    def max_tokens(self) -> int:
        return self.request.sampling.max_tokens

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.generated)

    @property
    def key(self) -> tuple[str | None, str] | None:
        """Where this conversation's cache is kept; None for a one-off request."""
        cid = self.request.conversation_id
        adapter = self.request.adapter
        if cid is None:
            return None
        # A retrained adapter is another model: its caches must not be reused.
        return (None if adapter is None else f"{adapter}@{self.adapter_version}", cid)

    def fed_tokens(self) -> list[int]:
        """Every token the model has seen or produced for this sequence, in order."""
        tail = [] if self.eos_token is None else [self.eos_token]
        return self.prompt + self.generated + tail

    def add_token(self, token: int, *, from_draft: bool = False) -> FinishReason | None:
        """Take one sampled token; return a finish reason when the sequence is complete."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        if token in self.eos_ids:
            self.eos_token = token
            return "stop"
        self.generated.append(token)
        self._unposted += 1
        if from_draft:
            self.draft_tokens_accepted += 1
        self.detokenizer.add_token(token)
        out, stopped = self._stop.feed(self.detokenizer.last_segment)
        if out:
            self._post_text(out)
        if stopped:
            self._stopped_on_text = True
            return "stop"
        if len(self.generated) >= self.max_tokens:
            return "length"
        return None

    def finish(self, reason: FinishReason, peak_memory_bytes: int | None = None) -> None:
        """Flush the text and post the final record (once)."""
        if self.done:
            return
        self.done = True
        if reason != "cancelled" and not self._stopped_on_text:
            self.detokenizer.finalize()
            out, stopped = self._stop.feed(self.detokenizer.last_segment)
            tail = out if stopped else out + self._stop.flush()
            if tail:
                self._post_text(tail)
        self.post(Final(reason, self.usage(peak_memory_bytes), "local", self.model_name,
                        self.request.adapter))

    def _post_text(self, text: str) -> None:
        self.post(TextDelta(text, tokens=self._unposted))
        self._unposted = 0

    def fail(self, error: BackendError) -> None:
        if not self.done:
            self.done = True
            self.post(error)

    def usage(self, peak_memory_bytes: int | None = None) -> Usage:
        ttft = None if self.first_token_at is None else self.first_token_at - self.submitted_at
        tps = None
        n = len(self.generated)
        if self.first_token_at is not None and self.last_token_at is not None and n > 1:
            span = self.last_token_at - self.first_token_at
            tps = (n - 1) / span if span > 0 else None
        return Usage(
            prompt_tokens=len(self.prompt),
            completion_tokens=n,
            ttft_s=ttft,
            decode_tokens_per_s=tps,
            cached_prompt_tokens=self.cached_prompt_tokens,
            draft_tokens_accepted=self.draft_tokens_accepted,
            draft_tokens_proposed=self.draft_tokens_proposed,
            peak_memory_bytes=peak_memory_bytes,
        )
