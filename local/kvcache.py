"""Per-conversation KV caches, kept between turns and bounded by a byte budget (LRU).

A conversation's next turn re-renders the whole history, so its token list starts with the
tokens of the previous turn (prompt + answer) up to where the history changed: usually the very
end, after an edit somewhere in the middle. `ConversationCaches.take()` hands out the stored
cache trimmed to the longest common token prefix, so only the new tokens are prefilled and the
time to first token does not grow with the length of the history.

Only the worker thread touches this store (MLX arrays are not shared across threads).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CachedPrefix", "ConversationCaches", "align_cache", "common_prefix_len"]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens the two lists share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def cache_offset(cache: Sequence[Any]) -> int:
    """Tokens held by a model's per-layer cache list (the first layer speaks for all)."""
    if not cache:
        return 0
    return int(cache[0].offset)


def trim_to(cache: Sequence[Any], keep: int) -> None:
    """Trim every layer's cache so that it holds exactly its first `keep` tokens."""
    from mlx_lm.models.cache import trim_prompt_cache

    excess = cache_offset(cache) - keep
    if excess > 0:
        trim_prompt_cache(list(cache), excess)


def align_cache(cache: Sequence[Any], tokens: Sequence[int]) -> int:
    """Make `cache` hold a prefix of `tokens` and return that prefix's length.

    After a stream stops, a cache may hold slightly more than the tokens we know of (a
    speculative step processed draft tokens past a stop) or slightly fewer (the last sampled
    token was never fed back): trimming to the shorter of the two keeps cache and tokens in step.
    """
    keep = min(cache_offset(cache), len(tokens))
    trim_to(cache, keep)
    return keep


def nbytes(cache: Sequence[Any] | None) -> int:
    return sum(int(c.nbytes) for c in cache or ())


@dataclass(slots=True)
class CachedPrefix:
    """A conversation's kept cache: the tokens it holds, the target's layers, the draft's."""

    tokens: list[int]
    cache: list[Any]
    draft_cache: list[Any] | None = None
    size: int = field(default=0)

    def __post_init__(self) -> None:
        self.size = nbytes(self.cache) + nbytes(self.draft_cache)


class ConversationCaches:
    """LRU store of `CachedPrefix` per key (adapter, conversation id), within `budget_bytes`."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Hashable, CachedPrefix] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def take(self, key: Hashable, tokens: Sequence[int]) -> CachedPrefix | None:
        """Remove and return the kept cache for `key`, trimmed to its common prefix with `tokens`.

        At least one token of `tokens` is left out of the cache: generation needs a token to
        feed. None when nothing useful is kept. The caller owns the entry until it `put`s it back.
        """
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._bytes -= entry.size
        keep = min(common_prefix_len(entry.tokens, tokens), len(tokens) - 1)
        if keep <= 0:
            return None
        keep = min(keep, align_cache(entry.cache, entry.tokens))
        trim_to(entry.cache, keep)
        if entry.draft_cache is not None:
            if cache_offset(entry.draft_cache) >= keep:
                trim_to(entry.draft_cache, keep)
            else:
                entry.draft_cache = None  # shorter than the target's: rebuilt by prefill
        entry.tokens = list(tokens[:keep])
        return entry

    def put(self, key: Hashable, entry: CachedPrefix) -> None:
        """Keep `entry` as the most recent; evict the least recently used past the budget."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        entry.size = nbytes(entry.cache) + nbytes(entry.draft_cache)
        if entry.size > self.budget_bytes:
            return  # would evict everything else and still not fit
        self._entries[key] = entry
        self._bytes += entry.size
        while self._bytes > self.budget_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
