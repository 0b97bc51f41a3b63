"""The gateway's hold on the vllm-router that `tandem cloud serve --replicas N` starts.

vllm-router checks its workers' health on its own, but it would send traffic to a restarted
replica as soon as that answers /health, before the adapters users uploaded are loaded on it.
So the gateway takes a replica out (`/remove_worker`) the moment it stops answering and puts it
back (`/add_worker`) only after its warm-up.

vllm-router's worker-management routes check no key, and it listens on loopback TCP, so any
local process could add a worker of its own and receive prompts. The gateway cannot close that
(README.md says so), but it narrows it: every few seconds it lists the router's workers and
removes, with a warning in its log, any it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

__all__ = ["RouterAdmin"]

log = logging.getLogger("tandem.gateway")


class RouterAdmin:
    """Add, remove and audit vllm-router's workers."""

    def __init__(self, url: str, workers: tuple[str, ...], *, audit_interval_s: float = 2.0):
        self.url = url.rstrip("/")
        self.workers = set(workers)
        """The replicas tandem started: the only workers the router may have."""
        self.audit_interval_s = audit_interval_s
        self.foreign_removed = 0
        self._task: asyncio.Task[None] | None = None

    async def add(self, client: httpx.AsyncClient, worker: str) -> bool:
        return await self._post(client, "/add_worker", worker)

    async def remove(self, client: httpx.AsyncClient, worker: str) -> bool:
        return await self._post(client, "/remove_worker", worker)

    async def _post(self, client: httpx.AsyncClient, path: str, worker: str) -> bool:
        try:
            response = await client.post(f"{self.url}{path}", params={"url": worker}, timeout=5.0)
        except httpx.HTTPError as exc:
            log.warning("vllm-router %s %s failed: %s", path, worker, type(exc).__name__)
            return False
        # Adding a worker it already has, or removing one it has not, is not a failure here.
        return response.status_code < 500

    async def audit(self, client: httpx.AsyncClient) -> None:
        """Remove every worker the router has that tandem did not start."""
        try:
            response = await client.get(f"{self.url}/list_workers", timeout=5.0)
            listed = response.json().get("urls", [])
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        for worker in listed:
            if isinstance(worker, str) and worker.rstrip("/") not in self.workers:
                log.warning("vllm-router had a worker tandem did not start (%s): removed", worker)
                self.foreign_removed += 1
                await self.remove(client, worker)

    def start(self, client: httpx.AsyncClient) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(client), name="router-audit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, client: httpx.AsyncClient) -> None:
        while True:
            await self.audit(client)
            await asyncio.sleep(self.audit_interval_s)
