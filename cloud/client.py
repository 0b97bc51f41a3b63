"""The desktop's client for the cloud gateway: a `router.protocol.Backend` over HTTP + SSE.

One pooled `httpx.AsyncClient` serves every request (keep-alive: no new connection or TLS
handshake per answer). Failures become the contract's typed errors where they enter::

    connection refused / reset / lost mid-stream, 5xx, timeouts  → Unavailable
    401, 403                                                    → Unauthorized
    429                                                         → Overloaded(retry_after)
    400 "maximum context length"                                → ContextTooLong
    404 unknown model/adapter, other 4xx                        → ModelError
    private data in the body that the router did not clear      → PrivacyRefused (not sent)
    a malformed answer (not JSON, a bad SSE line, missing fields) → Unavailable

Three timeouts, because a stalled answer should fail over quickly while a slow start is normal:
connect, first token (from sending the request), and the gap between two chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from cloud.chatwire import FALLBACK_HEADER, DeltaReader, request_fields, request_messages
from cloud.trust import UNTRUSTED_HINT, TrustError, is_untrusted_certificate, ssl_context
from router.privacy import PrivacyRefused, PrivacyScanner
from router.protocol import (
    BackendError,
    Capabilities,
    ChatRequest,
    ContextTooLong,
    Final,
    FinishReason,
    Health,
    Load,
    ModelError,
    Overloaded,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    Unauthorized,
    Unavailable,
    Usage,
)

__all__ = ["CloudClient"]

_CONTEXT_RE = re.compile(r"maximum context length is (\d+)")
_PROMPT_RE = re.compile(r"(?:contains|prompt \()(?: at least)? ?(\d+) (?:input )?tokens")
_FINISH: dict[str, FinishReason] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls"
}


def refuse_cleartext(url: str, *, allow_http: bool) -> None:
    """An http:// URL to another machine would send the key and every prompt in the clear:
    TrustError unless the user allowed it (`cloud_allow_http`)."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or allow_http:
        return
    host = (parts.hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise TrustError(
            f"the cloud URL {parts.scheme}://{host} is plain HTTP, which would send your API key "
            "and prompts in the clear; use https:// (or set cloud_allow_http = true for a "
            "tunnel you trust)"
        )


class CloudClient:
    """The cloud gateway as a Backend.

    `model` is the base model's name on the server; None: the first model the gateway lists
    (learned by `health()` or the first request). `ca_file`: a PEM CA to trust besides the
    system's (a self-hosted gateway's own CA); raises cloud.trust.TrustError if unusable.
    `has_fallback`: the caller answers on its own model when the cloud is busy (the desktop
    does), so the gateway sends its 429 at once rather than queueing the request.
    Use `async with` or call `aclose()`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        name: str = "cloud",
        model: str | None = None,
        connect_timeout_s: float = 3.0,
        first_token_timeout_s: float = 30.0,
        idle_timeout_s: float = 15.0,
        ca_file: str | Path | None = None,
        allow_http: bool = False,
        scanner: PrivacyScanner | None = None,
        has_fallback: bool = True,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        refuse_cleartext(self.base_url, allow_http=allow_http)
        self.model = model
        self.first_token_timeout_s = first_token_timeout_s
        self.idle_timeout_s = idle_timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if has_fallback:
            headers[FALLBACK_HEADER] = "device"
        # Reads are bounded by the first-token and idle timeouts below, not by httpx.
        timeout = httpx.Timeout(None, connect=connect_timeout_s, pool=connect_timeout_s)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            verify=ssl_context(ca_file),
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=60.0),
        )
        self.scanner: PrivacyScanner = scanner or PrivacyScanner()
        """Looks at every request body before it is sent (the hybrid backend hands over the
        router's own, with the user's terms and patterns)."""
        self._context_window: int | None = None
        self._adapters: tuple[str, ...] = ()
        self._active = 0
        self._recent_tps: float | None = None

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- router.protocol.Lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Nothing to load: the first request (or health check) opens the connection."""

    @property
    def ready(self) -> bool:
        return not self._http.is_closed

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    # --- Backend ---------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """What the last health probe learned; context_window 0 until then."""
        return Capabilities(
            model=self.model or "",
            context_window=self._context_window or 0,
            adapters=self._adapters,
            load=Load(active_sequences=self._active, recent_tokens_per_s=self._recent_tps),
        )

    async def health(self) -> Health:
        """GET /health, then (if healthy) the model list, which also checks the key."""
        try:
            response = await self._http.get("/health", timeout=self._http.timeout.connect)
        except httpx.HTTPError as exc:
            return Health(False, _transport_message(self.base_url, exc))
        if response.status_code != 200:
            return Health(False, f"the cloud reports it is not ready (HTTP {response.status_code})")
        try:
            await self.refresh_models()
        except BackendError as exc:
            return Health(False, str(exc), error=exc)
        return Health(True, "ok")

    async def refresh_models(self) -> None:
        """Learn the model name, context window and this key's adapters from /v1/models."""
        try:
            response = await self._http.get("/v1/models", timeout=10.0)
        except httpx.HTTPError as exc:
            raise Unavailable(_transport_message(self.base_url, exc), backend=self.name) from exc
        if response.status_code != 200:
            raise self._error(response.status_code, response.headers, response.content)
        try:
            models = response.json().get("data", [])
            base = [m for m in models if not m.get("parent")]
            if base:
                model = str(base[0]["id"])
                window = base[0].get("max_model_len")
                self._context_window = int(window) if window else self._context_window
                self.model = self.model or model
            self._adapters = tuple(str(m["id"]) for m in models if m.get("parent"))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise self._malformed("its model list") from exc

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        if self.model is None:
            await self.refresh_models()
        body = self._body(request)
        self._check_privacy(request, body)  # the one choke point: nothing else sends chat
        started = time.perf_counter()
        self._active += 1
        response: httpx.Response | None = None
        try:
            try:
                async with asyncio.timeout(self.first_token_timeout_s):
                    response = await self._http.send(
                        self._http.build_request("POST", "/v1/chat/completions", json=body),
                        stream=True,
                    )
                    if response.status_code != 200:
                        content = await response.aread()
                        raise self._error(response.status_code, response.headers, content)
            except TimeoutError:
                raise Unavailable(
                    f"the cloud did not answer within {self.first_token_timeout_s:g} s",
                    backend=self.name,
                ) from None
            except httpx.HTTPError as exc:
                raise Unavailable(
                    _transport_message(self.base_url, exc), backend=self.name
                ) from exc
            async with contextlib.aclosing(self._events(response, request, started)) as events:
                async for event in events:
                    yield event
        finally:
            self._active -= 1
            if response is not None:
                # Closing mid-stream drops the connection: the gateway sees the client leave and
                # cancels the generation upstream.
                await response.aclose()

    # --- internals ------------------------------------------------------------------------

    def _check_privacy(self, request: ChatRequest, body: dict[str, Any]) -> None:
        """Scan the exact body about to go out (every message, the continued text, the stop
        strings, the adapter name, the tools) and refuse it unless the router cleared
        exactly what is found. A scanner that fails refuses too."""
        try:
            findings = self.scanner.scan_payload(body)
        except Exception as exc:  # fail safe: nothing leaves the device unchecked
            raise PrivacyRefused([], backend=self.name) from exc
        cleared = request.privacy_cleared
        uncleared = [f for f in findings if (f.kind, f.message, f.part) not in cleared]
        if uncleared:
            raise PrivacyRefused(uncleared, backend=self.name)

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        messages = request_messages(request)  # tool calls, tool results, reasoning
        body: dict[str, Any] = {
            "model": request.adapter or self.model,
            "messages": messages,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream": True,
            # Usage in every chunk: each delta says how many tokens it holds (vLLM may send
            # several per chunk), so a failover can continue within max_tokens.
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        body.update(request_fields(request))  # tools, tool_choice, the thinking switch
        if request.continue_from:
            # vLLM renders the partial answer (the last message, see request_messages) as the
            # open assistant turn and continues it; deltas carry only the new text.
            body["add_generation_prompt"] = False
            body["continue_final_message"] = True
        return body

    async def _events(
        self, response: httpx.Response, request: ChatRequest, started: float
    ) -> AsyncGenerator[StreamEvent, None]:
        lines = response.aiter_lines()
        first_at: float | None = None
        finish: str | None = None
        usage: dict[str, Any] = {}
        counted = 0  # completion tokens the deltas so far stand for
        reader = DeltaReader()  # reasoning, text and tool-call deltas → contract events
        done = False
        while True:
            timeout = self.first_token_timeout_s if first_at is None else self.idle_timeout_s
            if first_at is None:
                timeout = max(0.0, self.first_token_timeout_s - (time.perf_counter() - started))
            try:
                line = await asyncio.wait_for(_next(lines), timeout)
            except TimeoutError:
                what = "first token" if first_at is None else "next token"
                raise Unavailable(
                    f"the cloud stalled: no {what} within {timeout:g} s", backend=self.name
                ) from None
            except httpx.HTTPError as exc:
                raise Unavailable(
                    "the connection to the cloud was lost mid-answer", backend=self.name
                ) from exc
            if line is None:
                break
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"]
                    message = error.get("message", "") if isinstance(error, dict) else str(error)
                    raise ModelError(
                        f"the cloud model failed mid-answer: {message}", backend=self.name
                    )
                usage = chunk.get("usage") or usage
                pieces: list[TextDelta | ReasoningDelta | ToolCall] = []
                for choice in chunk.get("choices", []):
                    pieces += reader.read(choice.get("delta") or {})
                    finish = choice.get("finish_reason") or finish
                total = usage.get("completion_tokens") if chunk.get("usage") else None
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise self._malformed("an answer") from exc
            if pieces:
                if first_at is None:
                    first_at = time.perf_counter()
                tokens: int | None = None
                if isinstance(total, int) and total >= counted:
                    tokens, counted = total - counted, total
                for piece in pieces:
                    # The chunk's tokens go with its first delta (the others hold none).
                    if isinstance(piece, (TextDelta, ReasoningDelta)):
                        piece, tokens = type(piece)(piece.text, tokens=tokens), 0
                    yield piece
        if not done or finish is None:
            raise Unavailable("the connection to the cloud was lost mid-answer", backend=self.name)
        for piece in reader.finish():  # the tool calls, whole
            yield piece
        # Read the body's end too, so the connection goes back to the pool instead of closing.
        with contextlib.suppress(TimeoutError, httpx.HTTPError):
            await asyncio.wait_for(_drain(lines), self.idle_timeout_s)
        ended = time.perf_counter()
        try:
            completion = int(usage.get("completion_tokens", 0))
            prompt_tokens = int(usage.get("prompt_tokens", 0))
            details = usage.get("prompt_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0)
            reasoning_tokens = int(
                (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise self._malformed("its usage record") from exc
        tps = None
        if first_at is not None and completion > 1 and ended > first_at:
            tps = (completion - 1) / (ended - first_at)
            self._recent_tps = tps
        yield Final(
            finish_reason=_FINISH.get(str(finish), "cancelled"),
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                ttft_s=None if first_at is None else first_at - started,
                decode_tokens_per_s=tps,
                cached_prompt_tokens=cached,
                reasoning_tokens=reasoning_tokens,
                thinking_s=reader.trim.thinking_s,
            ),
            backend=self.name,
            model=self.model or "",
            adapter=request.adapter,
        )

    def _malformed(self, what: str) -> Unavailable:
        # A proxy or a broken gateway: treated as the cloud being unreachable, so the router
        # fails over and the breaker counts it.
        return Unavailable(
            f"the cloud at {self.base_url} sent {what} tandem cannot read; "
            "check the cloud URL in Settings (F3)",
            backend=self.name,
        )

    def _error(self, status: int, headers: httpx.Headers, content: bytes) -> BackendError:
        message = _error_message(content)
        if status in (401, 403):
            return Unauthorized(
                "the cloud refused the API key; check the key in the settings", backend=self.name
            )
        if status == 429:
            return Overloaded(
                "the cloud is busy right now",
                retry_after=_retry_after(headers.get("retry-after")),
                backend=self.name,
            )
        if status >= 500:
            return Unavailable(f"the cloud failed (HTTP {status}): {message}", backend=self.name)
        context = _CONTEXT_RE.search(message)
        if status == 400 and context:
            prompt = _PROMPT_RE.search(message)
            return ContextTooLong(
                f"the conversation is too long for the cloud model ({context[1]} tokens)",
                prompt_tokens=int(prompt[1]) if prompt else None,
                context_window=int(context[1]),
                backend=self.name,
            )
        return ModelError(f"the cloud refused the request: {message}", backend=self.name)


async def _drain(lines: AsyncIterator[str]) -> None:
    async for _ in lines:
        pass


async def _next(lines: AsyncIterator[str]) -> str | None:
    try:
        return await anext(lines)
    except StopAsyncIteration:
        return None


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_message(content: bytes) -> str:
    try:
        data = json.loads(content)
    except ValueError:
        return content.decode(errors="replace")[:300]
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message", ""))[:500]
    return str(error)[:500]


def _transport_message(url: str, exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"cannot reach the cloud at {url}: the connection timed out"
    if is_untrusted_certificate(exc):
        return f"the cloud at {url} presented a certificate this computer does not trust; " + (
            UNTRUSTED_HINT
        )
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach the cloud at {url}: connection refused or no route"
    if isinstance(exc, httpx.TimeoutException):
        return f"the cloud at {url} timed out"
    return f"the connection to the cloud at {url} failed ({type(exc).__name__})"
