"""The door of `tandem serve`: who may talk to the endpoint at all, checked before any handler.

`tandem serve` listens on loopback and spends the user's device and cloud key, so a web page the
user visits must not be able to drive it (the class of Ollama's CVE-2024-28224):

- **DNS rebinding**: a page on evil.example that re-points its name at 127.0.0.1 sends
  `Host: evil.example`. Only loopback `Host` values are served (127.0.0.0/8, `[::1]`,
  `localhost`), and a port in it must be the one this server listens on.
- **Cross-site requests**: a page can POST a `text/plain` body without a CORS preflight. A
  request carrying a foreign `Origin` (or `Sec-Fetch-Site: cross-site`) is refused, and a POST
  must say `Content-Type: application/json`. `allowed_origins` lets a user's own web tool in
  (with CORS headers for it).
- An optional bearer key for users who want one; the body size is capped whatever the framing
  (Content-Length or chunked), and a body that trickles in is cut off.

Refusals are OpenAI-style JSON errors, and Anthropic-style on `/v1/messages` (whose clients
send the key as `x-api-key`: accepted as well as the bearer header). A plain ASGI middleware:
it needs nothing but Starlette's CORS helper, imported only when built.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GuardConfig", "anthropic_error", "guard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """What the door lets in."""

    allowed_origins: tuple[str, ...] = ()
    """Web origins (scheme://host[:port]) besides this server's own that may call it."""
    api_key: str | None = None
    """When set, every request needs `Authorization: Bearer <api_key>`."""
    max_body_bytes: int = 8 * 2**20
    body_timeout_s: float = 30.0
    """A request body must arrive within this long (a slow trickle holds a connection)."""


def _error(status: int, message: str, kind: str) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return status, json.dumps(body).encode()


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body for an HTTP status (the door's and router.serve_anthropic's)."""
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _too_large(limit: int) -> tuple[int, bytes]:
    return _error(413, f"the request body is larger than {limit / 2**20:g} MiB", "too_large")


def loopback_host(host: str) -> bool:
    """Is this a name or address of this machine's loopback interface?"""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None] | None:
    """`Host` header → (host, port or None); None if it is malformed."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = value.partition(":")
        if ":" in port_text:
            return None
    if not host:
        return None
    if not port_text:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5:
        return None
    return host, int(port_text)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def guard(app: ASGIApp, config: GuardConfig) -> ASGIApp:
    """`app` behind the door."""
    from starlette.middleware.cors import CORSMiddleware

    allowed = tuple(o.rstrip("/").lower() for o in config.allowed_origins)
    inner: ASGIApp = app
    if allowed:
        inner = CORSMiddleware(
            app,
            allow_origins=list(allowed),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-tandem-pin", "x-api-key",
                           "anthropic-version", "anthropic-beta"],
            expose_headers=["x-tandem-route"],
            max_age=600,
        )

    def refusal(scope: Scope) -> tuple[int, bytes] | None:
        server = scope.get("server")
        port = server[1] if server and len(server) > 1 else None
        parsed = _split_host(_header(scope, b"host") or "")
        if parsed is None or not loopback_host(parsed[0]):
            return _error(
                403, "this endpoint answers only requests addressed to localhost", "bad_host"
            )
        if parsed[1] is not None and port is not None and parsed[1] != port:
            return _error(403, "the Host header names another port", "bad_host")
        origin = _header(scope, b"origin")
        if origin is not None:
            own = {f"http://{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}
            if origin.rstrip("/").lower() not in own | set(allowed):
                return _error(
                    403,
                    "requests from web pages are refused; start tandem serve with "
                    "--allow-origin ORIGIN to let your own web tool in",
                    "forbidden_origin",
                )
        elif (_header(scope, b"sec-fetch-site") or "").lower() == "cross-site":
            return _error(403, "cross-site requests are refused", "forbidden_origin")
        preflight = scope.get("method") == "OPTIONS" and origin is not None
        if config.api_key is not None and not preflight:
            scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), config.api_key.encode()
            )
            other = _header(scope, b"x-api-key")  # how Anthropic's clients send it
            if not ok and other is not None:
                ok = hmac.compare_digest(other.strip().encode(), config.api_key.encode())
            if not ok:
                message = "this endpoint needs its API key (Bearer or x-api-key)"
                return _error(401, message, "unauthorized")
        if scope.get("method") == "POST":
            kind = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if kind != "application/json":
                return _error(415, "send the body as application/json", "unsupported_media_type")
        return None

    async def read_body(receive: Receive) -> bytes | tuple[int, bytes]:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(config.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return _error(400, "the client went away", "disconnected")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > config.max_body_bytes:
                        return _too_large(config.max_body_bytes)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            return _error(408, "the request body did not arrive in time", "timeout")

    async def respond(send: Send, status: int, body: bytes, scope: Scope) -> None:
        if str(scope.get("path", "")).startswith("/v1/messages"):
            message = json.loads(body)["error"]["message"]
            body = json.dumps(anthropic_error(status, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def door(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)  # lifespan
            return
        refused = refusal(scope)
        if refused is not None:
            await respond(send, *refused, scope)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                refused = _error(400, "Content-Length is not a number", "bad_length")
                await respond(send, *refused, scope)
                return
            if int(declared) > config.max_body_bytes:
                await respond(send, *_too_large(config.max_body_bytes), scope)
                return
        if scope.get("method") != "POST":
            await inner(scope, receive, send)
            return
        body = await read_body(receive)
        if isinstance(body, tuple):
            await respond(send, *body, scope)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await inner(scope, replay, send)

    return door
