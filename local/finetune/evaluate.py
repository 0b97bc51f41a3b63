"""Compare an adapter with its base model: held-out loss and perplexity with and without it,
and a few greedy answers side by side."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from local.finetune.data import Example, load_data
from local.finetune.errors import FinetuneError
from local.finetune.registry import AdapterRegistry

__all__ = ["EvalReport", "Sample", "evaluate_adapter"]


@dataclass(frozen=True, slots=True)
class Sample:
    prompt: str
    expected: str
    base: str
    adapted: str


@dataclass(slots=True)
class EvalReport:
    name: str
    rows: int
    base_loss: float
    adapted_loss: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def base_perplexity(self) -> float:
        return math.exp(min(self.base_loss, 700.0))

    @property
    def adapted_perplexity(self) -> float:
        return math.exp(min(self.adapted_loss, 700.0))

    def render(self, width: int = 38) -> str:
        """A small table for the terminal."""
        lines = [
            f"adapter {self.name}: {self.rows} held-out rows",
            f"  {'':12}{'loss':>10}{'perplexity':>14}",
            f"  {'base':12}{self.base_loss:>10.3f}{self.base_perplexity:>14.2f}",
            f"  {'adapter':12}{self.adapted_loss:>10.3f}{self.adapted_perplexity:>14.2f}",
        ]
        for i, s in enumerate(self.samples, 1):
            lines += ["", f"sample {i}: {s.prompt}", f"  {'base':<{width}}  adapter"]
            left = textwrap.wrap(s.base or "(empty)", width) or [""]
            right = textwrap.wrap(s.adapted or "(empty)", width) or [""]
            for j in range(max(len(left), len(right))):
                a = left[j] if j < len(left) else ""
                b = right[j] if j < len(right) else ""
                lines.append(f"  {a:<{width}}  {b}")
        return "\n".join(lines)


def _prompt_of(example: Example) -> tuple[list[dict[str, str]], str] | None:
    """The conversation up to the last assistant message, and that message."""
    if example.format == "completions":
        return [{"role": "user", "content": example.row["prompt"]}], example.row["completion"]
    if example.format != "chat":
        return None
    messages = example.row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if last == 0:
        return None
    return messages[:last], messages[last].get("content") or ""


def evaluate_adapter(
    registry: AdapterRegistry,
    name: str,
    *,
    model: str | None = None,
    data: Path | None = None,
    cache_dir: Path,
    samples: int = 3,
    max_tokens: int = 48,
    batch_size: int = 4,
) -> EvalReport:
    """Loss on the held-out split (the validation split of the adapter's own data unless
    `data` is given: then all of it), with and without the adapter, and `samples` greedy
    answers from each. Refuses (BaseMismatch) a model other than the adapter's base."""
    import mlx.core as mx
    from mlx_lm import generate, load
    from mlx_lm.tuner.trainer import default_loss, evaluate
    from mlx_lm.tuner.utils import load_adapters

    from local.finetune.pipeline import Batcher, prepare, tokenizer_digest
    from local.finetune.train import local_model_path

    record = registry.get(name)
    model_path = local_model_path(model or record.base_model)
    adapter_folder = registry.resolve(name, base=model_path)
    hp = record.hyperparameters
    max_seq_len = int(hp.get("max_seq_len", 2048))
    if data is None:
        source = Path(record.data_path)
        if not source.exists():
            raise FinetuneError(
                f"the adapter's data {source} is gone; pass --data with rows to evaluate on"
            )
        dataset = load_data(source, skip_invalid=True)
        held_out = dataset.valid
    else:
        dataset = load_data(data, skip_invalid=True)
        held_out = dataset.train + dataset.valid
    if not held_out:
        raise FinetuneError("no held-out rows to evaluate on; pass --data")
    dataset.train, dataset.valid = [], held_out

    base, tokenizer = load(str(model_path))[:2]
    prepared = prepare(
        dataset, tokenizer, tokenizer_hash=tokenizer_digest(model_path), cache_dir=cache_dir,
        max_seq_len=max_seq_len, mask_prompt=bool(hp.get("mask_prompt", True)),
    )
    prompts = [p for p in (_prompt_of(e) for e in held_out) if p is not None][: max(samples, 0)]

    def loss_and_answers() -> tuple[float, list[str]]:
        mx.random.seed(0)
        value = evaluate(
            model=base, dataset=prepared.valid, batch_size=batch_size, num_batches=-1,
            max_seq_length=max_seq_len, loss=default_loss, iterate_batches=Batcher(),
        )
        answers = []
        for messages, _ in prompts:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=False)
            answers.append(generate(base, tokenizer, text, max_tokens=max_tokens).strip())
        return float(value), answers

    base_loss, base_answers = loss_and_answers()
    load_adapters(base, str(adapter_folder))
    adapted_loss, adapted_answers = loss_and_answers()
    shown = [
        Sample(messages[-1]["content"], expected, b, a)
        for (messages, expected), b, a in zip(prompts, base_answers, adapted_answers, strict=True)
    ]
    return EvalReport(name, len(prepared.valid), base_loss, adapted_loss, shown)
