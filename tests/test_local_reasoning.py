"""The local engine on a thinking, tool-calling model (the Qwen3-shaped test model): reasoning
arrives as ReasoningDelta before the answer, a weather question as a whole ToolCall, and
batching, KV reuse and cancellation keep working with the parser in the stream. Shapes only:
no assertion on text the trained model produced."""

from __future__ import annotations

import asyncio
import contextlib
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

pytestmark = pytest.mark.mlx

WEATHER = Tool(
    WEATHER_TOOL["function"]["name"],
    WEATHER_TOOL["function"]["description"],
    WEATHER_TOOL["function"]["parameters"],
)


def ask(question: str, **fields: Any) -> ChatRequest:
    return ChatRequest((Message("user", question),), Sampling(max_tokens=96), **fields)


async def run(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in checked(stream)]


def kinds(events: list[Any]) -> list[str]:
    """The stream's shape: runs of the same kind collapsed."""
    names = {ReasoningDelta: "reasoning", TextDelta: "text", ToolCall: "tool_call", Final: "final"}
    out: list[str] = []
    for event in events:
        name = names[type(event)]
        if not out or out[-1] != name:
            out.append(name)
    return out


@pytest.fixture(scope="module")
async def engine(thinking_model: Path) -> AsyncIterator[Any]:
    from local.engine import LocalEngine

    eng = LocalEngine(thinking_model, memory_guard=False)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.aclose()


async def test_reasoning_comes_apart_and_before_the_answer(engine: Any) -> None:
    events = await run(engine.stream(ask("What is the capital of Japan?")))
    assert kinds(events) == ["reasoning", "text", "final"]
    final = events[-1]
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "<think>" not in text + reasoning and "</think>" not in text + reasoning
    assert reasoning == reasoning.strip() and text == text.lstrip()
    assert 0 < final.usage.reasoning_tokens < final.usage.completion_tokens
    assert final.usage.thinking_s is not None and final.finish_reason == "stop"


async def test_think_false_answers_without_reasoning(engine: Any) -> None:
    events = await run(engine.stream(ask("What is the capital of Japan?", think=False)))
    assert kinds(events) == ["text", "final"]
    assert events[-1].usage.reasoning_tokens == 0 and events[-1].usage.thinking_s is None


async def test_a_weather_question_is_a_tool_call_and_its_result_is_answered(engine: Any) -> None:
    request = ask("What is the weather in Oslo?", tools=(WEATHER,))
    events = await run(engine.stream(request))
    assert kinds(events) == ["reasoning", "tool_call", "final"]
    [call] = [e for e in events if isinstance(e, ToolCall)]
    # A trained city (the tiny model does not yet copy the asked one reliably).
    assert call.name == "get_weather" and call.parsed_arguments()["city"] in WEATHER_CITIES
    assert events[-1].finish_reason == "tool_calls"
    result = json.dumps({"city": "Oslo", "condition": "windy", "temperature": 4})
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    follow = ChatRequest(
        (
            *request.messages,
            Message("assistant", "", tool_calls=(call,), reasoning=reasoning),
            Message("tool", result, tool_call_id=call.id),
        ),
        Sampling(max_tokens=96),
        tools=(WEATHER,),
    )
    answer = await run(engine.stream(follow))
    assert kinds(answer)[0] == "reasoning" and "tool_call" not in kinds(answer)
    assert answer[-1].finish_reason in ("stop", "length")


async def test_tools_not_offered_means_no_tool_call_event(engine: Any) -> None:
    events = await run(engine.stream(ask("What is the weather in Oslo?", tool_choice="none",
                                         tools=(WEATHER,))))
    assert not [e for e in events if isinstance(e, ToolCall)]
    assert events[-1].finish_reason in ("stop", "length")


async def test_batched_answers_each_keep_their_own_split(engine: Any) -> None:
    requests = [
        ask("What is the weather in Lima?", tools=(WEATHER,)),
        ask("What color is the snow?"),
        ask("What is 3 plus 4?", think=False),
        ask("What is the weather in Rome?", tools=(WEATHER,)),
    ]
    results = await asyncio.gather(*(run(engine.stream(r)) for r in requests))
    alone = [await run(engine.stream(r)) for r in requests]
    for together, single in zip(results, alone, strict=True):
        assert kinds(together) == kinds(single)
    calls = [e for e in results[0] + results[3] if isinstance(e, ToolCall)]
    assert len(calls) == 2 and all(c.name == "get_weather" for c in calls)


async def test_cancelling_mid_reasoning_frees_the_slot(engine: Any) -> None:
    stream = engine.stream(ask("Describe the weather in Paris in detail.", tools=(WEATHER,)))
    async with contextlib.aclosing(stream):
        async for event in stream:
            if isinstance(event, ReasoningDelta):
                break
    for _ in range(100):
        if engine.capabilities().load.active_sequences == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.capabilities().load.active_sequences == 0
    events = await run(engine.stream(ask("What is the capital of Japan?")))
    assert kinds(events) == ["reasoning", "text", "final"]


async def test_the_next_turn_reuses_the_kept_cache(engine: Any) -> None:
    first = ask("What is the capital of Peru?", conversation_id="reuse")
    events = await run(engine.stream(first))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    second = ChatRequest(
        (
            *first.messages,
            Message("assistant", text, reasoning=reasoning),
            Message("user", "What is the capital of Chile?"),
        ),
        Sampling(max_tokens=64),
        conversation_id="reuse",
    )
    again = await run(engine.stream(second))
    # The template drops the earlier reasoning, so only the prompt up to that turn matches.
    assert again[-1].usage.cached_prompt_tokens > 0
    assert kinds(again) == ["reasoning", "text", "final"]
