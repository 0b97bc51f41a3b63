"""Reading a request body with a byte cap whatever its framing (Content-Length or chunked) and a
deadline, so neither a huge body nor one that trickles in can hold the gateway's memory or a
connection. Also the capped receive channel the adapter upload parses its multipart from."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import ClientDisconnect, Request

from router.protocol import TandemError

__all__ = ["BodyError", "capped_receive", "declared_length", "read_capped"]


class BodyError(TandemError):
    """The body cannot be taken: `status` (400, 408, 413) and a sentence for the client."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _too_large(limit: int) -> BodyError:
    return BodyError(413, f"the request body is larger than {limit / 2**20:g} MiB", "too_large")


def declared_length(request: Request, limit: int) -> int | None:
    """The Content-Length, if any; BodyError when it is not a number or is over `limit`."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        raise BodyError(400, "Content-Length is not a number", "invalid_request_error")
    if int(declared) > limit:
        raise _too_large(limit)
    return int(declared)


async def read_capped(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most `limit` bytes, arriving within `timeout_s`."""
    declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise BodyError(408, "the request body did not arrive in time", "timeout") from None
    except ClientDisconnect:
        raise BodyError(400, "the client left before its body came", "disconnected") from None
    return b"".join(chunks)


Message = MutableMapping[str, Any]


def capped_receive(
    receive: Callable[[], Awaitable[Message]], limit: int
) -> Callable[[], Awaitable[Message]]:
    """An ASGI receive that raises BodyError(413) once more than `limit` body bytes came in."""
    size = 0

    async def capped() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise _too_large(limit)
        return message

    return capped
