"""The gateway: the public face of the cloud service, an ASGI app in front of vLLM on loopback.

Routes::

    GET    /health                 no auth, no details: 200 {"status": "ok"} or 503
    GET    /v1/models              the base model and the caller's own adapters
    POST   /v1/chat/completions    streaming passthrough, after auth and admission
    POST   /v1/completions         likewise
    POST   /v1/adapters            upload a PEFT LoRA (multipart: name, adapter_config,
                                   adapter_model)
    GET    /v1/adapters            the caller's adapters
    DELETE /v1/adapters/{name}     unload and delete one
    GET    /metrics                vLLM's Prometheus metrics, every replica's (admin key only)
    GET    /gateway/metrics        the gateway's own counters and each replica's state (admin)

Behind the gateway: one vLLM, or several replicas behind vllm-router (`replica_urls`); then
admission reads every replica's load, adapters are loaded on each, and a replica that stops
answering is taken out of the router until it is back and warm (cloud/gateway/pool.py).

Every answer carries `x-request-id`; the log line for a request holds that id, the key's name,
model/adapter, status, token counts and timings, and never any prompt or answer text.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cloud.chatwire import FALLBACK_HEADER
from cloud.gateway.adapters import AdapterError, AdapterStore, BaseShape, StoredAdapter
from cloud.gateway.admission import Admission, AdmissionConfig, Rejection, retry_after_header
from cloud.gateway.body import BodyError, capped_receive, declared_length, read_capped
from cloud.gateway.fields import FieldError, RequestCaps, check_generation, parse_json
from cloud.gateway.keys import KeyRecord, KeyStore
from cloud.gateway.loader import AdapterLoader
from cloud.gateway.pool import Replica, ReplicaPool
from cloud.gateway.proxy import RequestLog, error_response, forward
from cloud.gateway.router_admin import RouterAdmin
from cloud.gateway.stats import GatewayStats

__all__ = ["AdapterQuota", "GatewayConfig", "create_app"]

log = logging.getLogger("tandem.gateway")


@dataclass(frozen=True, slots=True)
class AdapterQuota:
    """What one key may keep on the server (profile: adapter-quota-count, -mib)."""

    max_adapters: int = 8
    max_bytes: int = 512 * 2**20


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway needs; `tandem cloud serve` builds it from the profile."""

    upstream_url: str
    """vLLM on loopback, e.g. http://127.0.0.1:8100."""
    served_model: str
    """The base model's name as clients send it."""
    keys_file: Path
    adapters_dir: Path
    base_model_dir: Path | None = None
    """The base model's folder (its config.json validates adapter shapes); None: no uploads."""
    lora_enabled: bool = True
    max_lora_rank: int = 8
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    upstream_api_key: str | None = None
    """vLLM's own --api-key (passed to it through VLLM_API_KEY), if set."""
    max_body_bytes: int = 4 * 2**20
    max_adapter_bytes: int = 64 * 2**20
    poll_metrics: bool = True
    caps: RequestCaps = field(default_factory=RequestCaps)
    adapter_quota: AdapterQuota = field(default_factory=AdapterQuota)
    """Per-request limits (n, max_tokens, ...) from the profile."""
    body_timeout_s: float = 30.0
    """A request body must arrive within this long."""
    stream_write_timeout_s: float = 15.0
    """A streaming client that takes no bytes for this long is cut off (its slot freed)."""
    upstream_uds: str | None = None
    """vLLM's Unix socket, when it listens on one (then `upstream_url` is only a base URL)."""
    replica_urls: tuple[str, ...] = ()
    """The vLLM replicas behind `upstream_url` (a router); empty: the upstream is the one vLLM."""
    router_admin_url: str | None = None
    """The vllm-router tandem started: replicas leave and rejoin its rotation through it."""


class Gateway:
    """The app's state and handlers (one per app)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.keys = KeyStore(config.keys_file)
        urls: tuple[str | None, ...] = (
            (config.replica_urls or (config.upstream_url,)) if config.poll_metrics else (None,)
        )
        self.pool = ReplicaPool(
            urls, poll_interval_s=config.admission.poll_interval_s,
            on_up=self._replica_up, on_down=self._replica_down,
        )  # fmt: skip
        self.admission = Admission(config.admission, pool=self.pool)
        self.router = (
            RouterAdmin(config.router_admin_url, config.replica_urls)
            if config.router_admin_url
            else None
        )
        base = BaseShape.from_model_dir(config.base_model_dir) if config.base_model_dir else None
        self.adapters = (
            AdapterStore(config.adapters_dir, base, config.max_lora_rank) if base else None
        )
        self.stats = GatewayStats()
        # Keys the prefix cache per tenant (vLLM's cache_salt): one key cannot time another's
        # prompts. Per process: the cache does not outlive vLLM, and nothing secret is stored.
        self._salt_secret = secrets.token_bytes(32)
        self.client: httpx.AsyncClient | None = None
        self.context_window: int | None = None
        # Per key owner, held from an upload's quota check to its commit: without it, parallel
        # uploads each checked the usage before any of them was committed, and all passed.
        self._quota_locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)
        self.upstream_headers = (
            {"Authorization": f"Bearer {config.upstream_api_key}"}
            if config.upstream_api_key
            else {}
        )
        self.loader = AdapterLoader(self.pool, self.upstream_headers, config.upstream_url)

    # --- lifecycle --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # One pooled client for everything upstream; no timeout on reads because an answer
        # may legitimately take minutes (the client side owns first-token/idle timeouts).
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        transport = (
            httpx.AsyncHTTPTransport(uds=self.config.upstream_uds, limits=limits)
            if self.config.upstream_uds
            else None
        )
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0), limits=limits, transport=transport
        ) as client:
            self.client = self.loader.client = client
            if self.pool.polled:
                await self.admission.refresh(client)
            self.admission.start(client)
            if self.router is not None:
                self.router.start(client)
            try:
                yield
            finally:
                await self.admission.stop()
                if self.router is not None:
                    await self.router.stop()
                self.client = self.loader.client = None

    # --- helpers ----------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> KeyRecord | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return self.keys.verify(token.strip())

    def cache_salt(self, key: KeyRecord) -> str:
        """The prefix-cache salt of this key's owner: a keyed hash, unguessable by tenants."""
        return hmac.new(self._salt_secret, key.owner.encode(), hashlib.sha256).hexdigest()[:32]

    def revoked(self, key: KeyRecord) -> bool:
        """Has `key` been revoked (or replaced) since it was checked?"""
        return key not in self.keys.records()

    def _unauthorized(self, request_id: str) -> JSONResponse:
        self.stats.unauthorized += 1
        self.stats.responses[401] += 1
        return error_response(401, "unauthorized", "unauthorized", request_id=request_id)

    async def _ensure_loaded(self, adapter: StoredAdapter) -> None:
        """Load an adapter on every replica unless it is there (vLLM forgets them on restart)."""
        await self.loader.ensure_loaded(adapter)

    async def _unload(self, adapter: StoredAdapter) -> None:
        await self.loader.unload(adapter)

    async def _replica_down(self, replica: Replica) -> bool:
        self.loader.forget(replica)
        if self.router is not None and self.client is not None and replica.url:
            await self.router.remove(self.client, replica.url)
        return True

    async def _replica_up(self, replica: Replica) -> bool:
        """A replica is back: its adapters first, then the router's rotation."""
        await self.loader.warm(replica)
        if self.router is not None and self.client is not None and replica.url:
            return await self.router.add(self.client, replica.url)
        return True

    async def _context_window(self) -> int | None:
        if self.context_window is None and self.client is not None:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, IndexError):
                response = await self.client.get(
                    f"{self.config.upstream_url}/v1/models",
                    headers=self.upstream_headers,
                    timeout=5.0,
                )
                self.context_window = int(response.json()["data"][0]["max_model_len"])
        return self.context_window

    # --- handlers ---------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        assert self.client is not None
        try:
            ok = (
                await self.client.get(f"{self.config.upstream_url}/health", timeout=2.0)
            ).status_code == 200
        except httpx.HTTPError:
            ok = False
        return JSONResponse(
            {"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503
        )

    async def models(self, request: Request) -> Response:
        key = self._authenticate(request)
        if key is None:
            return self._unauthorized(uuid.uuid4().hex)
        window = await self._context_window()
        data: list[dict[str, Any]] = [
            {
                "id": self.config.served_model,
                "object": "model",
                "owned_by": "tandem",
                "max_model_len": window,
            }
        ]
        if self.adapters is not None:
            data += [
                {
                    "id": a.name,
                    "object": "model",
                    "owned_by": key.name,
                    "parent": self.config.served_model,
                    "max_model_len": window,
                    "rank": a.rank,
                }
                for a in self.adapters.owned(key.owner)
            ]
        return JSONResponse({"object": "list", "data": data})

    async def generate(self, request: Request) -> Response:
        record = RequestLog(uuid.uuid4().hex, "-", request.url.path)
        key = self._authenticate(request)
        if key is None:
            record.status, record.outcome = 401, "unauthorized"
            record.emit()
            return self._unauthorized(record.request_id)
        record.key = key.name
        response = await self._generate(request, key, record)
        if not record.status:
            record.status = response.status_code if isinstance(response, Response) else 200
        return response

    async def _generate(self, request: Request, key: KeyRecord, record: RequestLog) -> Any:
        def fail(status: int, message: str, kind: str, **headers: str) -> Response:
            record.status, record.outcome = status, kind
            if not record.emitted:
                self.stats.responses[status] += 1
                record.emit()
            return error_response(
                status, message, kind, headers=headers, request_id=record.request_id
            )

        try:
            raw = await read_capped(request, self.config.max_body_bytes, self.config.body_timeout_s)
            body = check_generation(parse_json(raw), request.url.path, self.config.caps)
        except BodyError as exc:
            return fail(exc.status, str(exc), exc.kind)
        except FieldError as exc:
            return fail(400, str(exc), "invalid_request_error")
        model = str(body.get("model") or self.config.served_model)
        record.model = self.config.served_model
        adapter: StoredAdapter | None = None
        if model != self.config.served_model:
            adapter = self.adapters.get(key.owner, model) if self.adapters else None
            if adapter is None:
                # The same answer whether the adapter does not exist or is someone else's.
                return fail(404, f"the model {model!r} does not exist", "model_not_found")
            record.adapter = adapter.name
        # A desktop answers on its own model: it gets the 429 at once. Anyone else may wait a
        # moment for a slot (max_queue_wait_s), as they have nothing to fall back to.
        queue_s = self.admission.config.max_queue_wait_s
        wait_s = 0.0 if FALLBACK_HEADER in request.headers else queue_s
        decision = (
            await self.admission.admit_waiting(key.name, wait_s)
            if wait_s > 0
            else self.admission.admit(key.name)
        )
        if isinstance(decision, Rejection):
            self.stats.rejected[decision.reason] += 1
            retry = retry_after_header(decision.retry_after_s)
            return fail(
                429,
                f"the service is busy ({decision.reason}); retry after {retry} s",
                "overloaded",
                **{"Retry-After": retry},
            )
        ticket = decision

        def done() -> None:
            ticket.release()
            if not record.emitted:
                self.stats.responses[record.status or 200] += 1
                self.stats.latency_sum_s += time.perf_counter() - record.started
                self.stats.latency_count += 1
                record.emit()

        # From here on this block owns the ticket: every way out releases it, except handing
        # a stream to the relay, whose own `finally` releases it when the stream ends.
        handed_over = False
        try:
            if adapter is not None:
                try:
                    await self._ensure_loaded(adapter)
                except (AdapterError, httpx.HTTPError) as exc:
                    status = exc.status if isinstance(exc, AdapterError) else 503
                    return fail(status, "the model server could not load the adapter",
                                "adapter_error")  # fmt: skip
                body["model"] = adapter.vllm_name
            else:
                body["model"] = self.config.served_model
            body["cache_salt"] = self.cache_salt(key)  # whatever the client sent is dropped
            self.stats.upstream_requests += 1
            url = f"{self.config.upstream_url}{request.url.path}"
            assert self.client is not None
            response = await forward(
                self.client, url, body, record, upstream_headers=self.upstream_headers,
                on_done=done, revoked=lambda: self.revoked(key), release=ticket.release,
                write_timeout_s=self.config.stream_write_timeout_s,
            )  # fmt: skip
            handed_over = not isinstance(response, Response)
            return response
        except Exception as exc:  # a bug: the client gets a JSON error, never the details
            log.error("request_id=%s internal error %s", record.request_id, type(exc).__name__)
            return fail(502, "the gateway could not forward the request", "internal_error")
        finally:
            if not handed_over:
                done()

    async def upload_adapter(self, request: Request) -> Response:
        key = self._authenticate(request)
        if key is None:
            return self._unauthorized(uuid.uuid4().hex)
        if self.adapters is None or not self.config.lora_enabled:
            return error_response(404, "this server does not host adapters", "not_supported")
        try:
            declared_length(request, self.config.max_adapter_bytes)
        except BodyError as exc:
            return error_response(exc.status, str(exc), exc.kind)
        # An upload is work like an answer: it takes an admission slot (per-key concurrency,
        # max in flight), so parallel uploads cannot fill the disk or memory at once.
        decision = self.admission.admit(key.name)
        if isinstance(decision, Rejection):
            retry = retry_after_header(decision.retry_after_s)
            return error_response(429, f"the service is busy; retry after {retry} s",
                                  "overloaded", headers={"Retry-After": retry})  # fmt: skip
        try:
            return await self._upload(request, key, self.adapters)
        except AdapterError as exc:
            return error_response(exc.status, str(exc), "invalid_adapter")
        except BodyError as exc:
            return error_response(exc.status, str(exc), exc.kind)
        except MultiPartException:
            return error_response(400, "the upload is not valid multipart/form-data",
                                  "invalid_adapter")  # fmt: skip
        except TimeoutError:
            return error_response(408, "the upload did not arrive in time", "timeout")
        except httpx.HTTPError:
            return error_response(503, "the model server is not reachable; try again shortly",
                                  "unavailable")  # fmt: skip
        finally:
            decision.release()

    async def _upload(self, request: Request, key: KeyRecord, store: AdapterStore) -> Response:
        limit = self.config.max_adapter_bytes
        # The byte cap holds whatever the framing (a chunked upload has no Content-Length);
        # Starlette spools file parts to disk past 1 MiB, so nothing large stays in memory.
        capped = Request(request.scope, capped_receive(request.receive, limit))
        with anyio.fail_after(self.config.body_timeout_s * 10):
            form_ctx = capped.form(max_files=2, max_fields=4, max_part_size=256 * 1024)
            async with form_ctx as form:
                name = form.get("name")
                config_part, weights_part = form.get("adapter_config"), form.get("adapter_model")
                if (
                    not isinstance(name, str)
                    or isinstance(weights_part, str | None)
                    or isinstance(config_part, str | None)
                ):
                    raise AdapterError(
                        "send the multipart fields name, adapter_config "
                        "(adapter_config.json) and adapter_model (adapter_model.safetensors)"
                    )
                if not (weights_part.filename or "").endswith(".safetensors"):
                    raise AdapterError(
                        "only .safetensors weights are accepted "
                        "(pickled .bin/.pt files are refused)",
                        status=415,
                    )
                store.check_name(name)
                if name == self.config.served_model:
                    raise AdapterError("an adapter cannot take the base model's name")
                config_bytes = await config_part.read(64 * 1024 + 1)
                if len(config_bytes) > 64 * 1024:
                    raise AdapterError("adapter_config.json is larger than 64 KiB")
                staged = await anyio.to_thread.run_sync(
                    store.stage, key.owner, name, config_bytes, weights_part.file
                )
        async with self._quota_locks[key.owner]:
            old = store.get(key.owner, name)
            try:
                self._check_quota(key, store, staged, old)
                await self._ensure_loaded(staged)  # the old version keeps answering meanwhile
            except BaseException:
                store.discard(staged)
                raise
            store.commit(staged)
        if old is not None and old.vllm_name != staged.vllm_name:
            await self._unload(old)
            store.discard(old)
        log.info(
            "adapter uploaded key=%s adapter=%s rank=%d bytes=%d replaced=%s",
            key.name, name, staged.rank, staged.size, old is not None,
        )  # fmt: skip
        return JSONResponse({"name": staged.name, "rank": staged.rank}, status_code=201)

    def _check_quota(
        self, key: KeyRecord, store: AdapterStore, new: StoredAdapter, old: StoredAdapter | None
    ) -> None:
        count, size = store.usage(key.owner)
        if old is not None:
            count, size = count - 1, size - old.size
        quota = self.config.adapter_quota
        if count + 1 > quota.max_adapters:
            raise AdapterError(
                f"this key may keep at most {quota.max_adapters} adapters; delete one first",
                status=403,
            )
        if size + new.size > quota.max_bytes:
            raise AdapterError(
                f"this key may keep at most {quota.max_bytes / 2**20:g} MiB of adapters; "
                "delete one first",
                status=403,
            )

    async def list_adapters(self, request: Request) -> Response:
        key = self._authenticate(request)
        if key is None:
            return self._unauthorized(uuid.uuid4().hex)
        found = self.adapters.owned(key.owner) if self.adapters else []
        return JSONResponse({"data": [{"name": a.name, "rank": a.rank} for a in found]})

    async def delete_adapter(self, request: Request) -> Response:
        key = self._authenticate(request)
        if key is None:
            return self._unauthorized(uuid.uuid4().hex)
        name = request.path_params["name"]
        adapter = self.adapters.get(key.owner, name) if self.adapters else None
        if adapter is None or self.adapters is None:
            return error_response(404, f"no adapter named {name!r}", "not_found")
        await self._unload(adapter)
        self.adapters.delete(key.owner, name)
        log.info("adapter deleted key=%s adapter=%s", key.name, name)
        return Response(status_code=204)

    async def vllm_metrics(self, request: Request) -> Response:
        key = self._authenticate(request)
        if key is None or not key.admin:
            return self._unauthorized(uuid.uuid4().hex)
        assert self.client is not None
        parts: list[str] = []
        for url in self.config.replica_urls or (self.config.upstream_url,):
            try:
                upstream = await self.client.get(f"{url}/metrics", timeout=5.0)
            except httpx.HTTPError:
                if not self.config.replica_urls:
                    return error_response(503, "the model server is not reachable", "unavailable")
                parts.append(f"# replica {url}: not reachable\n")
                continue
            if not self.config.replica_urls:
                return PlainTextResponse(upstream.text, status_code=upstream.status_code)
            parts.append(f"# replica {url}\n{upstream.text}")
        return PlainTextResponse("".join(parts))

    async def gateway_metrics(self, request: Request) -> Response:
        key = self._authenticate(request)
        if key is None or not key.admin:
            return self._unauthorized(uuid.uuid4().hex)
        a = self.admission
        text = self.stats.render(a.in_flight, load_stale=a.stale, poll_failures=a.poll_failures)
        text += self.stats.render_replicas(self.pool.replicas, queued=a.queued)
        if self.router is not None:
            removed = self.router.foreign_removed
            text += f"tandem_gateway_router_foreign_workers_removed_total {removed}\n"
        return PlainTextResponse(text)


def create_app(config: GatewayConfig) -> Starlette:
    """The gateway as an ASGI app (serve it with uvicorn)."""
    gateway = Gateway(config)
    routes = [
        Route("/health", gateway.health, methods=["GET"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/v1/chat/completions", gateway.generate, methods=["POST"]),
        Route("/v1/completions", gateway.generate, methods=["POST"]),
        Route("/v1/adapters", gateway.upload_adapter, methods=["POST"]),
        Route("/v1/adapters", gateway.list_adapters, methods=["GET"]),
        Route("/v1/adapters/{name}", gateway.delete_adapter, methods=["DELETE"]),
        Route("/metrics", gateway.vllm_metrics, methods=["GET"]),
        Route("/gateway/metrics", gateway.gateway_metrics, methods=["GET"]),
    ]
    async def internal_error(request: Request, exc: Exception) -> Response:
        # Whatever escaped a handler: a JSON error, no traceback or text in the answer.
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return error_response(500, "internal error", "internal_error")

    app = Starlette(
        routes=routes, lifespan=gateway.lifespan, exception_handlers={Exception: internal_error}
    )
    app.state.gateway = gateway
    return app
