"""Both backends honour the reasoning and tool parts of the contract the same way: the local
engine (mlx-lm, its own parsers) and the cloud client (vLLM with `--reasoning-parser qwen3
--tool-call-parser hermes`) on the same thinking model yield the same shapes for the same
request — the same reasoning/answer split, the same tool call, the same finish — and, greedy
on the same weights, the same texts. Compared between the two engines on this machine; no
assertion on what the trained model says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from router.protocol import (
    ChatRequest,
    Final,
    Message,
    ReasoningDelta,
    Sampling,
    TextDelta,
    Tool,
    ToolCall,
    checked,
)
from scripts.thinkingmodel import WEATHER_CITIES, WEATHER_TOOL
from tests.servers import VLLMServer

pytestmark = [pytest.mark.mlx, pytest.mark.vllm]

WEATHER = Tool("get_weather", WEATHER_TOOL["function"]["description"],
               WEATHER_TOOL["function"]["parameters"])


@pytest.fixture(scope="module")
async def backends(
    thinking_model: Path, thinking_vllm_server: VLLMServer
) -> AsyncIterator[tuple[Any, Any]]:
    from cloud.client import CloudClient
    from local.engine import LocalEngine

    local = LocalEngine(thinking_model, memory_guard=False)
    await local.start()
    cloud = CloudClient(thinking_vllm_server.url, None, model="thinking")
    try:
        yield local, cloud
    finally:
        await cloud.aclose()
        await local.aclose()


def shape(events: list[Any]) -> dict[str, Any]:
    """What must match: the order of kinds, the texts, the calls, the finish."""
    kinds: list[str] = []
    for event in events:
        name = type(event).__name__
        if not kinds or kinds[-1] != name:
            kinds.append(name)
    final = events[-1]
    assert isinstance(final, Final)
    return {
        "kinds": kinds,
        "reasoning": "".join(e.text for e in events if isinstance(e, ReasoningDelta)),
        "text": "".join(e.text for e in events if isinstance(e, TextDelta)),
        "calls": [(e.name, e.parsed_arguments()) for e in events if isinstance(e, ToolCall)],
        "finish": final.finish_reason,
        "thought": final.usage.reasoning_tokens > 0,
    }


async def both(backends: tuple[Any, Any], request: ChatRequest) -> tuple[dict[str, Any], ...]:
    out = []
    for backend in backends:
        out.append(shape([e async for e in checked(backend.stream(request))]))
    return tuple(out)


def ask(question: str, **fields: Any) -> ChatRequest:
    return ChatRequest((Message("user", question),), Sampling(max_tokens=96), **fields)


async def test_the_same_split_of_reasoning_and_answer(backends: tuple[Any, Any]) -> None:
    local, cloud = await both(backends, ask("What sound does a dog make?"))
    assert local["kinds"] == ["ReasoningDelta", "TextDelta", "Final"]
    assert local == cloud


async def test_thinking_off_on_both(backends: tuple[Any, Any]) -> None:
    local, cloud = await both(backends, ask("What sound does a dog make?", think=False))
    assert local["kinds"] == ["TextDelta", "Final"] and not local["thought"]
    assert local == cloud


async def test_the_same_tool_call_and_the_same_answer_to_its_result(
    backends: tuple[Any, Any],
) -> None:
    request = ask("What is the weather in Cairo?", tools=(WEATHER,))
    local, cloud = await both(backends, request)
    assert local["kinds"] == ["ReasoningDelta", "ToolCall", "Final"]
    [(name, arguments)] = local["calls"]
    assert name == "get_weather" and arguments["city"] in WEATHER_CITIES
    assert local["finish"] == "tool_calls"
    assert local == cloud
    call = ToolCall("call_1", "get_weather", json.dumps({"city": "Cairo"}))
    follow = ChatRequest(
        (
            *request.messages,
            Message("assistant", "", tool_calls=(call,), reasoning=local["reasoning"]),
            Message("tool", json.dumps({"city": "Cairo", "condition": "sunny",
                                        "temperature": 30}), tool_call_id="call_1"),
        ),
        Sampling(max_tokens=96),
        tools=(WEATHER,),
    )
    local, cloud = await both(backends, follow)
    assert local["kinds"][0] == "ReasoningDelta" and not local["calls"]
    assert local == cloud
