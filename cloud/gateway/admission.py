"""Admission control: answer 429 at once when every replica is saturated, instead of queueing.

An overflow service must fail fast so the desktop answers locally. The decision uses only
state already in memory, so a rejection costs microseconds:

- each vLLM replica's own view, polled from its `/metrics` in the background (cloud/gateway/
  pool.py): requests waiting to start (`vllm:num_requests_waiting`) and KV cache usage
  (`vllm:kv_cache_usage_perc`). The service is saturated only when every replica in rotation
  is; `max_in_flight` is per replica in rotation;
- the gateway's in-flight count (sent upstream, not finished): it reacts before the next poll;
- per key: a concurrency limit and a token bucket (rate + burst).

Desktops (the tandem client says so with `X-Tandem-Fallback`) have their own model and get the
429 at once. Other API clients have nothing to fall back to: `admit_waiting` holds them in a
short, bounded queue (`max_queue_wait_s`, at most `max_queued` at a time) until a slot frees,
and only then answers 429.

When /metrics cannot be read, the last load read goes stale: after `stale_after_s` the gateway
no longer trusts it, says so once in its log (and in `tandem_gateway_engine_load_stale`), and
admits conservatively, at most a quarter of `max_in_flight`, until a poll succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

import httpx

from cloud.gateway.pool import EngineLoad, Replica, ReplicaPool, parse_metrics

__all__ = [
    "Admission",
    "AdmissionConfig",
    "EngineLoad",
    "Rejection",
    "Ticket",
    "parse_metrics",
    "retry_after_header",
]

log = logging.getLogger("tandem.gateway")


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Thresholds; the profile's [gateway] section fills these."""

    max_waiting: int = 4
    """Reject while vLLM has more than this many requests waiting to start."""
    max_kv_cache_usage: float = 0.95
    """Reject while vLLM's KV cache is fuller than this fraction."""
    max_in_flight: int = 64
    """Reject while the gateway has this many requests upstream."""
    per_key_concurrency: int = 4
    rate_per_second: float = 5.0
    burst: int = 20
    poll_interval_s: float = 0.25
    retry_after_s: float = 1.0
    """What a saturated 429 tells the client to wait."""
    stale_after_s: float = 2.0
    """A load read longer ago than this (the poll keeps failing) is not trusted."""
    max_queue_wait_s: float = 0.0
    """How long a client without a fallback (not a desktop) may wait for a slot before a 429."""
    max_queued: int = 64
    """Requests waiting for a slot at once; past that, a 429 at once."""

    def __post_init__(self) -> None:
        if self.max_waiting < 0 or self.max_in_flight < 1 or self.per_key_concurrency < 1:
            raise ValueError(
                "admission limits: max-waiting ≥ 0, max-in-flight and per-key-concurrency ≥ 1"
            )
        if self.rate_per_second <= 0 or self.burst < 1:
            raise ValueError("admission limits: rate-per-second > 0 and burst ≥ 1")
        if self.max_queue_wait_s < 0 or self.max_queued < 0:
            raise ValueError("admission limits: max-queue-wait-s and max-queued ≥ 0")


def retry_after_header(seconds: float) -> str:
    """Whole seconds for Retry-After, rounded up: a wait under a second is "1", never "0"."""
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was not admitted: the 429's reason and Retry-After."""

    reason: str
    """Short and safe to show: "saturated", "key concurrency", "rate limit"."""
    retry_after_s: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class Ticket:
    """An admitted request; release() exactly once (the proxy does it when the stream ends)."""

    key: str
    _admission: Admission
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self.key)


class Admission:
    """The gateway's admission state (one per app; used from the event loop only)."""

    def __init__(
        self,
        config: AdmissionConfig,
        metrics_url: str | None = None,
        *,
        pool: ReplicaPool | None = None,
    ) -> None:
        self.config = config
        if pool is None:
            base = metrics_url.removesuffix("/metrics") if metrics_url else None
            pool = ReplicaPool((base,), poll_interval_s=config.poll_interval_s)
        self.pool = pool
        pool.on_refresh = self._wake
        self.in_flight = 0
        self.queued = 0
        self.stale = False
        """No replica's load is known (its last good read is too old): admitting conservatively."""
        self._per_key: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._wakeup = asyncio.Event()

    @property
    def metrics_url(self) -> str | None:
        """Set when there is something to poll (kept for callers of the one-replica form)."""
        return "polled" if self.pool.polled else None

    @property
    def load(self) -> EngineLoad:
        """The first replica's load (the only one in the one-replica form)."""
        return self.pool.replicas[0].load

    @property
    def poll_failures(self) -> int:
        return self.pool.poll_failures

    def _in_rotation(self) -> list[Replica]:
        """Replicas serving with a load read recent enough to trust; updates `stale`."""
        now = time.monotonic()
        fresh = [r for r in self.pool.serving() if r.fresh(now, self.config.stale_after_s)]
        stale = not fresh
        if stale != self.stale:
            self.stale = stale
            if stale:
                log.warning(
                    "vLLM /metrics unreadable for %.1f s: admitting at most %d in flight "
                    "until it answers again", self.config.stale_after_s, self._stale_limit(),
                )  # fmt: skip
            else:
                log.info("vLLM /metrics readable again: admission back to normal")
        return fresh

    def _stale_limit(self) -> int:
        return max(1, self.config.max_in_flight // 4)

    def _saturated(self, replica: Replica) -> bool:
        c = self.config
        load = replica.load
        return load.waiting > c.max_waiting or load.kv_cache_usage > c.max_kv_cache_usage

    def admit(self, key: str) -> Ticket | Rejection:
        """Admit now or say why not. Never waits."""
        c = self.config
        fresh = self._in_rotation()
        limit = c.max_in_flight * len(fresh) if fresh else self._stale_limit()
        if self.in_flight >= limit or (fresh and all(self._saturated(r) for r in fresh)):
            return Rejection("saturated", c.retry_after_s)
        if self._per_key.get(key, 0) >= c.per_key_concurrency:
            return Rejection("key concurrency", c.retry_after_s)
        now = time.monotonic()
        bucket = self._buckets.setdefault(key, _Bucket(float(c.burst), now))
        bucket.tokens = min(
            float(c.burst), bucket.tokens + (now - bucket.updated) * c.rate_per_second
        )
        bucket.updated = now
        if bucket.tokens < 1.0:
            return Rejection("rate limit", (1.0 - bucket.tokens) / c.rate_per_second)
        bucket.tokens -= 1.0
        self.in_flight += 1
        self._per_key[key] = self._per_key.get(key, 0) + 1
        return Ticket(key, self)

    async def admit_waiting(self, key: str, wait_s: float) -> Ticket | Rejection:
        """Admit, or wait up to `wait_s` for a slot (a released ticket, a new load reading).
        A rate-limit rejection is answered at once: waiting would only spend the key's budget."""
        deadline = time.monotonic() + wait_s
        decision = self.admit(key)
        while isinstance(decision, Rejection) and decision.reason != "rate limit":
            left = deadline - time.monotonic()
            if left <= 0 or self.queued >= self.config.max_queued:
                return decision
            self.queued += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), left)
            finally:
                self.queued -= 1
            decision = self.admit(key)
        return decision

    def _wake(self) -> None:
        """Let every queued request look again (a new Event for the next round of waiters)."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _release(self, key: str) -> None:
        self.in_flight -= 1
        left = self._per_key.get(key, 1) - 1
        if left:
            self._per_key[key] = left
        else:
            self._per_key.pop(key, None)
        self._wake()

    # --- the background poller (the pool's) -------------------------------------------------

    def start(self, client: httpx.AsyncClient) -> None:
        self.pool.start(client)

    async def stop(self) -> None:
        await self.pool.stop()

    async def refresh(self, client: httpx.AsyncClient) -> None:
        """Read every replica's /metrics once."""
        await self.pool.refresh(client)
        self._in_rotation()
