"""What the test models say, measured on the machine that runs the tests.

The test models are trained where the tests run, and CPU kernels round differently from one
processor (and thread count) to the next, so a test must never assert a string that a trained
model produced on some other machine. Tests that need "the right answer" take it from here:

- `mlx_greedy`: plain mlx-lm's greedy answer: the reference for everything that runs MLX
  (the local engine, the chat, the router's device side), compared as two code paths.
- `vllm_greedy`: vLLM's own greedy answer, asked directly: the reference for everything that
  passes vLLM's output on (the gateway, the cloud client).
- `answer_logprob`: how likely a model finds a given answer (summed log-probabilities of its
  tokens after the chat prompt): for claims about training, which hold by a margin anywhere,
  where a greedy string would not.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx

__all__ = ["Turns", "answer_logprob", "chat_prompt", "mlx_greedy", "vllm_greedy", "word_in"]


Turns = str | tuple[tuple[str, str], ...]
"""One user question, or a conversation as (role, content) pairs."""


def chat_prompt(tokenizer: Any, turns: Turns) -> str:
    """The prompt the chat template makes for a question or a conversation."""
    pairs = (("user", turns),) if isinstance(turns, str) else turns
    text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in pairs],
                                         add_generation_prompt=True, tokenize=False)
    assert isinstance(text, str)
    return text


@functools.cache
def _load(model_dir: str, adapter: str | None) -> tuple[Any, Any]:
    from mlx_lm import load

    model, tokenizer = load(model_dir, adapter_path=adapter)[:2]
    return model, tokenizer


@functools.cache
def mlx_greedy(model_dir: Path, turns: Turns, max_tokens: int = 64,
               adapter: Path | None = None, prefix: str = "") -> str:
    """Plain mlx-lm's greedy answer to a question or conversation (cached per process);
    with `prefix`, the continuation of an answer that starts with it (without the prefix)."""
    from mlx_lm import generate

    model, tokenizer = _load(str(model_dir), str(adapter) if adapter else None)
    return str(generate(model, tokenizer, chat_prompt(tokenizer, turns) + prefix,
                        max_tokens=max_tokens))


@functools.cache
def vllm_greedy(url: str, served_model: str, question: str, max_tokens: int = 64,
                prefix: str = "") -> str:
    """vLLM's greedy answer to one user question, asked directly (cached per process); with
    `prefix`, the continuation of an answer that starts with it (without the prefix)."""
    messages = [{"role": "user", "content": question}]
    extra: dict[str, Any] = {}
    if prefix:
        messages.append({"role": "assistant", "content": prefix})
        extra = {"continue_final_message": True, "add_generation_prompt": False}
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": served_model, "max_tokens": max_tokens, "temperature": 0,
              "messages": messages, **extra},
        timeout=120,
    )
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


def answer_logprob(model_dir: Path, question: str, answer: str,
                   adapter: Path | None = None) -> tuple[float, int]:
    """(sum of log-probabilities of `answer`'s tokens after the question's chat prompt, number
    of tokens), under the model (with the adapter, if given)."""
    import mlx.core as mx

    model, tokenizer = _load(str(model_dir), str(adapter) if adapter else None)
    prompt = chat_prompt(tokenizer, question)
    bos = tokenizer.bos_token
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=bos is None
                                  or not prompt.startswith(bos))
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    ids = mx.array([prompt_ids + answer_ids])
    logits = model(ids[:, :-1]).astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    start = len(prompt_ids) - 1  # the logits at position i predict token i + 1
    targets = ids[0, len(prompt_ids):]
    picked = mx.take_along_axis(logprobs[0, start:], targets[:, None], axis=-1)
    return float(picked.sum().item()), len(answer_ids)


def word_in(text: str) -> str:
    """A word from the middle of `text`, to use as a stop string the answer will reach."""
    words = [w.strip(".,!?") for w in text.split()]
    words = [w for w in words[1:] if len(w) > 2] or [w for w in words if w]
    assert words, f"no word to stop at in {text!r}"
    return words[len(words) // 2]

