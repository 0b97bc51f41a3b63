"""`tandem serve` with tools and reasoning, driven by the official `openai` client: the real
command as a subprocess on the thinking test model (real MLX), with the thinking model's vLLM
as its cloud. Streamed and not: `reasoning_content` apart from `content`, a `get_weather`
call as `tool_calls` with finish_reason "tool_calls", the result sent back as a `tool`
message. Shapes only, and the two sides compared with each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.serve import BadRequest, parse_chat_request
from scripts.thinkingmodel import WEATHER_CITIES, WEATHER_TOOL
from tests.servers import VLLMServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
WEATHER_Q = [{"role": "user", "content": "What is the weather in Berlin?"}]


@pytest.fixture(scope="module")
def thinking_serve(
    thinking_model: Path, thinking_vllm_server: VLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    home = tmp_path_factory.mktemp("serve-thinking-home")
    (home / "config").mkdir()
    (home / "config" / "config.toml").write_text(f'cloud_url = "{thinking_vllm_server.url}"\n')
    port = free_port()
    env = {**os.environ, "TANDEM_HOME": str(home), "TANDEM_CLOUD_API_KEY": "unused"}
    log = (home / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "serve", "--model", str(thinking_model),
         "--port", str(port), "--max-tokens", "96"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError((home / "serve.log").read_text())
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                log_text = (home / "serve.log").read_text()
                raise RuntimeError("tandem serve did not start:\n" + log_text)
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _client(url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused")


def _streamed(url: str, model: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    chunks = list(_client(url).chat.completions.create(
        model=model, messages=messages, stream=True, temperature=0, max_tokens=96, **extra))
    order: list[str] = []
    reasoning = text = ""
    calls: list[Any] = []
    finish = None
    for c in chunks:
        if not c.choices:
            continue
        delta, choice = c.choices[0].delta, c.choices[0]
        extra_fields = delta.model_extra or {}
        if extra_fields.get("reasoning_content"):
            reasoning += extra_fields["reasoning_content"]
            order.append("reasoning")
        if delta.content:
            text += delta.content
            order.append("text")
        for call in delta.tool_calls or ():
            calls.append(call)
            order.append("tool_call")
        finish = choice.finish_reason or finish
    collapsed = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    return {"order": collapsed, "reasoning": reasoning, "text": text, "finish": finish,
            "calls": [(c.function.name, json.loads(c.function.arguments)) for c in calls],
            "ids": [c.id for c in calls]}


@pytest.mark.mlx
@pytest.mark.vllm
def test_streamed_reasoning_then_answer_from_each_side(thinking_serve: str) -> None:
    question = [{"role": "user", "content": "What color is the grass?"}]
    local = _streamed(thinking_serve, "tandem-local", question)
    cloud = _streamed(thinking_serve, "tandem-cloud", question)
    assert local["order"] == ["reasoning", "text"] and local["finish"] == "stop"
    assert local == cloud


@pytest.mark.mlx
@pytest.mark.vllm
def test_streamed_tool_call_and_the_answer_to_its_result(thinking_serve: str) -> None:
    tools = [WEATHER_TOOL]
    for model in ("tandem-local", "tandem-cloud"):
        asked = _streamed(thinking_serve, model, WEATHER_Q, tools=tools)
        assert asked["order"] == ["reasoning", "tool_call"], model
        [(name, arguments)] = asked["calls"]
        assert name == "get_weather" and arguments["city"] in WEATHER_CITIES, model
        assert asked["finish"] == "tool_calls" and asked["ids"][0]
        history = [
            *WEATHER_Q,
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": asked["ids"][0], "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Berlin"}'}}]},
            {"role": "tool", "tool_call_id": asked["ids"][0],
             "content": json.dumps({"city": "Berlin", "condition": "rainy", "temperature": 9})},
        ]
        answered = _streamed(thinking_serve, model, history, tools=tools)
        assert answered["order"][0] == "reasoning" and not answered["calls"], model
        assert answered["finish"] in ("stop", "length")


@pytest.mark.mlx
def test_not_streamed_with_tools_and_thinking_off(thinking_serve: str) -> None:
    client = _client(thinking_serve)
    body = client.chat.completions.create(
        model="tandem-local", messages=WEATHER_Q, tools=[WEATHER_TOOL], temperature=0,
        max_tokens=96)
    choice = body.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in WEATHER_CITIES
    assert (choice.message.model_extra or {}).get("reasoning_content")
    assert body.usage is not None and body.usage.completion_tokens_details is not None
    assert (body.usage.completion_tokens_details.reasoning_tokens or 0) > 0
    plain = client.chat.completions.create(
        model="tandem-local", messages=[{"role": "user", "content": "What is 2 plus 5?"}],
        temperature=0, max_tokens=64,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert plain.choices[0].message.content
    assert not (plain.choices[0].message.model_extra or {}).get("reasoning_content")
    assert plain.usage is not None and plain.usage.completion_tokens_details is not None
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "name"),
        ({"tools": "get_weather"}, "tools"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "same name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "required"),
        ({"tool_choice": {"type": "function", "function": {"name": "other"}},
          "tools": [WEATHER_TOOL]}, "tool_choice"),
        ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "enable_thinking"),
        ({"chat_template_kwargs": {"add_generation_prompt": False}}, "enable_thinking"),
        ({"reasoning_effort": "max"}, "reasoning_effort"),
    ],
)
def test_bad_tool_fields_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_chat_request({"messages": WEATHER_Q, **body})
    assert field in str(caught.value)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "content": "18 C"},  # no tool_call_id
        {"role": "user", "content": "hi", "tool_call_id": "x"},
        {"role": "user", "content": "hi", "tool_calls": []},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "user", "content": "hi", "reasoning_content": "hmm"},
    ],
)
def test_bad_tool_messages_are_refused(message: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_chat_request({"messages": [*WEATHER_Q, message, {"role": "user", "content": "?"}]})


def test_tool_messages_and_the_switches_reach_the_contract() -> None:
    request, _, _ = parse_chat_request({
        "messages": [
            *WEATHER_Q,
            {"role": "assistant", "content": None, "reasoning_content": "call it",
             "tool_calls": [{"id": "c1", "type": "function", "function": {
                 "name": "get_weather", "arguments": '{"city":"Berlin"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "rainy"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "reasoning_effort": "none",
    })
    assistant, result = request.messages[1], request.messages[2]
    assert assistant.tool_calls[0].name == "get_weather" and assistant.reasoning == "call it"
    assert (result.role, result.tool_call_id, result.content) == ("tool", "c1", "rainy")
    assert request.tools[0].name == "get_weather" and request.tool_choice == "get_weather"
    assert request.think is False
