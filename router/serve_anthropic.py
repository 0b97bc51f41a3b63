"""`POST /v1/messages` on `tandem serve`: the hybrid backend in Anthropic's Messages API shape,
for agents and tools built on the Anthropic SDK (base URL `http://127.0.0.1:8642`).

The same models (`tandem`, `tandem-local`, `tandem-cloud`), pins (`x-tandem-pin`, `/local` and
`/cloud` prefixes), door (router.serve_guard: loopback Host, no foreign Origin, JSON only, the
optional key, also as `x-api-key`) and route record (`x-tandem-route` header, `tandem_route`
in the body / the `message_delta` event) as the OpenAI routes. The request is checked and
mapped in router.serve_anthropic_request.

The answer: content blocks `thinking` (the contract's ReasoningDelta; its `signature` is empty,
tandem signs nothing), `text` and `tool_use` (a whole ToolCall; streamed as one
`input_json_delta`), `stop_reason` end_turn / max_tokens / stop_sequence / tool_use, and usage.
Streamed, Anthropic's events in order: message_start, then per block content_block_start,
content_block_delta..., content_block_stop, then message_delta (stop_reason, usage) and
message_stop; a failure mid-stream is an `error` event.

Stop sequences are matched here, on the answer's text, not by the backend: `stop_reason`
must say which one ended the answer, and the contract's Final does not. When one matches, the
stream is closed (the backend cancels the generation), so no Final arrives: output_tokens is
then counted from the deltas and input_tokens is reported as 0 (unknown).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from router.protocol import (
    Backend,
    BackendError,
    Final,
    ReasoningDelta,
    Route,
    Routed,
    StreamEvent,
    TextDelta,
    ToolCall,
)
from router.serve_anthropic_request import (
    AnthropicRequest,
    MessagesFieldError,
    parse_messages_request,
)
from router.serve_checks import FieldError, parse_json
from router.serve_guard import anthropic_error

__all__ = ["Shared", "StopScan", "messages_route"]


@dataclass(frozen=True, slots=True)
class Shared:
    """What the OpenAI routes (router.serve, which imports this module) share with this one:
    passed in, so the two modules do not import each other."""

    error_status: Callable[[BackendError], tuple[int, str, dict[str, str]]]
    route_json: Callable[[Route | None], str]
    route_header: str
    pin_header: str


STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


class StopScan:
    """Finds the first stop sequence in streamed text, holding back only a tail that could be
    the start of one (so no part of a stop sequence is ever sent)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """The text safe to send now; after a match (`matched` set) the rest is dropped."""
        if not self.stops:
            return text
        buffer = self.held + text
        found = [(buffer.find(s), s) for s in self.stops if s in buffer]
        if found:
            at, self.matched = min(found)
            self.held = ""
            return buffer[:at]
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:n]):
                    keep = n
                    break
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


def _tool_input(call: ToolCall) -> dict[str, Any]:
    parsed = call.parsed_arguments()
    # Anthropic's `input` is an object; arguments that are not one are kept as text.
    return parsed if isinstance(parsed, dict) else {"_arguments": call.arguments}


@dataclass
class _Answer:
    """The answer as it is collected: blocks in order, the stop, the tokens seen."""

    shared: Shared
    scan: StopScan
    blocks: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    routes: list[Route] = field(default_factory=list)
    final: Final | None = None

    def add(self, kind: str, key: str, text: str) -> None:
        if not self.blocks or self.blocks[-1]["type"] != kind:
            self.blocks.append({"type": kind, key: ""} | ({"signature": ""} if kind == "thinking"
                                                         else {}))  # fmt: skip
        self.blocks[-1][key] += text


def _usage(answer: _Answer) -> dict[str, Any]:
    if answer.final is not None:
        usage = answer.final.usage
        return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
    return {"input_tokens": 0, "output_tokens": answer.tokens}


def _stop(answer: _Answer) -> tuple[str, str | None]:
    if answer.scan.matched is not None:
        return "stop_sequence", answer.scan.matched
    reason = answer.final.finish_reason if answer.final else "stop"
    return STOP_REASONS.get(reason, "end_turn"), None


def _sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def messages_route(backend: Backend, shared: Shared) -> Any:
    """The Starlette route for `POST /v1/messages` over `backend`."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route as HttpRoute

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse(anthropic_error(status, message), status_code=status,
                            headers=headers)  # fmt: skip

    async def messages(request: Request) -> Response:
        try:
            body = parse_json(await request.body())
            parsed = parse_messages_request(body, pin_header=request.headers.get(shared.pin_header))
        except (FieldError, MessagesFieldError) as exc:
            return error(400, str(exc))
        answer = _Answer(shared, StopScan(parsed.stop_sequences))
        events = backend.stream(parsed.chat)
        if not parsed.stream:
            try:
                async with aclosing(events):
                    async for event in events:
                        if _take(answer, event):
                            break
            except BackendError as exc:
                status, _, headers = shared.error_status(exc)
                return error(status, str(exc), headers)
            if answer.final is None and answer.scan.matched is None:
                return error(503, "the backend ended without an answer")
            header = shared.route_json(_route(answer))
            return JSONResponse(
                _message(parsed, answer, answer.blocks), headers={shared.route_header: header}
            )
        # Wait for the first event: an error before any token becomes a proper status, and
        # the header can carry the route actually taken.
        try:
            first = await anext(events)
            while isinstance(first, Routed):
                answer.routes.append(first.route)
                first = await anext(events)
        except BackendError as exc:
            status, _, headers = shared.error_status(exc)
            return error(status, str(exc), headers)
        except StopAsyncIteration:
            return error(503, "the backend ended without an answer")
        return StreamingResponse(
            _stream(parsed, answer, first, events),
            media_type="text/event-stream",
            headers={
                shared.route_header: shared.route_json(_route(answer)),
                "cache-control": "no-cache",
            },
        )

    return HttpRoute("/v1/messages", messages, methods=["POST"])


def _route(answer: _Answer) -> Route | None:
    if answer.final is not None and answer.final.route is not None:
        return answer.final.route
    return answer.routes[-1] if answer.routes else None


def _take(answer: _Answer, event: StreamEvent) -> bool:
    """Collect one event of a non-streamed answer; True once a stop sequence ended it."""
    if isinstance(event, TextDelta):
        answer.tokens += event.tokens or 1
        text = answer.scan.feed(event.text)
        if text:
            answer.add("text", "text", text)
        return answer.scan.matched is not None
    if isinstance(event, ReasoningDelta):
        answer.tokens += event.tokens or 1
        answer.add("thinking", "thinking", event.text)
    elif isinstance(event, ToolCall):
        rest = answer.scan.flush()
        if rest:
            answer.add("text", "text", rest)
        answer.blocks.append({"type": "tool_use", "id": event.id, "name": event.name,
                              "input": _tool_input(event)})  # fmt: skip
    elif isinstance(event, Routed):
        answer.routes.append(event.route)
        if event.route.restarted:  # the answer starts over on the other side
            answer.blocks, answer.scan.held = [], ""
    elif isinstance(event, Final):
        answer.final = event
        rest = answer.scan.flush()
        if rest:
            answer.add("text", "text", rest)
    return False


def _message(parsed: AnthropicRequest, answer: _Answer, content: list[Any]) -> dict[str, Any]:
    reason, sequence = _stop(answer)
    return {
        "id": f"msg_{parsed.chat.request_id}",
        "type": "message",
        "role": "assistant",
        "model": parsed.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": _usage(answer),
        "tandem_route": json.loads(answer.shared.route_json(_route(answer))),
    }


async def _stream(
    parsed: AnthropicRequest,
    answer: _Answer,
    first: StreamEvent,
    events: AsyncGenerator[StreamEvent, None],
) -> AsyncGenerator[str, None]:
    """Anthropic's event stream. Closing `events` (the client went away, or a stop sequence
    matched) cancels the generation on whichever side."""
    start = _message(parsed, answer, [])
    start.update(stop_reason=None, stop_sequence=None, usage={"input_tokens": 0,
                                                              "output_tokens": 0})  # fmt: skip
    del start["tandem_route"]
    yield _sse("message_start", {"message": start})
    index = -1
    open_kind: str | None = None

    def begin(block: dict[str, Any]) -> str:
        nonlocal index, open_kind
        index += 1
        open_kind = block["type"]
        return _sse("content_block_start", {"index": index, "content_block": block})

    def end() -> str:
        nonlocal open_kind
        open_kind = None
        return _sse("content_block_stop", {"index": index})

    def delta(data: dict[str, Any]) -> str:
        return _sse("content_block_delta", {"index": index, "delta": data})

    def text(piece: str) -> list[str]:
        out = []
        if open_kind not in (None, "text"):
            out.append(end())
        if open_kind is None:
            out.append(begin({"type": "text", "text": ""}))
        out.append(delta({"type": "text_delta", "text": piece}))
        return out

    async def all_events() -> AsyncGenerator[StreamEvent, None]:
        yield first
        async for event in events:
            yield event

    try:
        async with aclosing(events):
            async for event in all_events():
                if isinstance(event, TextDelta):
                    answer.tokens += event.tokens or 1
                    piece = answer.scan.feed(event.text)
                    for chunk in text(piece) if piece else ():
                        yield chunk
                    if answer.scan.matched is not None:
                        break
                elif isinstance(event, ReasoningDelta):
                    answer.tokens += event.tokens or 1
                    if open_kind not in (None, "thinking"):
                        yield end()
                    if open_kind is None:
                        yield begin({"type": "thinking", "thinking": "", "signature": ""})
                    yield delta({"type": "thinking_delta", "thinking": event.text})
                elif isinstance(event, ToolCall):
                    rest = answer.scan.flush()
                    for chunk in text(rest) if rest else ():
                        yield chunk
                    if open_kind is not None:
                        yield end()
                    yield begin({"type": "tool_use", "id": event.id, "name": event.name,
                                 "input": {}})  # fmt: skip
                    arguments = json.dumps(_tool_input(event), ensure_ascii=False)
                    yield delta({"type": "input_json_delta", "partial_json": arguments})
                    yield end()
                elif isinstance(event, Routed):
                    answer.routes.append(event.route)  # the message_delta carries the last
                elif isinstance(event, Final):
                    answer.final = event
                    rest = answer.scan.flush()
                    for chunk in text(rest) if rest else ():
                        yield chunk
    except BackendError as exc:  # mid-stream, after both sides had their chance
        status, _, _ = answer.shared.error_status(exc)
        yield _sse("error", anthropic_error(status, str(exc)))
        return
    if open_kind is not None:
        yield end()
    reason, sequence = _stop(answer)
    yield _sse("message_delta", {
        "delta": {"stop_reason": reason, "stop_sequence": sequence},
        "usage": _usage(answer),
        "tandem_route": json.loads(answer.shared.route_json(_route(answer))),
    })  # fmt: skip
    yield _sse("message_stop", {})
