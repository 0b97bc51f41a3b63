"""The vLLM replicas behind the gateway: each one's load and state, read from its /metrics.

One replica (the usual case) or several behind vllm-router. A background poller reads every
replica's `/metrics` (requests waiting, running, KV-cache use); admission decides on what it
read. Each replica is in one of three states:

    serving ──(its port refuses, or 3 reads fail)──▶ down ──(a read succeeds)──▶ warming
       ▲                                                                            │
       └────────────(its adapters are loaded and the router takes it back)──────────┘

Leaving `serving` runs the pool's `on_down` hook (the gateway takes it out of vllm-router);
leaving `down` runs `on_up` as a task of its own (load the adapters in use, then put it back in
the router): a restarted replica takes traffic only once it can answer every adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

__all__ = ["EngineLoad", "Replica", "ReplicaPool", "parse_metrics"]

log = logging.getLogger("tandem.gateway")

SERVING, DOWN, WARMING = "serving", "down", "warming"
# A slow /metrics (a replica busy on all its cores) is not a dead replica: only a refused
# connection counts at once, other failures after this many in a row.
FAILURES_BEFORE_DOWN = 3


@dataclass(slots=True)
class EngineLoad:
    """vLLM's load as last read from /metrics."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    reachable: bool = False
    read_at: float = 0.0


@dataclass(slots=True)
class Replica:
    """One vLLM server behind the gateway."""

    url: str | None
    """Its base URL (…/metrics is read); None: nothing to poll (decide on in-flight alone)."""
    load: EngineLoad = field(default_factory=EngineLoad)
    state: str = SERVING
    failures: int = 0
    """Consecutive failed reads."""
    returns: int = 0
    """Times it came back after being down (a restart)."""

    def fresh(self, now: float, stale_after_s: float) -> bool:
        return self.url is None or now - self.load.read_at <= stale_after_s


Hook = Callable[[Replica], Awaitable[bool]]


class ReplicaPool:
    """Every replica's state, kept current by a background poller."""

    def __init__(
        self,
        urls: tuple[str | None, ...],
        *,
        poll_interval_s: float = 0.25,
        on_up: Hook | None = None,
        on_down: Hook | None = None,
    ) -> None:
        self.replicas = [Replica(url) for url in urls] or [Replica(None)]
        self.poll_interval_s = poll_interval_s
        self.on_up = on_up
        self.on_down = on_down
        self.poll_failures = 0
        self.on_refresh: Callable[[], None] = lambda: None
        """Called after every poll (admission wakes its queued requests)."""
        self._task: asyncio.Task[None] | None = None
        self._warming: set[asyncio.Task[None]] = set()

    @property
    def polled(self) -> bool:
        return any(r.url is not None for r in self.replicas)

    def serving(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == SERVING]

    def start(self, client: httpx.AsyncClient) -> None:
        if self.polled and self._task is None:
            self._task = asyncio.create_task(self._poll(client), name="vllm-metrics-poller")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._warming) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._warming.clear()

    async def refresh(self, client: httpx.AsyncClient) -> None:
        """Read every replica's /metrics once (concurrently) and move states on."""
        await asyncio.gather(*(self._read(client, r) for r in self.replicas if r.url))
        self.on_refresh()

    async def _read(self, client: httpx.AsyncClient, replica: Replica) -> None:
        try:
            response = await client.get(f"{replica.url}/metrics", timeout=2.0)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            replica.load.reachable = False
            replica.failures += 1
            self.poll_failures += 1
            refused = isinstance(exc, httpx.ConnectError)
            if replica.state == SERVING and (refused or replica.failures >= FAILURES_BEFORE_DOWN):
                replica.state = DOWN
                log.warning("replica %s stopped answering: out of rotation", replica.url)
                if self.on_down is not None:
                    await self.on_down(replica)
            return
        values = parse_metrics(response.text)
        replica.failures = 0
        replica.load = EngineLoad(
            waiting=values.get("vllm:num_requests_waiting", 0.0),
            running=values.get("vllm:num_requests_running", 0.0),
            kv_cache_usage=values.get("vllm:kv_cache_usage_perc", 0.0),
            reachable=True,
            read_at=time.monotonic(),
        )
        if replica.state == DOWN:
            replica.state = WARMING
            task = asyncio.create_task(self._warm(replica), name="replica-warm-up")
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    async def _warm(self, replica: Replica) -> None:
        ok = True
        if self.on_up is not None:
            try:
                ok = await self.on_up(replica)
            except Exception as exc:  # a failed warm-up is retried at the next good read
                log.warning("replica %s: warm-up failed (%s)", replica.url, type(exc).__name__)
                ok = False
        replica.state = SERVING if ok else DOWN
        if ok:
            replica.returns += 1
            log.info("replica %s is back in rotation", replica.url)

    async def _poll(self, client: httpx.AsyncClient) -> None:
        while True:
            await self.refresh(client)
            await asyncio.sleep(self.poll_interval_s)


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
