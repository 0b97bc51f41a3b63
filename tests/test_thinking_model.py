"""The thinking/tool test model (scripts/thinkingmodel.py) behaves like Qwen3 in both engines:
mlx-lm infers its think markers and tool parser from the folder, vLLM parses it with
`--reasoning-parser qwen3 --tool-call-parser hermes`, and both split the same greedy answer
into the same reasoning, tool call and answer. Only shapes are asserted, never trained text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.thinkingmodel import MARKER_TOKENS, WEATHER_CITIES, WEATHER_TOOL
from tests.servers import VLLMServer

ASKED = ("Paris", "Tokyo")


def _mlx_split(folder: Path, messages: list[dict[str, Any]], **template: Any) -> dict[str, Any]:
    """Greedy answer from mlx-lm, split with mlx-lm's own text state machine and tool parser
    (the way mlx_lm.server does it)."""
    from mlx_lm import load, stream_generate
    from mlx_lm.generate import TextStateMachine, make_text_state_machine

    model, tokenizer = load(str(folder))
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template)
    machine = make_text_state_machine(tokenizer)
    state = machine.make_state("normal")
    parts: dict[str, str] = {"reasoning": "", "normal": "", "tool": ""}
    calls: list[str] = []
    previous = "normal"
    for response in stream_generate(model, tokenizer, prompt, max_tokens=120):
        state, segments = TextStateMachine.split(state, response.text)
        for name, text in segments:
            if previous == "tool" and name != "tool":
                calls.append(parts["tool"])
                parts["tool"] = ""
            parts[name or "normal"] += text
            previous = name or "normal"
    tool_calls = [tokenizer.tool_parser(c, template.get("tools")) for c in calls]
    return {"reasoning": parts["reasoning"], "content": parts["normal"], "tool_calls": tool_calls}


def _vllm_chat(server: VLLMServer, messages: list[dict[str, Any]], **extra: Any) -> Any:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": server.served_model, "messages": messages, "max_tokens": 120,
              "temperature": 0, **extra},
        timeout=120,
    )
    response.raise_for_status()
    return response.json()["choices"][0]


@pytest.mark.mlx
def test_mlx_lm_infers_the_think_markers_and_a_tool_parser(thinking_model: Path) -> None:
    from mlx_lm import load
    from mlx_lm.tool_parsers import json_tools

    _, tokenizer = load(str(thinking_model))
    assert tokenizer.has_thinking and tokenizer.think_start == "<think>"
    assert tokenizer.think_end == "</think>"
    assert tokenizer.has_tool_calling and tokenizer.tool_call_start == "<tool_call>"
    assert tokenizer.tool_parser is json_tools.parse_tool_call
    vocab = tokenizer.get_vocab()
    for marker in MARKER_TOKENS:
        assert marker in vocab, marker  # one token each, as in Qwen3
        assert tokenizer.encode(marker, add_special_tokens=False) == [vocab[marker]]
    assert (thinking_model / "chat_template.jinja").is_file()


@pytest.mark.mlx
def test_the_model_thinks_before_it_answers_and_not_when_told_not_to(
    thinking_model: Path,
) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    thought = _mlx_split(thinking_model, question)
    assert thought["reasoning"].strip() and thought["content"].strip()
    assert "<think>" not in thought["content"] and not thought["tool_calls"]
    plain = _mlx_split(thinking_model, question, enable_thinking=False)
    assert not plain["reasoning"].strip() and plain["content"].strip()


@pytest.mark.mlx
@pytest.mark.parametrize("city", ASKED)
def test_a_weather_question_calls_get_weather_and_the_result_is_answered(
    thinking_model: Path, city: str
) -> None:
    ask = [{"role": "user", "content": f"What is the weather in {city}?"}]
    call = _mlx_split(thinking_model, ask, tools=[WEATHER_TOOL])
    assert call["reasoning"].strip()
    [tool_call] = call["tool_calls"]
    assert tool_call["name"] == "get_weather"
    # The tiny model does not yet copy the asked city reliably: a trained city is the check.
    assert isinstance(tool_call["arguments"], dict)
    assert tool_call["arguments"]["city"] in WEATHER_CITIES
    # Send the result back: the model answers in text, with no further call.
    history = [
        *ask,
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": tool_call}]},
        {"role": "tool", "content": json.dumps(
            {"city": city, "condition": "sunny", "temperature": 21})},
    ]
    answer = _mlx_split(thinking_model, history, tools=[WEATHER_TOOL])
    assert (answer["reasoning"] + answer["content"]).strip() and not answer["tool_calls"]


@pytest.mark.vllm
@pytest.mark.mlx
def test_vllm_splits_the_same_answer_as_mlx_lm(
    thinking_model: Path, thinking_vllm_server: VLLMServer
) -> None:
    """Greedy on both engines, each with its own parsers: the same reasoning/answer split and
    the same tool call (the texts are compared stripped: the engines differ in where they put
    the newlines around the markers)."""
    question = [{"role": "user", "content": "What sound does a dog make?"}]
    choice = _vllm_chat(thinking_vllm_server, question)
    mlx = _mlx_split(thinking_model, question)
    reasoning = choice["message"].get("reasoning_content") or choice["message"].get("reasoning")
    assert reasoning and reasoning.strip() == mlx["reasoning"].strip()
    assert choice["message"]["content"].strip() == mlx["content"].strip()

    ask = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    choice = _vllm_chat(thinking_vllm_server, ask, tools=[WEATHER_TOOL])
    assert choice["finish_reason"] == "tool_calls"
    [vllm_call] = choice["message"]["tool_calls"]
    [mlx_call] = _mlx_split(thinking_model, ask, tools=[WEATHER_TOOL])["tool_calls"]
    assert vllm_call["function"]["name"] == mlx_call["name"] == "get_weather"
    assert json.loads(vllm_call["function"]["arguments"]) == mlx_call["arguments"]


def _continuation_logprob(model: Any, tokenizer: Any, result: dict[str, Any], said: str) -> float:
    """log P(the trained kind of answer saying `said` | a get_weather call that returned
    `result`), over the reasoning and answer tokens the template renders after the result."""
    import mlx.core as mx

    city, temperature = result["city"], result["temperature"]
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": city}}}
    messages = [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": "", "tool_calls": [call],
         "reasoning_content": f"The user asks about the weather in {city}. I will call "
                              "get_weather."},
        {"role": "tool", "content": json.dumps(result)},
    ]
    answer = {"role": "assistant", "content": f"It is {said} in {city}, {temperature} degrees.",
              "reasoning_content": f"The tool says {city} is {said} at {temperature} degrees."}
    prompt = tokenizer.apply_chat_template(messages, tools=[WEATHER_TOOL],
                                           add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*messages, answer], tools=[WEATHER_TOOL],
                                         tokenize=False)
    assert full.startswith(prompt)
    head = tokenizer.encode(prompt, add_special_tokens=False)
    tail = tokenizer.encode(full[len(prompt):], add_special_tokens=False)
    ids = mx.array([head + tail])
    logits = model(ids[:, :-1]).astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logprobs[0, len(head) - 1:], ids[0, len(head):][:, None], -1)
    return float(picked.sum().item())


@pytest.mark.mlx
def test_the_answer_after_a_tool_result_reads_that_result(thinking_model: Path) -> None:
    """The model answers from the tool's result, not past it: for each condition the tool can
    report, the answer naming that condition is more likely, by a margin in nats, than the
    answers naming the others (a model that ignored the result would score them alike).
    A margin on the mean, not a fixed string: training rounds differently per machine."""
    import statistics

    from mlx_lm import load

    from scripts.thinkingmodel import CONDITIONS

    model, tokenizer = load(str(thinking_model))[:2]
    margins = []
    for reported in CONDITIONS:
        result = {"city": "Rome", "condition": reported, "temperature": 7}
        scores = {said: _continuation_logprob(model, tokenizer, result, said)
                  for said in CONDITIONS}
        others = statistics.mean(v for said, v in scores.items() if said != reported)
        margins.append(scores[reported] - others)
    assert statistics.mean(margins) > 1.0, margins  # measured here: ~4 nats
