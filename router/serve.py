"""The hybrid backend as an OpenAI-compatible endpoint on 127.0.0.1, for editors and scripts.

- `POST /v1/chat/completions`, streaming (server-sent events) and not;
- `GET /v1/models`: "tandem" (the router decides), "tandem-local" and "tandem-cloud" (pinned);
- `POST /v1/messages`: the same models in Anthropic's Messages API shape
  (router/serve_anthropic.py);
- `tools` / `tool_choice` (the model's calls come back as `tool_calls`, streamed whole, with
  finish_reason "tool_calls"; results go back as `tool` messages), a thinking model's
  reasoning as `reasoning_content` beside `content`, and the thinking switch as
  `chat_template_kwargs.enable_thinking` or `reasoning_effort` (router/serve_tools.py);
- the route record goes in the `x-tandem-route` response header (JSON, ASCII) and in the
  response body / the last chunk as `tandem_route`; a request may also pin with the
  `x-tandem-pin: local|cloud` header, and a `/local` or `/cloud` prefix works as in the chat.

Starlette and uvicorn are imported only when the app is built, so `router` stays importable
without them. Errors come back in OpenAI's shape (`{"error": {"message", "type", "code"}}`)
with a status a client can act on (429 + Retry-After, 503, 400).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import asdict, replace
from typing import Any

from router.policy import Side
from router.protocol import (
    Backend,
    BackendError,
    ChatRequest,
    ContextTooLong,
    Final,
    Message,
    ModelError,
    Overloaded,
    ReasoningDelta,
    Route,
    Routed,
    Sampling,
    StreamEvent,
    TandemError,
    TextDelta,
    ToolCall,
    Unauthorized,
)
from router.serve_checks import FieldError, check_chat_body, parse_json
from router.serve_guard import GuardConfig, guard
from router.serve_tools import (
    ToolFieldError,
    answer_message,
    message_from,
    parse_tool_fields,
    tool_call_delta,
)

__all__ = ["MODEL_IDS", "BadRequest", "create_app", "parse_chat_request", "route_json"]

MODEL_IDS: dict[str, Side | None] = {
    "tandem": None,
    "tandem-local": "local",
    "tandem-cloud": "cloud",
}
ROUTE_HEADER = "x-tandem-route"
PIN_HEADER = "x-tandem-pin"


class BadRequest(TandemError, ValueError):
    """The request body is not a chat completion request tandem can serve."""


def route_json(route: Route | None) -> str:
    """The route record as one line of ASCII JSON (fit for an HTTP header)."""
    if route is None:
        return "{}"
    data = asdict(route)
    data["scores"] = dict(route.scores)
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]
        texts = [p for p in value if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(str(p.get("text", "")) for p in texts)
    if value is None:
        return ""
    raise BadRequest("message content must be a string or a list of text parts")


def parse_chat_request(
    body: Any, *, default_max_tokens: int = 512, pin_header: str | None = None
) -> tuple[ChatRequest, bool, bool]:
    """An OpenAI chat-completions body → (request, stream?, include usage chunk?). The pin
    (from the model id or the pin header) is in `request.pin`. A trailing assistant message is
    continued (prefill), as vLLM does."""
    try:
        check_chat_body(body)  # every field's type, range and size; unknown fields refused
    except (FieldError, ToolFieldError) as exc:
        raise BadRequest(str(exc)) from exc
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list")
    messages: list[Message] = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadRequest("each message must be an object with 'role' and 'content'")
        role: Any = item.get("role", "")
        role = "system" if role == "developer" else role  # OpenAI's newer name for it
        try:
            messages.append(message_from(item, role, _content(item.get("content"))))
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
    continue_from = continue_reasoning = ""
    if messages[-1].role == "assistant":
        partial = messages.pop()
        continue_from, continue_reasoning = partial.content, partial.reasoning
    if not messages:
        raise BadRequest("'messages' needs a user message")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    temperature, top_p = body.get("temperature"), body.get("top_p")
    try:
        sampling = Sampling(
            max_tokens=int(max_tokens),
            temperature=float(0.0 if temperature is None else temperature),
            top_p=float(1.0 if top_p is None else top_p),
            stop=stop,
            seed=body.get("seed"),
        )
        request = ChatRequest(
            tuple(messages), sampling, continue_from=continue_from,
            continue_reasoning=continue_reasoning, **parse_tool_fields(body),
        )
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from exc
    model = str(body.get("model") or "tandem")
    pin = MODEL_IDS.get(model)
    if pin_header in ("local", "cloud"):
        pin = pin_header  # type: ignore[assignment]
    request = replace(request, pin=pin)
    options = body.get("stream_options") or {}
    return request, bool(body.get("stream")), bool(options.get("include_usage"))


def _error_status(exc: BackendError) -> tuple[int, str, dict[str, str]]:
    if isinstance(exc, Overloaded):
        # Whole seconds, rounded up: "0" would invite an immediate retry.
        headers = {"retry-after": str(max(1, math.ceil(exc.retry_after or 1)))}
        return 429, "rate_limit_exceeded", headers
    if isinstance(exc, ContextTooLong):
        return 400, "context_length_exceeded", {}
    if isinstance(exc, Unauthorized):
        return 502, "upstream_unauthorized", {}
    if isinstance(exc, ModelError):
        return 500, "model_error", {}
    return 503, "unavailable", {}


def _error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": kind}}


def _finish(reason: str) -> str:
    return reason if reason in ("length", "tool_calls") else "stop"


def _usage(usage: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def create_app(
    backend: Backend,
    *,
    default_max_tokens: int = 512,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    guard_config: GuardConfig | None = None,
) -> Any:
    """The ASGI app serving `backend`, behind `router.serve_guard` (loopback Host, no foreign
    Origin, JSON bodies only, size cap, optional key). `on_startup` runs before the first
    request is accepted (e.g. loading the local model), `on_shutdown` when the server stops."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route as HttpRoute

    def error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse(_error_body(message, kind), status_code=status, headers=headers)

    async def models(_: Request) -> Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "tandem"} for m in MODEL_IDS]
        return JSONResponse({"object": "list", "data": data})

    async def health(_: Request) -> Response:
        h = await backend.health()
        return JSONResponse({"ok": h.ok, "detail": h.detail}, status_code=200 if h.ok else 503)

    async def completions(request: Request) -> Response:
        try:
            body = parse_json(await request.body())  # strict: no NaN, no lone surrogates
        except FieldError as exc:
            return error(400, str(exc), "invalid_request_error")
        try:
            chat, stream, include_usage = parse_chat_request(
                body,
                default_max_tokens=default_max_tokens,
                pin_header=request.headers.get(PIN_HEADER),
            )
        except BadRequest as exc:
            return error(400, str(exc), "invalid_request_error")
        model = str(body.get("model") or "tandem")
        routes: list[Route] = []
        events = backend.stream(chat)  # the pin travels in the request
        created = int(time.time())
        ident = f"chatcmpl-{chat.request_id}"
        if not stream:
            return await _whole(events, routes, model, ident, created)
        # Wait for the first event before answering: an error before any token becomes a
        # proper HTTP status, and the header can carry the route actually taken.
        try:
            first = await anext(events)
            while isinstance(first, Routed):  # the router says where before the first token
                routes.append(first.route)
                first = await anext(events)
        except BackendError as exc:
            status, kind, headers = _error_status(exc)
            return error(status, str(exc), kind, headers)
        except StopAsyncIteration:
            return error(503, "the backend ended without an answer", "unavailable")
        header = route_json(routes[-1] if routes else None)
        sse = _sse(first, events, model, ident, created, include_usage)
        return StreamingResponse(
            sse,
            media_type="text/event-stream",
            headers={ROUTE_HEADER: header, "cache-control": "no-cache"},
        )

    async def _whole(
        events: AsyncGenerator[StreamEvent, None],
        routes: list[Route],
        model: str,
        ident: str,
        created: int,
    ) -> Response:
        parts: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        final: Final | None = None
        try:
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, TextDelta):
                        parts.append(event.text)
                    elif isinstance(event, ReasoningDelta):
                        reasoning.append(event.text)
                    elif isinstance(event, ToolCall):
                        calls.append(event)
                    elif isinstance(event, Routed):
                        routes.append(event.route)
                        if event.route.restarted:  # the answer starts over: so does its record
                            parts, reasoning, calls = [], [], []
                    elif isinstance(event, Final):
                        final = event
        except BackendError as exc:
            status, kind, headers = _error_status(exc)
            return error(status, str(exc), kind, headers)
        if final is None:
            return error(503, "the backend ended without an answer", "unavailable")
        route = final.route or (routes[-1] if routes else None)
        usage = final.usage
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": answer_message("".join(parts), "".join(reasoning), calls),
                        "finish_reason": _finish(final.finish_reason),
                    }
                ],
                "usage": _usage(usage),
                "tandem_route": json.loads(route_json(route)),
            },
            headers={ROUTE_HEADER: route_json(route)},
        )

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()

    from router.serve_anthropic import Shared, messages_route

    shared = Shared(_error_status, route_json, ROUTE_HEADER, PIN_HEADER)

    app = Starlette(
        routes=[
            HttpRoute("/v1/chat/completions", completions, methods=["POST"]),
            messages_route(backend, shared),  # Anthropic's Messages API (router/serve_anthropic.py)
            HttpRoute("/v1/models", models, methods=["GET"]),
            HttpRoute("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    return guard(app, guard_config or GuardConfig())


async def _sse(
    first: StreamEvent,
    events: AsyncGenerator[StreamEvent, None],
    model: str,
    ident: str,
    created: int,
    include_usage: bool,
) -> AsyncGenerator[str, None]:
    """OpenAI's chunk stream. The last chunk (finish_reason set) carries `tandem_route`."""

    head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        data = {
            **head,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n"

    async def all_events() -> AsyncGenerator[StreamEvent, None]:
        yield first
        async for event in events:
            yield event

    yield chunk({"role": "assistant", "content": ""})
    # Closing `events` when the client goes away cancels the generation on whichever side.
    async with aclosing(events):
        try:
            calls = 0
            async for event in all_events():
                if isinstance(event, TextDelta):
                    yield chunk({"content": event.text})
                    continue
                if isinstance(event, ReasoningDelta):
                    yield chunk({"reasoning_content": event.text})
                    continue
                if isinstance(event, ToolCall):
                    yield chunk({"tool_calls": [tool_call_delta(calls, event)]})
                    calls += 1
                    continue
                if not isinstance(event, Final):
                    continue  # a failover's Routed: the last chunk carries the route
                route = json.loads(route_json(event.route))
                yield chunk({}, _finish(event.finish_reason), tandem_route=route)
                if include_usage:
                    usage = _usage(event.usage)
                    yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"
        except BackendError as exc:  # mid-stream, after both sides had their chance
            _, kind, _ = _error_status(exc)
            yield f"data: {json.dumps(_error_body(str(exc), kind))}\n\n"
    yield "data: [DONE]\n\n"
