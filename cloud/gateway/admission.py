"""Admission control: answer 429 at once when the engine is saturated, instead of queueing.

An overflow service must fail fast so the desktop answers locally. The decision uses only
state already in memory, so a rejection costs microseconds:

- vLLM's own view, polled from its `/metrics` in the background: requests waiting to start
  (`vllm:num_requests_waiting`) and KV cache usage (`vllm:kv_cache_usage_perc`);
- the gateway's in-flight count (sent upstream, not finished): it reacts before the next poll;
- per key: a concurrency limit and a token bucket (rate + burst).

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
from dataclasses import dataclass, field

import httpx

__all__ = [
    "Admission",
    "AdmissionConfig",
    "EngineLoad",
    "Rejection",
    "Ticket",
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

    def __post_init__(self) -> None:
        if self.max_waiting < 0 or self.max_in_flight < 1 or self.per_key_concurrency < 1:
            raise ValueError(
                "admission limits: max-waiting ≥ 0, max-in-flight and per-key-concurrency ≥ 1"
            )
        if self.rate_per_second <= 0 or self.burst < 1:
            raise ValueError("admission limits: rate-per-second > 0 and burst ≥ 1")


@dataclass(slots=True)
class EngineLoad:
    """vLLM's load as last read from /metrics."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    reachable: bool = False
    read_at: float = 0.0


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


@dataclass(slots=True)
class Admission:
    """The gateway's admission state (one per app; used from the event loop only)."""

    config: AdmissionConfig
    metrics_url: str | None = None
    """vLLM's /metrics; None: decide on in-flight counts alone."""
    load: EngineLoad = field(default_factory=EngineLoad)
    in_flight: int = 0
    _per_key: dict[str, int] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    poll_failures: int = 0
    stale: bool = False
    """The engine's load is unknown (the last good read is too old): admitting conservatively."""

    def _check_stale(self) -> bool:
        if self.metrics_url is None:
            return False
        stale = time.monotonic() - self.load.read_at > self.config.stale_after_s
        if stale != self.stale:
            self.stale = stale
            if stale:
                log.warning(
                    "vLLM /metrics unreadable for %.1f s: admitting at most %d in flight "
                    "until it answers again", self.config.stale_after_s, self._stale_limit(),
                )  # fmt: skip
            else:
                log.info("vLLM /metrics readable again: admission back to normal")
        return stale

    def _stale_limit(self) -> int:
        return max(1, self.config.max_in_flight // 4)

    def admit(self, key: str) -> Ticket | Rejection:
        """Admit now or say why not. Never waits."""
        c = self.config
        limit = self._stale_limit() if self._check_stale() else c.max_in_flight
        if (
            self.in_flight >= limit
            or self.load.waiting > c.max_waiting
            or self.load.kv_cache_usage > c.max_kv_cache_usage
        ):
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

    def _release(self, key: str) -> None:
        self.in_flight -= 1
        left = self._per_key.get(key, 1) - 1
        if left:
            self._per_key[key] = left
        else:
            self._per_key.pop(key, None)

    # --- the background poller ------------------------------------------------------------

    def start(self, client: httpx.AsyncClient) -> None:
        if self.metrics_url and self._task is None:
            self._task = asyncio.create_task(self._poll(client), name="vllm-metrics-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self, client: httpx.AsyncClient) -> None:
        """Read vLLM's /metrics once."""
        assert self.metrics_url is not None
        try:
            response = await client.get(self.metrics_url, timeout=2.0)
            response.raise_for_status()
        except httpx.HTTPError:
            self.load.reachable = False
            self.poll_failures += 1
            self._check_stale()
            return
        values = parse_metrics(response.text)
        self.load = EngineLoad(
            waiting=values.get("vllm:num_requests_waiting", 0.0),
            running=values.get("vllm:num_requests_running", 0.0),
            kv_cache_usage=values.get("vllm:kv_cache_usage_perc", 0.0),
            reachable=True,
            read_at=time.monotonic(),
        )
        self._check_stale()

    async def _poll(self, client: httpx.AsyncClient) -> None:
        while True:
            await self.refresh(client)
            await asyncio.sleep(self.config.poll_interval_s)


def parse_metrics(text: str) -> dict[str, float]:
    """Sum each Prometheus metric over its label sets (one engine: one series each)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values
