"""Users' adapters in vLLM's memory, on every replica.

vLLM loads a LoRA at runtime (`POST /v1/load_lora_adapter`) and forgets it when it restarts.
With several replicas behind vllm-router any of them may get a request for an adapter, so an
adapter is loaded on every replica in rotation before the request goes on; a replica that comes
back after a restart gets every adapter in use before it takes traffic again (`warm`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import httpx

from cloud.gateway.adapters import AdapterError, StoredAdapter
from cloud.gateway.pool import DOWN, Replica, ReplicaPool

__all__ = ["AdapterLoader"]


class AdapterLoader:
    """Which adapters each replica holds, and loading/unloading them there."""

    def __init__(self, pool: ReplicaPool, headers: dict[str, str], default_url: str) -> None:
        self.pool = pool
        self.headers = headers
        """vLLM's own API key (its /v1 routes check it)."""
        self.default_url = default_url
        """A replica's URL when the pool has nothing to poll (the upstream itself)."""
        self.loaded: dict[str, set[str]] = {}
        """Per replica URL: the vLLM names of the adapters it holds."""
        self.in_use: dict[str, StoredAdapter] = {}
        """Every adapter loaded somewhere: what a restarted replica must load again."""
        self.client: httpx.AsyncClient | None = None

    def _url(self, replica: Replica) -> str:
        return replica.url or self.default_url

    async def ensure_loaded(self, adapter: StoredAdapter) -> None:
        """Load `adapter` on every replica that is not down (AdapterError if vLLM refuses,
        or 503 when none is up: no vLLM has checked it, so it is not accepted yet)."""
        targets = [r for r in self.pool.replicas if r.state != DOWN]
        if not targets:
            raise AdapterError("the model server is not reachable; try again shortly",
                               status=503)
        await asyncio.gather(*(self._load(self._url(r), adapter) for r in targets))
        self.in_use[adapter.vllm_name] = adapter

    async def _load(self, url: str, adapter: StoredAdapter) -> None:
        held = self.loaded.setdefault(url, set())
        if adapter.vllm_name in held:
            return
        assert self.client is not None
        response = await self.client.post(
            f"{url}/v1/load_lora_adapter",
            json={"lora_name": adapter.vllm_name, "lora_path": str(adapter.path)},
            headers=self.headers,
            timeout=120.0,
        )
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise AdapterError(
                f"the model server could not load the adapter: {vllm_message(response)}",
                status=422,
            )
        held.add(adapter.vllm_name)

    async def unload(self, adapter: StoredAdapter) -> None:
        """Unload from every replica (best effort: a replica that is down holds nothing)."""
        assert self.client is not None
        self.in_use.pop(adapter.vllm_name, None)
        for replica in self.pool.replicas:
            url = self._url(replica)
            with contextlib.suppress(httpx.HTTPError):
                await self.client.post(
                    f"{url}/v1/unload_lora_adapter",
                    json={"lora_name": adapter.vllm_name},
                    headers=self.headers,
                    timeout=30.0,
                )
            self.loaded.get(url, set()).discard(adapter.vllm_name)

    def forget(self, replica: Replica) -> None:
        """The replica went down: when it comes back it holds nothing."""
        self.loaded.pop(self._url(replica), None)

    async def warm(self, replica: Replica) -> None:
        """Load every adapter in use on a replica that came back (AdapterError, HTTPError)."""
        self.forget(replica)
        for adapter in list(self.in_use.values()):
            await self._load(self._url(replica), adapter)


_PATH_RE = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s'\",;:)]+")


def vllm_message(response: httpx.Response) -> str:
    """vLLM's reason, without the server paths it names (the client never learns the layout)."""
    try:
        data = response.json()
        message = data.get("error", {}).get("message") if "error" in data else data.get("message")
        text = str(message or response.text)
    except (ValueError, AttributeError):
        text = response.text
    return _PATH_RE.sub("<path>", text)[:300]
