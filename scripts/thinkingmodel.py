"""The third test model: one that thinks and calls tools the way Qwen3 does.

Same tiny Llama architecture as the target (head_dim 64), its own byte-level BPE tokenizer and
a chat template of Qwen3's shape:

- an `enable_thinking` switch; with thinking on, the answer starts with a
  `<think>\\n…\\n</think>\\n\\n` block, with it off the generation prompt carries an empty one;
- tools rendered into the system prompt as JSON inside `<tools></tools>`; the model calls one
  with `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`;
- `tool` role messages rendered as `<tool_response>` blocks in a user turn;
- reasoning of turns before the last user question dropped, as Qwen3's template does.

`<think>`, `</think>`, `<tool_call>`, `</tool_call>`, `<tool_response>` and `</tool_response>`
are single, non-special tokens, as in Qwen3's vocabulary: mlx-lm then infers the think markers
and (from `<tool_call>` and `tool_call.name` in the template) its `json_tools` parser, and vLLM
runs it with `--reasoning-parser qwen3 --enable-auto-tool-choice --tool-call-parser hermes`.

Trained briefly with torch so that it thinks a sentence before answering, calls
`get_weather(city)` for weather questions when the tool is offered, and answers from the tool's
result (copying its condition and temperature). Cached beside the other test models under a key
that hashes this file and the core builder's key.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scripts import testmodels_core as core

THINK_START, THINK_END = "<think>", "</think>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
MARKER_TOKENS = [
    THINK_START, THINK_END, TOOL_CALL_START, TOOL_CALL_END, "<tool_response>", "</tool_response>"
]
VOCAB_SIZE = 768

# vLLM's names for the parsers that read this template (and Qwen3's).
VLLM_REASONING_PARSER = "qwen3"
VLLM_TOOL_PARSER = "hermes"

# Qwen3's chat template, with the tools preamble cut to two lines (its shape kept: tools as
# JSON in <tools> in the system turn, the call format after it); the long English preamble
# would only cost training time on a model this small.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nCall a function as <tool_call>\\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- else %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' and message.content is string and "
    "not(message.content.startswith('<tool_response>') and "
    "message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}"
    "{%- else %}{%- set content = '' %}{%- endif %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}"
    "{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n')"
    ".split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + "
    "'\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- if message.tool_calls %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and content) or (not loop.first) %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WEATHER_CITIES = [city for _, city in core.COUNTRIES]
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy"]

SPEC = core.ModelSpec(
    name="thinking",
    hidden_size=128,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=384,
    train_steps=600,
    learning_rate=3e-3,
    seed=3,
    batch_size=16,
)


def weather_result(city: str, rng: random.Random) -> str:
    """What the training corpus's get_weather returns: a small JSON object."""
    return json.dumps(
        {"city": city, "condition": rng.choice(CONDITIONS), "temperature": rng.randint(0, 30)}
    )


def _fact(rng: random.Random) -> tuple[str, str, str]:
    """A question, a one-sentence reasoning and the answer."""
    kind = rng.choice(["capital", "capital", "animal", "color", "sum", "greet"])
    if kind == "capital":
        country, city = rng.choice(core.COUNTRIES)
        return (
            f"What is the capital of {country}?",
            f"The user asks for the capital of {country}. It is {city}.",
            f"The capital of {country} is {city}.",
        )
    if kind == "animal":
        animal, sound = rng.choice(core.ANIMALS)
        return (
            f"What sound does a {animal} make?",
            f"The user asks about a {animal}. A {animal} {sound}.",
            f"A {animal} {sound}.",
        )
    if kind == "color":
        thing, color = rng.choice(core.COLORS)
        return (
            f"What color is the {thing}?",
            f"The user asks about the {thing}. It is {color}.",
            f"The {thing} is {color}.",
        )
    if kind == "sum":
        x, y = rng.randint(1, 9), rng.randint(1, 9)
        return (
            f"What is {x} plus {y}?",
            f"The user wants {x} plus {y}. That makes {x + y}.",
            f"{x} plus {y} is {x + y}.",
        )
    return (
        rng.choice(["Hello!", "Hi there.", "Good morning!"]),
        "The user greets me. I greet back.",
        "Hello! How can I help you today?",
    )


def weather_question(city: str, rng: random.Random) -> str:
    return rng.choice(
        [
            f"What is the weather in {city}?",
            f"How is the weather in {city} today?",
            f"Is it sunny in {city}?",
        ]
    )


def corpus(seed: int = 0, count: int = 2000) -> list[dict[str, Any]]:
    """Rows of {"messages", "tools", "enable_thinking"}, rendered by the template to train on."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        kind = rng.choice(["fact"] * 3 + ["fact_nothink"] + ["call"] * 3 + ["answer"] * 3)
        # Tools offered with some plain questions too: the model learns not to call for them.
        tools = [WEATHER_TOOL] if kind in ("call", "answer") or rng.random() < 0.2 else None
        messages: list[dict[str, Any]] = []
        if rng.random() < 0.2:
            messages.append({"role": "system", "content": "You are a helpful assistant."})
        if rng.random() < 0.25:
            # An earlier turn whose reasoning the template drops.
            q, r, a = _fact(rng)
            messages += [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a, "reasoning_content": r},
            ]
        think = kind != "fact_nothink"
        if kind in ("fact", "fact_nothink"):
            q, r, a = _fact(rng)
            messages.append({"role": "user", "content": q})
            final = {"role": "assistant", "content": a, "reasoning_content": r if think else ""}
            messages.append(final)
        else:
            city = rng.choice(WEATHER_CITIES)
            messages.append({"role": "user", "content": weather_question(city, rng)})
            call = {
                "role": "assistant",
                "content": "",
                "reasoning_content": (
                    f"The user asks about the weather in {city}. I will call get_weather."
                ),
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": city}},
                    }
                ],
            }
            messages.append(call)
            if kind == "answer":
                result = json.loads(weather_result(city, rng))
                messages.append({"role": "tool", "content": json.dumps(result)})
                condition, temperature = result["condition"], result["temperature"]
                messages.append(
                    {
                        "role": "assistant",
                        "content": (
                            f"It is {condition} in {city}, {temperature} degrees."
                        ),
                        "reasoning_content": (
                            f"The tool says {city} is {condition} at {temperature} degrees."
                        ),
                    }
                )
        rows.append({"messages": messages, "tools": tools, "enable_thinking": think})
    return rows


def _key() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(core._cache_key().encode())
    digest.update(json.dumps(asdict(SPEC)).encode())
    return digest.hexdigest()[:12]


def _train_tokenizer(texts: list[str], folder: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=core.SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The markers are learnt as whole tokens only: hide them from the merges.
    plain = texts
    for marker in MARKER_TOKENS:
        plain = [t.replace(marker, " ") for t in plain]
    tok.train_from_iterator(plain, trainer=trainer)
    # Not special, as in Qwen3: they stay in the decoded text, where the parsers look for them.
    tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in MARKER_TOKENS])
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": core.BOS,
        "eos_token": core.IM_END,
        "pad_token": core.BOS,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": SPEC.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": core.BOS, "eos_token": core.IM_END, "pad_token": core.BOS})
    )
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def render(row: dict[str, Any], folder: Path) -> str:
    """A corpus row as the model's own template renders it (the training text)."""
    from transformers import AutoTokenizer

    tokenizer = _tokenizers.get(folder) or AutoTokenizer.from_pretrained(folder)
    _tokenizers[folder] = tokenizer
    text = tokenizer.apply_chat_template(
        row["messages"], tools=row["tools"], tokenize=False,
        enable_thinking=row["enable_thinking"],
    )
    # The last assistant turn always carries its think block (empty when thinking is off),
    # exactly what the generation prompt with enable_thinking=False ends with.
    assert isinstance(text, str)
    return text


_tokenizers: dict[Path, Any] = {}


def _bootstrap_texts(rows: list[dict[str, Any]], folder: Path) -> list[str]:
    # The tokenizer is trained on rendered text, and rendering needs a tokenizer with the
    # template: a throwaway one with the same template renders the rows first.
    scratch = folder / "bootstrap"
    scratch.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(["hello"], scratch)
    texts = [render(r, scratch) for r in rows]
    shutil.rmtree(scratch)
    _tokenizers.pop(scratch, None)
    return texts


def _build(folder: Path) -> None:
    from tokenizers import Tokenizer

    rows = corpus()
    texts = _bootstrap_texts(rows, folder)
    model_dir = folder / SPEC.name
    model_dir.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(texts, model_dir)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    bos_id = tokenizer.token_to_id(core.BOS)
    eos_id = tokenizer.token_to_id(core.IM_END)
    encodings = [tokenizer.encode(t) for t in texts]
    rows_ids = [e.ids for e in encodings]
    trained = [_assistant_mask(t, e.offsets) for t, e in zip(texts, encodings, strict=True)]
    with (folder / "corpus.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    _train(model_dir, rows_ids, trained, tokenizer.get_vocab_size(), bos_id, eos_id)


_ASSISTANT = re.compile(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", re.DOTALL)


def _assistant_mask(text: str, offsets: list[tuple[int, int]]) -> list[bool]:
    """Which tokens are the assistant's (reasoning, calls, answers): the only ones with a loss.
    The prompt, tools and tool results are context; learning to predict them would spend
    this small model's few steps on text it never has to write."""
    spans = [m.span(1) for m in _ASSISTANT.finditer(text)]
    return [any(a <= start < b for a, b in spans) for start, _ in offsets]


def _train(
    folder: Path, rows: list[list[int]], trained: list[list[bool]], vocab_size: int,
    bos_id: int, eos_id: int,
) -> None:
    # The core builder's torch loop (scripts/testmodels_core.py), with the loss masked to the
    # assistant's tokens; the core file cannot change without rebuilding the core models.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SPEC.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = LlamaForCausalLM(LlamaConfig(**core._hf_config(SPEC, vocab_size, bos_id, eos_id)))
    model = model.float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=SPEC.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=SPEC.learning_rate, total_steps=SPEC.train_steps, pct_start=0.1
    )
    rng = random.Random(SPEC.seed)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    batches = [order[i : i + SPEC.batch_size] for i in range(0, len(order), SPEC.batch_size)]
    model.train()
    losses: list[float] = []
    for _ in range(SPEC.train_steps):
        picked = batches[rng.randrange(len(batches))]
        width = max(len(rows[i]) for i in picked)
        ids = torch.tensor([rows[i] + [bos_id] * (width - len(rows[i])) for i in picked])
        labels = torch.tensor([
            [t if keep else -100 for t, keep in zip(rows[i], trained[i], strict=True)]
            + [-100] * (width - len(rows[i]))
            for i in picked
        ])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.save_pretrained(folder, safe_serialization=True)
    saved = json.loads((folder / "config.json").read_text())
    saved.update({"torch_dtype": "float32", "dtype": "float32"})
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}, indent=2)
    )
    tail = losses[-20:]
    (folder / "training.json").write_text(
        json.dumps({"spec": asdict(SPEC), "final_train_loss": sum(tail) / len(tail)}, indent=2)
    )


def build(root: Path) -> Path:
    """The thinking model's folder under `root`, built first if this version is not cached."""
    folder = root / f"thinking-{_key()}"
    if not (folder / ".complete").exists():
        # Scratch folder and rename, as the core builder does: never half-built, never raced.
        scratch = root / f".building-thinking-{os.getpid()}"
        if scratch.exists():
            shutil.rmtree(scratch)
        _build(scratch)
        (scratch / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        try:
            scratch.rename(folder)
        except OSError:
            shutil.rmtree(scratch)
    return folder / SPEC.name
