"""Streaming passthrough to vLLM: bytes go out as they come in; a client that leaves cancels.

Each SSE chunk from vLLM is forwarded the moment it arrives (`aiter_raw`, no re-framing). If
the client disconnects, Starlette stops iterating the body, the generator's `finally` closes the
upstream response, and vLLM sees its connection close and aborts the request, freeing the slot.
Token counts for the log come from the usage chunk vLLM appends when asked; the text itself is
never inspected beyond that.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import httpx
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

__all__ = ["RequestLog", "error_response", "forward"]

log = logging.getLogger("tandem.gateway")


@dataclass(slots=True)
class RequestLog:
    """What one request's log line says: ids, counts and timings, never text."""

    request_id: str
    key: str
    path: str
    model: str = ""
    adapter: str = ""
    status: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    started: float = field(default_factory=time.perf_counter)
    ttft_ms: float | None = None
    outcome: str = ""
    emitted: bool = False

    def emit(self) -> None:
        """Write the line (once: later calls do nothing)."""
        if self.emitted:
            return
        self.emitted = True
        total_ms = (time.perf_counter() - self.started) * 1000
        ttft = f"{self.ttft_ms:.1f}" if self.ttft_ms is not None else "-"
        log.info(
            "request_id=%s key=%s path=%s model=%s adapter=%s status=%s outcome=%s "
            "prompt_tokens=%s completion_tokens=%s ttft_ms=%s total_ms=%.1f",
            self.request_id,
            self.key,
            self.path,
            self.model or "-",
            self.adapter or "-",
            self.status,
            self.outcome or "-",
            _n(self.prompt_tokens),
            _n(self.completion_tokens),
            ttft,
            total_ms,
        )


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def error_response(
    status: int,
    message: str,
    kind: str,
    *,
    headers: dict[str, str] | None = None,
    request_id: str = "",
) -> JSONResponse:
    """An OpenAI-style error body."""
    out = {"x-request-id": request_id} if request_id else {}
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}},
        status_code=status,
        headers={**out, **(headers or {})},
    )


def _usage_from(data: bytes, record: RequestLog) -> None:
    """Fill token counts from a JSON body or an SSE chunk that carries "usage"."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return
    start = data.rfind(b"data: ", 0, at)
    chunk = data[start + 6 :] if start >= 0 else data
    end = chunk.find(b"\n")
    try:
        usage = json.loads(chunk if end < 0 else chunk[:end]).get("usage") or {}
    except (ValueError, AttributeError):
        return
    record.prompt_tokens = usage.get("prompt_tokens", record.prompt_tokens)
    record.completion_tokens = usage.get("completion_tokens", record.completion_tokens)


_LAST_EVENT = b"data: [DONE]"

_HOP_HEADERS = {
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "content-encoding",
}


async def forward(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, object],
    record: RequestLog,
    *,
    upstream_headers: dict[str, str],
    on_done: Callable[[], None],
    revoked: Callable[[], bool] = lambda: False,
    write_timeout_s: float = 15.0,
    release: Callable[[], None] = lambda: None,
) -> Response | _Relay:
    """Send `body` to vLLM and relay the answer, streaming if the body asks for it.

    `on_done` runs when the answer has been fully relayed or abandoned (it releases the
    admission ticket and writes the log line); it must be safe to call twice. A stream ends
    early when `revoked()` turns true (checked every quarter second) or when the client takes
    no bytes for `write_timeout_s`. `release` frees the admission slot; a stream calls it
    before it sends its last bytes, so a client that starts its next request the moment it has
    read `[DONE]` finds its slot free (a client at exactly its per-key limit never gets a 429).
    """
    stream = bool(body.get("stream"))
    if stream:
        # Ask vLLM for a final usage chunk so the log has token counts.
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    request = client.build_request("POST", url, json=body, headers=upstream_headers)
    try:
        upstream = await client.send(request, stream=True)
    except httpx.TransportError:
        record.status, record.outcome = 503, "upstream_unreachable"
        on_done()
        return error_response(
            503,
            "the model server is not reachable; try again shortly",
            "unavailable",
            request_id=record.request_id,
        )
    record.status = upstream.status_code
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
    headers["x-request-id"] = record.request_id
    if upstream.status_code != 200 or not stream:
        try:
            content = await upstream.aread()
        except httpx.TransportError:
            record.status, record.outcome = 502, "upstream_reset"
            return error_response(
                502,
                "the model server dropped the connection",
                "unavailable",
                request_id=record.request_id,
            )
        finally:
            await upstream.aclose()
            record.ttft_ms = (time.perf_counter() - record.started) * 1000
            on_done()
        if upstream.status_code == 200:
            _usage_from(content, record)
            record.outcome = "ok"
        else:
            record.outcome = "upstream_error"
        return Response(content, status_code=upstream.status_code, headers=headers)

    return _Relay(upstream, headers, record, on_done, revoked, write_timeout_s, release)


class _Relay:
    """An ASGI response that relays vLLM's SSE stream chunk by chunk.

    It watches for the client's disconnect itself, and cleans up (close upstream, release the
    ticket, log) in a shielded `finally`, so a client that leaves always frees vLLM's slot.
    """

    def __init__(
        self,
        upstream: httpx.Response,
        headers: dict[str, str],
        record: RequestLog,
        on_done: Callable[[], None],
        revoked: Callable[[], bool] = lambda: False,
        write_timeout_s: float = 15.0,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.release = release
        self.upstream = upstream
        self.headers = headers
        self.record = record
        self.on_done = on_done
        self.revoked = revoked
        self.write_timeout_s = write_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = self.record
        record.outcome = "cancelled"  # until the stream ends normally
        raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()  # the client left: stop relaying

                relaying = anyio.CancelScope()

                async def watch_key() -> None:
                    while not self.revoked():
                        await anyio.sleep(0.25)
                    record.outcome = "key_revoked"
                    relaying.cancel()  # a revoked key's stream ends (cleanly) within a second

                async def write(message: dict[str, object]) -> None:
                    # A client that stops reading would hold its slot (and vLLM's) forever.
                    with anyio.move_on_after(self.write_timeout_s) as limit:
                        await send(message)
                    if limit.cancelled_caught:
                        record.outcome = "client_stalled"
                        group.cancel_scope.cancel()
                        await anyio.sleep(0)  # the cancellation lands here

                group.start_soon(watch)
                group.start_soon(watch_key)
                await write({"type": "http.response.start", "status": 200, "headers": raw_headers})
                try:
                    with relaying:
                        async for chunk in self.upstream.aiter_raw():
                            if record.ttft_ms is None:
                                record.ttft_ms = (time.perf_counter() - record.started) * 1000
                            if b'"usage"' in chunk:
                                _usage_from(chunk, record)
                            if _LAST_EVENT in chunk:
                                self.release()  # the answer is complete: free the slot first
                            await write(
                                {"type": "http.response.body", "body": chunk, "more_body": True}
                            )
                        record.outcome = "ok"
                except httpx.TransportError:
                    # vLLM died mid-answer: end the body without [DONE]; the client fails over.
                    record.outcome = "upstream_reset"
                await write({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        except OSError:
            pass  # the client's socket went away while we were writing
        finally:
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
                self.on_done()
