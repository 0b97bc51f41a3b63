"""What the cloud client turns malformed answers into, and what the router does with them.

A real gateway and vLLM never send a broken event line or a 200 that is not JSON, so these
tests talk to a fake HTTP server on loopback that does (the fault under test); the client
(real httpx, real parsing) and the device's engine are the real ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cloud.client import CloudClient
from router.hybrid import HybridBackend
from router.policy import RouterSettings
from router.protocol import ChatRequest, Message, Sampling, TextDelta, Unavailable, collect

QUESTION = "What is the capital of France?"


@contextlib.asynccontextmanager
async def fake_cloud(routes: dict[str, tuple[str, bytes]]) -> AsyncIterator[str]:
    """Answers `routes[path]` = (content type, body) with a 200, then closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await reader.readexactly(length)
        kind, body = routes.get(path, ("text/plain", b"not here"))
        writer.write(
            f"HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode() + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


SSE = "text/event-stream"
BROKEN_STREAMS = {
    "bad json line": b'data: {"choices": [{"delta": {"content": "Par"\n\n',
    "not an object": b"data: [1, 2, 3]\n\n",
    "content not text": b'data: {"choices": [{"delta": {"content": 42}}]}\n\n',
    "bad usage": (
        b'data: {"choices": [{"delta": {"content": "Paris"}, "finish_reason": "stop"}]}\n\n'
        b'data: {"choices": [], "usage": {"completion_tokens": "many"}}\n\ndata: [DONE]\n\n'
    ),
}


@pytest.mark.parametrize("body", BROKEN_STREAMS.values(), ids=BROKEN_STREAMS.keys())
async def test_a_malformed_stream_is_unavailable_not_a_crash(body: bytes) -> None:
    async with (
        fake_cloud({"/v1/chat/completions": (SSE, body)}) as url,
        CloudClient(url, "key", model="m") as client,
    ):
        with pytest.raises(Unavailable, match="cannot read") as caught:
            await collect(client.stream(ChatRequest((Message("user", QUESTION),))))
    assert caught.value.backend == "cloud"


async def test_a_model_list_that_is_not_json_is_a_failed_health_check() -> None:
    routes = {
        "/health": ("application/json", b"{}"),
        "/v1/models": ("application/json", b"<html>captive portal</html>"),
    }
    async with fake_cloud(routes) as url, CloudClient(url, "key") as client:
        health = await client.health()
        assert not health.ok and isinstance(health.error, Unavailable)
        with pytest.raises(Unavailable, match="cannot read"):
            await client.refresh_models()


async def test_a_malformed_cloud_answer_fails_over_to_the_device_and_counts_as_a_failure(
    tui_local_engine: Any,
) -> None:
    body = b'data: {"choices": [{"delta": {"content": "Par"}}]}\n\ndata: {oops\n\n'
    async with (
        fake_cloud({"/v1/chat/completions": (SSE, body)}) as url,
        CloudClient(url, "key", model="m") as client,
    ):
        hybrid = HybridBackend(tui_local_engine, client, RouterSettings(mode="cloud-preferred"))
        request = ChatRequest((Message("user", QUESTION),), Sampling(max_tokens=12))
        text, final = await collect(hybrid.stream(request))
    assert text.startswith("Par")  # the cloud's text is kept, the device continues it
    assert final.backend == "local" and final.route is not None
    assert final.route.failover is not None and "continued on this device" in final.route.failover
    assert "cannot read" in hybrid.breakers["cloud"].last_error


async def test_each_cloud_delta_says_how_many_tokens_it_holds(cloud_gateway: Any) -> None:
    """The real gateway and vLLM: usage in every chunk, so the deltas' token counts add up to
    the answer's (the router keeps a continued answer within max_tokens by them)."""
    async with CloudClient(cloud_gateway.url, cloud_gateway.api_key) as client:
        counted, final_tokens = 0, None
        async for event in client.stream(
            ChatRequest((Message("user", QUESTION),), Sampling(max_tokens=16))
        ):
            if isinstance(event, TextDelta):
                assert event.tokens is not None
                counted += event.tokens
            else:
                final_tokens = event.usage.completion_tokens  # type: ignore[union-attr]
    assert final_tokens is not None and 0 < counted <= final_tokens
