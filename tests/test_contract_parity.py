"""The device's engine and the cloud client honour the contract the same way (router/protocol.py):
the lifecycle, a checked stream of deltas and one final record, token counts on the deltas,
no `Routed` from a plain backend, the stop strings, and closing a stream early.

Real parts: the MLX engine on the test model, the cloud client against the real gateway and
vLLM (one session-wide server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.protocol import (
    ChatRequest,
    Final,
    Lifecycle,
    Message,
    Routed,
    Sampling,
    Service,
    TextDelta,
    checked,
)

pytestmark = pytest.mark.vllm

QUESTION = "What is the capital of France?"


@pytest.fixture(params=["local", "cloud"])
async def backend(
    request: pytest.FixtureRequest, tui_local_engine: Any, cloud_gateway: Any
) -> AsyncIterator[Any]:
    if request.param == "local":
        yield tui_local_engine
        return
    from cloud.client import CloudClient

    async with CloudClient(cloud_gateway.url, cloud_gateway.api_key) as client:
        await client.start()
        yield client


async def test_each_side_speaks_the_lifecycle(backend: Any) -> None:
    assert isinstance(backend, Lifecycle) and isinstance(backend, Service)
    await backend.start()  # idempotent: already started
    assert backend.ready
    assert (await backend.health()).ok


async def test_a_stream_is_checked_deltas_with_token_counts_and_one_final(backend: Any) -> None:
    request = ChatRequest((Message("user", QUESTION),), Sampling(max_tokens=12))
    counted, text, finals = 0, "", []
    async for event in checked(backend.stream(request)):
        assert not isinstance(event, Routed)  # plain backends say nothing of routes
        if isinstance(event, TextDelta):
            assert event.tokens is not None and event.tokens >= 0
            counted += event.tokens
            text += event.text
        elif isinstance(event, Final):
            finals.append(event)
    (final,) = finals
    assert text and final.finish_reason in ("stop", "length")
    assert 0 < counted <= final.usage.completion_tokens <= 12


async def test_closing_early_ends_the_answer_on_either_side(backend: Any) -> None:
    request = ChatRequest((Message("user", "Tell me about the river."),), Sampling(max_tokens=64))
    stream = backend.stream(request)
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    await stream.aclose()
    # The slot is free again: the next answer streams to its end.
    again = ChatRequest((Message("user", QUESTION),), Sampling(max_tokens=6))
    events = [e async for e in checked(backend.stream(again))]
    assert isinstance(events[-1], Final)
