"""The hybrid router with thinking answers and tool calls: failover mid-reasoning starts over
(and says so), failover after the answer began continues it with the finished reasoning, an
answer whose tool calls are out ends there, tool results and tool arguments are scanned for
private data, `/think` / `/no_think` prefixes, and the route says how long the answer thought.

`Thinking` below is a fault injector (it streams a fixed reasoning + answer or a tool call and
raises at an exact point), the counterpart of `Scripted` in tests/test_router_failover.py; the
same failover against the real engines is the last test (real MLX, real vLLM)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from router.hybrid import HybridBackend
from router.policy import RouterSettings
from router.protocol import (
    BackendError,
    Capabilities,
    ChatRequest,
    Final,
    Health,
    Message,
    ReasoningDelta,
    Route,
    Routed,
    Sampling,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCall,
    Unavailable,
    Usage,
    checked,
)
from tests.servers import VLLMServer

REASONING = ["The user ", "asks about ", "France."]
ANSWER = ["Paris ", "is the ", "capital."]
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
CLOUD_FIRST = RouterSettings(mode="cloud-preferred")


class Thinking:
    """Streams REASONING then ANSWER (or a tool call), failing with `fail_with` after
    `fail_after` events on its first call."""

    def __init__(
        self, name: str, *, fail_with: BackendError | None = None, fail_after: int = 0,
        call_tool: bool = False,
    ) -> None:
        self.name = name
        self.fail_with = fail_with
        self.fail_after = fail_after
        self.call_tool = call_tool
        self.requests: list[ChatRequest] = []

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        self.requests.append(request)
        events: list[StreamEvent] = []
        if not request.continue_from:
            events += [ReasoningDelta(r, tokens=1) for r in REASONING]
        if self.call_tool:
            events.append(CALL)
        else:
            done = "".join(ANSWER)
            rest = done[len(request.continue_from):]
            events += [TextDelta(p, tokens=1) for p in ANSWER if p in rest]
        for i, event in enumerate(events):
            if self.fail_with is not None and len(self.requests) == 1 and i == self.fail_after:
                raise self.fail_with
            yield event
        finish = "tool_calls" if self.call_tool else "stop"
        yield Final(finish, Usage(3, len(events), reasoning_tokens=len(REASONING)),
                    self.name, "m")

    async def health(self) -> Health:
        return Health(ok=True)

    def capabilities(self) -> Capabilities:
        return Capabilities(model="m", context_window=4096)


def ask(text: str = "What is the capital of France?", **fields: Any) -> ChatRequest:
    return ChatRequest((Message("user", text),), **fields)


async def run(backend: Any, request: ChatRequest) -> list[StreamEvent]:
    return [e async for e in checked(backend.stream(request))]


def routes(events: list[StreamEvent]) -> list[Route]:
    return [e.route for e in events if isinstance(e, Routed)]


async def test_failing_while_thinking_starts_over_on_the_other_side_and_says_so() -> None:
    local = Thinking("local")
    cloud = Thinking("cloud", fail_with=Unavailable("connection lost"), fail_after=2)
    events = await run(HybridBackend(local, cloud, CLOUD_FIRST), ask())
    first, second = routes(events)
    assert not first.restarted and second.restarted
    assert second.failover is not None and second.failover.startswith("started over on this")
    assert local.requests[0].continue_from == "" and local.requests[0].continue_reasoning == ""
    after = events[events.index(Routed(second)) + 1:]
    assert "".join(e.text for e in after if isinstance(e, ReasoningDelta)) == "".join(REASONING)
    assert "".join(e.text for e in after if isinstance(e, TextDelta)) == "".join(ANSWER)
    final = events[-1]
    assert isinstance(final, Final) and final.route is not None
    assert final.route.restarted and final.route.thinking_s is not None


async def test_failing_after_the_answer_began_continues_with_the_finished_reasoning() -> None:
    local = Thinking("local")
    cloud = Thinking("cloud", fail_with=Unavailable("connection lost"), fail_after=4)
    events = await run(HybridBackend(local, cloud, CLOUD_FIRST), ask())
    continued = local.requests[0]
    assert continued.continue_from == ANSWER[0]
    assert continued.continue_reasoning == "".join(REASONING)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "".join(ANSWER)
    assert not routes(events)[-1].restarted


async def test_an_answer_whose_tool_call_is_out_ends_there() -> None:
    local = Thinking("local")
    cloud = Thinking("cloud", fail_with=Unavailable("lost"), fail_after=4, call_tool=True)
    events = await run(HybridBackend(local, cloud, CLOUD_FIRST), ask())
    assert [e for e in events if isinstance(e, ToolCall)] == [CALL]
    final = events[-1]
    assert isinstance(final, Final) and final.finish_reason == "tool_calls"
    assert local.requests == []  # nothing to continue: the call is whole


async def test_the_route_says_how_long_the_answer_thought() -> None:
    events = await run(HybridBackend(Thinking("local"), None), ask())
    final = events[-1]
    assert isinstance(final, Final) and final.route is not None
    assert final.route.thinking_s is not None and final.route.thinking_s >= 0
    assert final.usage.reasoning_tokens == len(REASONING)


@pytest.mark.parametrize(
    ("text", "think", "sent"),
    [
        ("/no_think What is 2 plus 2?", False, "What is 2 plus 2?"),
        ("/think What is 2 plus 2?", True, "What is 2 plus 2?"),
        ("/local /no_think What is 2 plus 2?", False, "What is 2 plus 2?"),
        ("/no_think /local What is 2 plus 2?", False, "What is 2 plus 2?"),
        ("/thinking about it", None, "/thinking about it"),
    ],
)
async def test_think_prefixes_set_the_switch_and_go(
    text: str, think: bool | None, sent: str
) -> None:
    local = Thinking("local")
    await run(HybridBackend(local, None), ask(text))
    assert local.requests[0].think is think
    assert local.requests[0].messages[-1].content == sent


async def test_a_private_tool_result_keeps_the_answer_on_the_device() -> None:
    weather = Tool("get_weather")
    request = ChatRequest((
        Message("user", "What is the weather at home?"),
        Message("assistant", "", tool_calls=(CALL,)),
        Message("tool", "Home is 12 Rue Oberkampf; mail jane.doe@fastmail.com",
                tool_call_id="call_1"),
    ), tools=(weather,))
    local, cloud = Thinking("local"), Thinking("cloud")
    events = await run(HybridBackend(local, cloud, CLOUD_FIRST), request)
    [route] = routes(events)
    assert (route.backend, route.rule) == ("local", "privacy") and cloud.requests == []
    assert "message 3" in route.reason


async def test_private_tool_arguments_keep_the_answer_on_the_device() -> None:
    call = ToolCall("call_9", "send_mail", json.dumps({"to": "jane.doe@fastmail.com"}))
    request = ChatRequest((
        Message("user", "Mail her the report."),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "sent", tool_call_id="call_9"),
    ), tools=(Tool("send_mail"),))
    local, cloud = Thinking("local"), Thinking("cloud")
    events = await run(HybridBackend(local, cloud, CLOUD_FIRST), request)
    assert routes(events)[0].rule == "privacy" and cloud.requests == []


class FailsWhileThinking:
    """Fault injector around a real backend: raises Unavailable after its `after`-th
    reasoning piece (a real vLLM cannot be made to fail at that exact point)."""

    def __init__(self, inner: Any, after: int = 2) -> None:
        self.inner, self.after, self.name = inner, after, inner.name

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        seen = 0
        async for event in self.inner.stream(request):
            yield event
            if isinstance(event, ReasoningDelta):
                seen += 1
                if seen >= self.after:
                    raise Unavailable("the connection to the cloud was lost mid-answer")

    async def health(self) -> Health:
        return await self.inner.health()

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()


@pytest.mark.mlx
@pytest.mark.vllm
async def test_real_cloud_failing_mid_thought_starts_over_on_the_real_device(
    thinking_model: Path, thinking_vllm_server: VLLMServer
) -> None:
    from cloud.client import CloudClient
    from local.engine import LocalEngine
    from scripts.thinkingmodel import WEATHER_TOOL

    local = LocalEngine(thinking_model, memory_guard=False)
    await local.start()
    cloud = CloudClient(thinking_vllm_server.url, None, model="thinking")
    try:
        weather = Tool("get_weather", "", WEATHER_TOOL["function"]["parameters"])
        hybrid = HybridBackend(local, FailsWhileThinking(cloud), CLOUD_FIRST)
        request = ChatRequest((Message("user", "What is the weather in Rome?"),),
                              Sampling(max_tokens=96), tools=(weather,))
        events = await run(hybrid, request)
        first, second = routes(events)
        assert (first.backend, second.backend) == ("cloud", "local") and second.restarted
        after = events[events.index(Routed(second)) + 1:]
        kinds = [type(e).__name__ for e in after]
        assert kinds[0] == "ReasoningDelta" and "ToolCall" in kinds
        [call] = [e for e in after if isinstance(e, ToolCall)]
        assert call.name == "get_weather" and "city" in call.parsed_arguments()
        final = events[-1]
        assert isinstance(final, Final) and final.finish_reason == "tool_calls"
        assert final.route is not None and final.route.thinking_s is not None
        # The result goes back; the cloud fails while thinking again and the device, which
        # reads the call and the result, gives the answer.
        reasoning = "".join(e.text for e in after if isinstance(e, ReasoningDelta))
        result = json.dumps({"city": "Rome", "condition": "windy", "temperature": 4})
        follow = ChatRequest(
            (*request.messages,
             Message("assistant", "", tool_calls=(call,), reasoning=reasoning),
             Message("tool", result, tool_call_id=call.id)),
            Sampling(max_tokens=96), tools=(weather,),
        )
        answer = await run(hybrid, follow)
        *_, last_route = routes(answer)
        assert last_route.backend == "local"
        tail = answer[answer.index(Routed(last_route)) + 1:]
        assert isinstance(tail[0], ReasoningDelta)
        assert not [e for e in tail if isinstance(e, ToolCall)]
        assert isinstance(answer[-1], Final) and answer[-1].finish_reason in ("stop", "length")
    finally:
        await cloud.aclose()
        await local.aclose()
