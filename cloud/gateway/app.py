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
    GET    /metrics                vLLM's Prometheus metrics (admin key only)
    GET    /gateway/metrics        the gateway's own counters (admin key only)

Every answer carries `x-request-id`; the log line for a request holds that id, the key's name,
model/adapter, status, token counts and timings, and never any prompt or answer text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cloud.gateway.adapters import AdapterError, AdapterStore, BaseShape, StoredAdapter
from cloud.gateway.admission import Admission, AdmissionConfig, Rejection
from cloud.gateway.keys import KeyRecord, KeyStore
from cloud.gateway.proxy import RequestLog, error_response, forward
from cloud.gateway.stats import GatewayStats

__all__ = ["GatewayConfig", "create_app"]

log = logging.getLogger("tandem.gateway")


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


class Gateway:
    """The app's state and handlers (one per app)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.keys = KeyStore(config.keys_file)
        metrics_url = f"{config.upstream_url}/metrics" if config.poll_metrics else None
        self.admission = Admission(config.admission, metrics_url)
        base = BaseShape.from_model_dir(config.base_model_dir) if config.base_model_dir else None
        self.adapters = (
            AdapterStore(config.adapters_dir, base, config.max_lora_rank) if base else None
        )
        self.stats = GatewayStats()
        self.client: httpx.AsyncClient | None = None
        self.context_window: int | None = None
        self.loaded: set[str] = set()
        self.upstream_headers = (
            {"Authorization": f"Bearer {config.upstream_api_key}"}
            if config.upstream_api_key
            else {}
        )

    # --- lifecycle --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # One pooled client for everything upstream; no timeout on reads because an answer
        # may legitimately take minutes (the client side owns first-token/idle timeouts).
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0), limits=limits
        ) as client:
            self.client = client
            if self.admission.metrics_url:
                await self.admission.refresh(client)
            self.admission.start(client)
            try:
                yield
            finally:
                await self.admission.stop()
                self.client = None

    # --- helpers ----------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> KeyRecord | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return self.keys.verify(token.strip())

    def _unauthorized(self, request_id: str) -> JSONResponse:
        self.stats.unauthorized += 1
        self.stats.responses[401] += 1
        return error_response(401, "unauthorized", "unauthorized", request_id=request_id)

    async def _ensure_loaded(self, adapter: StoredAdapter) -> None:
        """Load an adapter into vLLM unless it is there (vLLM forgets them when it restarts)."""
        if adapter.vllm_name in self.loaded:
            return
        assert self.client is not None
        response = await self.client.post(
            f"{self.config.upstream_url}/v1/load_lora_adapter",
            json={"lora_name": adapter.vllm_name, "lora_path": str(adapter.path)},
            headers=self.upstream_headers,
            timeout=120.0,
        )
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise AdapterError(
                f"the model server could not load the adapter: {_vllm_message(response)}",
                status=422,
            )
        self.loaded.add(adapter.vllm_name)

    async def _unload(self, adapter: StoredAdapter) -> None:
        assert self.client is not None
        with contextlib.suppress(httpx.HTTPError):
            await self.client.post(
                f"{self.config.upstream_url}/v1/unload_lora_adapter",
                json={"lora_name": adapter.vllm_name},
                headers=self.upstream_headers,
                timeout=30.0,
            )
        self.loaded.discard(adapter.vllm_name)

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
            self.stats.responses[status] += 1
            record.emit()
            return error_response(
                status, message, kind, headers=headers, request_id=record.request_id
            )

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.config.max_body_bytes:
            return fail(413, "the request body is too large", "too_large")
        body_bytes = await request.body()
        if len(body_bytes) > self.config.max_body_bytes:
            return fail(413, "the request body is too large", "too_large")
        try:
            body = json.loads(body_bytes)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return fail(400, "the request body must be a JSON object", "invalid_request_error")
        model = str(body.get("model") or self.config.served_model)
        record.model = self.config.served_model
        adapter: StoredAdapter | None = None
        if model != self.config.served_model:
            adapter = self.adapters.get(key.owner, model) if self.adapters else None
            if adapter is None:
                # The same answer whether the adapter does not exist or is someone else's.
                return fail(404, f"the model {model!r} does not exist", "model_not_found")
            record.adapter = adapter.name
        decision = self.admission.admit(key.name)
        if isinstance(decision, Rejection):
            self.stats.rejected[decision.reason] += 1
            retry = max(1, round(decision.retry_after_s))
            return fail(
                429,
                f"the service is busy ({decision.reason}); retry after {retry} s",
                "overloaded",
                **{"Retry-After": str(retry)},
            )
        ticket = decision
        if adapter is not None:
            try:
                await self._ensure_loaded(adapter)
            except (AdapterError, httpx.HTTPError) as exc:
                ticket.release()
                status = exc.status if isinstance(exc, AdapterError) else 503
                return fail(
                    status, str(exc) or "the model server is not reachable", "adapter_error"
                )
            body["model"] = adapter.vllm_name
        else:
            body["model"] = self.config.served_model
        self.stats.upstream_requests += 1

        def done() -> None:
            ticket.release()
            self.stats.responses[record.status or 200] += 1
            self.stats.latency_sum_s += time.perf_counter() - record.started
            self.stats.latency_count += 1
            record.emit()

        url = f"{self.config.upstream_url}{request.url.path}"
        assert self.client is not None
        return await forward(
            self.client, url, body, record, upstream_headers=self.upstream_headers, on_done=done
        )

    async def upload_adapter(self, request: Request) -> Response:
        key = self._authenticate(request)
        if key is None:
            return self._unauthorized(uuid.uuid4().hex)
        if self.adapters is None or not self.config.lora_enabled:
            return error_response(404, "this server does not host adapters", "not_supported")
        length = request.headers.get("content-length")
        if length is None:
            return error_response(411, "send the upload with a Content-Length", "length_required")
        if int(length) > self.config.max_adapter_bytes:
            limit = self.config.max_adapter_bytes // 2**20
            return error_response(
                413, f"the adapter upload is larger than {limit} MiB", "too_large"
            )
        try:
            async with request.form(max_files=2, max_fields=4) as form:
                name = str(form.get("name") or "")
                config_part, weights_part = form.get("adapter_config"), form.get("adapter_model")
                if (
                    isinstance(weights_part, str)
                    or weights_part is None
                    or isinstance(config_part, str)
                    or config_part is None
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
                config_bytes = await config_part.read()
                weights = await weights_part.read()
            self.adapters.check_name(name)
            if name == self.config.served_model:
                raise AdapterError("an adapter cannot take the base model's name")
            old = self.adapters.get(key.owner, name)
            if old is not None:
                await self._unload(old)
            adapter = self.adapters.save(key.owner, name, config_bytes, weights)
            try:
                await self._ensure_loaded(adapter)
            except (AdapterError, httpx.HTTPError):
                self.adapters.delete(key.owner, name)
                raise
        except AdapterError as exc:
            return error_response(exc.status, str(exc), "invalid_adapter")
        log.info(
            "adapter uploaded key=%s adapter=%s rank=%d bytes=%d",
            key.name,
            name,
            adapter.rank,
            len(weights),
        )
        return JSONResponse({"name": adapter.name, "rank": adapter.rank}, status_code=201)

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
        try:
            upstream = await self.client.get(f"{self.config.upstream_url}/metrics", timeout=5.0)
        except httpx.HTTPError:
            return error_response(503, "the model server is not reachable", "unavailable")
        return PlainTextResponse(upstream.text, status_code=upstream.status_code)

    async def gateway_metrics(self, request: Request) -> Response:
        key = self._authenticate(request)
        if key is None or not key.admin:
            return self._unauthorized(uuid.uuid4().hex)
        return PlainTextResponse(self.stats.render(self.admission.in_flight))


def _vllm_message(response: httpx.Response) -> str:
    try:
        data = response.json()
        message = data.get("error", {}).get("message") if "error" in data else data.get("message")
        return str(message or response.text)[:300]
    except ValueError:
        return response.text[:300]


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
    app = Starlette(routes=routes, lifespan=gateway.lifespan)
    app.state.gateway = gateway
    return app
