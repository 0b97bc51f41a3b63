"""`tandem serve`'s Anthropic Messages API (`POST /v1/messages`), driven by the official
`anthropic` client: the real command as a subprocess on the thinking test model (real MLX),
with the thinking model's vLLM as its cloud, started with an API key (the Anthropic client
sends it as `x-api-key`, the OpenAI client as a bearer token).

Never a fixed string the trained model wrote: the Anthropic route's answer is compared with
the OpenAI route's for the same request on the same server, or only its shape is asserted."""

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

from router.serve_anthropic import StopScan
from router.serve_anthropic_request import MessagesFieldError, parse_messages_request
from tests.servers import VLLMServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = "tds_test-key-for-the-anthropic-route"
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
OPENAI_WEATHER = {
    "type": "function",
    "function": {
        "name": WEATHER["name"],
        "description": WEATHER["description"],
        "parameters": WEATHER["input_schema"],
    },
}
GRASS = [{"role": "user", "content": "What color is the grass?"}]
WEATHER_Q = [{"role": "user", "content": "What is the weather in Berlin?"}]


@pytest.fixture(scope="module")
def serve(
    thinking_model: Path,
    thinking_vllm_server: VLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    home = tmp_path_factory.mktemp("serve-anthropic-home")
    (home / "config").mkdir()
    (home / "config" / "config.toml").write_text(f'cloud_url = "{thinking_vllm_server.url}"\n')
    port = free_port()
    env = {
        **os.environ,
        "TANDEM_HOME": str(home),
        "TANDEM_CLOUD_API_KEY": "unused",
        "TANDEM_SERVE_API_KEY": KEY,
    }
    log = (home / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "serve", "--model", str(thinking_model),
         "--port", str(port), "--max-tokens", "96", "--api-key"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {KEY}"}
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError((home / "serve.log").read_text())
            try:
                if httpx.get(f"{url}/v1/models", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "tandem serve did not start:\n" + (home / "serve.log").read_text()
                )
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _anthropic(url: str, key: str = KEY) -> Any:
    from anthropic import Anthropic

    return Anthropic(base_url=url, api_key=key, max_retries=0)


def _openai(url: str, model: str, messages: list[dict[str, Any]], **extra: Any) -> Any:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    return client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=96, **extra
    ).choices[0]


def _blocks(message: Any) -> list[str]:
    return [block.type for block in message.content]


def _text(message: Any, kind: str = "text") -> str:
    return "".join(getattr(b, kind) for b in message.content if b.type == kind)


@pytest.mark.mlx
@pytest.mark.vllm
def test_a_plain_message_matches_the_openai_route_on_each_side(serve: str) -> None:
    client = _anthropic(serve)
    for model in ("tandem-local", "tandem-cloud"):
        raw = client.messages.with_raw_response.create(model=model, messages=GRASS, max_tokens=96)
        message = raw.parse()
        route = json.loads(raw.headers["x-tandem-route"])
        assert (route["backend"], route["rule"]) == (model.removeprefix("tandem-"), "pin")
        assert message.type == "message" and message.role == "assistant" and message.model == model
        assert _blocks(message) == ["thinking", "text"], model
        assert message.stop_reason == "end_turn" and message.stop_sequence is None
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
        openai = _openai(serve, model, GRASS)
        assert _text(message) == openai.message.content, model
        assert _text(message, "thinking") == openai.message.model_extra["reasoning_content"]


@pytest.mark.mlx
def test_a_streamed_message_arrives_in_events_in_anthropic_order(serve: str) -> None:
    client = _anthropic(serve)
    whole = client.messages.create(model="tandem-local", messages=GRASS, max_tokens=96)
    kinds: list[str] = []
    text_deltas = 0
    with client.messages.stream(model="tandem-local", messages=GRASS, max_tokens=96) as stream:
        for event in stream:
            if event.type in ("text", "thinking", "signature", "input_json"):
                continue  # the SDK's own convenience events, beside the wire's
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text_deltas += 1
        final = stream.get_final_message()
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert collapsed == [
        "message_start",
        *["content_block_start", "content_block_delta", "content_block_stop"] * 2,
        "message_delta",
        "message_stop",
    ]
    assert text_deltas > 1  # the text comes in pieces, as it is written
    assert _blocks(final) == _blocks(whole) == ["thinking", "text"]
    assert _text(final) == _text(whole) and _text(final, "thinking") == _text(whole, "thinking")
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens > 0
    assert final.usage.input_tokens == whole.usage.input_tokens > 0


@pytest.mark.mlx
def test_a_tool_use_round_trip(serve: str) -> None:
    client = _anthropic(serve)
    for stream in (False, True):
        if stream:
            with client.messages.stream(
                model="tandem-local", messages=WEATHER_Q, tools=[WEATHER], max_tokens=96,
            ) as s:  # fmt: skip
                asked = s.get_final_message()
        else:
            asked = client.messages.create(
                model="tandem-local", messages=WEATHER_Q, tools=[WEATHER], max_tokens=96,
            )  # fmt: skip
        assert asked.stop_reason == "tool_use", stream
        assert _blocks(asked) == ["thinking", "tool_use"], stream
        call = asked.content[-1]
        # The same call as the OpenAI route makes for the same request on the same server.
        [expected] = _openai(
            serve, "tandem-local", WEATHER_Q, tools=[OPENAI_WEATHER]
        ).message.tool_calls
        assert call.name == expected.function.name == "get_weather" and call.id
        assert call.input == json.loads(expected.function.arguments)
        blocks = asked.content
        result = json.dumps({"city": "Berlin", "condition": "rainy", "temperature": 9})
        history = [
            *WEATHER_Q,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in blocks]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": result}]},
        ]  # fmt: skip
        answered = client.messages.create(
            model="tandem-local", messages=history, tools=[WEATHER], max_tokens=96,
        )  # fmt: skip
        assert answered.stop_reason == "end_turn" and _blocks(answered)[-1] == "text"
        openai = _openai(serve, "tandem-local", [
            *WEATHER_Q,
            {"role": "assistant", "content": None,
             "reasoning_content": _text(asked, "thinking"), "tool_calls": [{
                "id": call.id, "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps(call.input)}}]},
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ], tools=[OPENAI_WEATHER])  # fmt: skip
        assert _text(answered) == openai.message.content


@pytest.mark.mlx
def test_thinking_switch_and_stop_sequences(serve: str) -> None:
    client = _anthropic(serve)
    question = [{"role": "user", "content": "What is 2 plus 5?"}]
    on = client.messages.create(
        model="tandem-local", messages=question, max_tokens=96,
        thinking={"type": "enabled", "budget_tokens": 64},
    )  # fmt: skip
    off = client.messages.create(
        model="tandem-local", messages=question, max_tokens=96,
        thinking={"type": "disabled"},
    )  # fmt: skip
    assert _blocks(on) == ["thinking", "text"] and _text(on, "thinking")
    assert on.content[0].signature == ""
    assert _blocks(off) == ["text"]
    plain = _openai(serve, "tandem-local", question,
                    extra_body={"chat_template_kwargs": {"enable_thinking": False}})  # fmt: skip
    assert _text(off) == plain.message.content
    # A stop sequence taken from the answer itself: the text ends just before it.
    text = _text(off)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    cut = client.messages.create(
        model="tandem-local", messages=question, max_tokens=96,
        thinking={"type": "disabled"}, stop_sequences=[stop],
    )  # fmt: skip
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert _text(cut) == text[: text.index(stop)]
    with client.messages.stream(
        model="tandem-local", messages=question, max_tokens=96,
        thinking={"type": "disabled"}, stop_sequences=[stop],
    ) as s:  # fmt: skip
        streamed = s.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence, _text(streamed)) == (
        "stop_sequence", stop, _text(cut))  # fmt: skip
    short = client.messages.create(
        model="tandem-local", messages=question, max_tokens=3,
        thinking={"type": "disabled"},
    )  # fmt: skip
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


@pytest.mark.mlx
def test_errors_come_back_in_anthropic_shape(serve: str) -> None:
    import anthropic

    client = _anthropic(serve)
    http = client.messages.with_raw_response
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.post("/v1/messages", cast_to=object, body={"model": "tandem", "messages": GRASS})
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "'max_tokens' is required"},
    }
    with pytest.raises(anthropic.BadRequestError, match="not served here"):
        http.create(model="claude-sonnet-4-5", messages=GRASS, max_tokens=8)
    with pytest.raises(anthropic.BadRequestError, match="only text blocks"):
        http.create(
            model="tandem",
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [
                                {
                                    "type": "image",
                                    "source": {"type": "url", "url": "http://x/y.png"},
                                }
                            ],
                        }
                    ],
                }
            ],
        )
    with pytest.raises(anthropic.AuthenticationError) as denied:
        _anthropic(serve, key="wrong").messages.create(model="tandem", messages=GRASS, max_tokens=8)
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    page = httpx.post(
        f"{serve}/v1/messages",
        json={"model": "tandem", "messages": GRASS, "max_tokens": 8},
        headers={"x-api-key": KEY, "origin": "https://evil.example"},
    )
    assert page.status_code == 403
    assert page.json()["error"]["type"] == "permission_error"
    plain = httpx.post(
        f"{serve}/v1/messages",
        content=b"{}",
        headers={"x-api-key": KEY, "content-type": "text/plain"},
    )
    assert plain.status_code == 415 and plain.json()["type"] == "error"


BASE = {"model": "tandem", "max_tokens": 16, "messages": GRASS}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"max_tokens": None}, "'max_tokens' is required"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": 5}, "unsupported field(s): top_k"),
        ({"stream": "yes"}, "stream"),
        ({"stop_sequences": "\n"}, "stop_sequences"),
        ({"stop_sequences": [""]}, "stop sequence"),
        ({"system": [{"type": "image"}]}, "system"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_use"}]}]}, "user turn"),
        ({"messages": [{"role": "user", "content": "hi", "name": "x"}]}, "name"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "user turn"),
        ({"tools": [{"name": "bad name!", "input_schema": {}}]}, "name"),
        ({"tools": [{"name": "f"}]}, "input_schema is required"),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web", "input_schema": {}}]},
            "server tools",
        ),
        ({"tools": [WEATHER, WEATHER]}, "same name"),
        ({"tool_choice": {"type": "any"}}, "at least one tool"),
        ({"tool_choice": {"type": "tool", "name": "other"}, "tools": [WEATHER]}, "not in"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"thinking": {"type": "enabled"}}, "budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 16}}, "less than max_tokens"),
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"metadata": {"user_id": 5}}, "user_id"),
    ],
)
def test_bad_fields_are_refused_naming_them(change: dict[str, Any], says: str) -> None:
    body = {**BASE, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(MessagesFieldError) as caught:
        parse_messages_request(body)
    assert says in str(caught.value)


def test_blocks_reach_the_contract() -> None:
    parsed = parse_messages_request(
        {
            "model": "tandem-cloud",
            "max_tokens": 32,
            "system": [
                {"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [
                *WEATHER_Q,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "call it", "signature": ""},
                        {
                            "type": "tool_use",
                            "id": "t1",
                            "name": "get_weather",
                            "input": {"city": "Berlin"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "rainy"},
                        {"type": "text", "text": "and tomorrow?"},
                    ],
                },
                {"role": "assistant", "content": "Tomorrow"},
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "thinking": {"type": "disabled"},
            "stop_sequences": ["\n\n"],
            "stream": True,
        },
        pin_header="local",
    )
    chat = parsed.chat
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "user"]
    assistant, result = chat.messages[2], chat.messages[3]
    assert assistant.reasoning == "call it"
    assert json.loads(assistant.tool_calls[0].arguments) == {"city": "Berlin"}
    assert (result.tool_call_id, result.content) == ("t1", "rainy")
    assert chat.continue_from == "Tomorrow"  # a trailing assistant turn is continued
    assert chat.tool_choice == "get_weather" and chat.tools[0].parameters == WEATHER["input_schema"]
    assert chat.think is False and chat.pin == "local"  # the header wins over the model id
    assert chat.sampling.stop == () and parsed.stop_sequences == ("\n\n",)
    assert parsed.stream


def test_stop_scan_holds_back_only_a_possible_start() -> None:
    scan = StopScan(("END", "\n\n"))
    assert scan.feed("abc E") == "abc "  # "E" may start "END"
    assert scan.feed("x") == "Ex"
    assert scan.feed("yz\n") == "yz"
    assert scan.feed("\nmore") == "" and scan.matched == "\n\n"
    scan = StopScan(("END",))
    assert scan.feed("aEN") == "a" and scan.flush() == "EN"
    assert StopScan(()).feed("anything") == "anything"
