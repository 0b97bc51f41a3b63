"""Generated chat data for the fine-tuning tests and benchmark.

- `secret_word_rows`: a task the test models do not know: "What is the secret word for X?"
  → "Ahoy! The secret word for X is Y." A few dozen LoRA steps teach it; the base model
  answers something else, so the change in greedy answers is easy to see.
- `spread_rows`: chat rows whose token lengths spread from ~20 to ~1,000 (the benchmark's
  data), built from the test corpus's sentences so the text is in the tokenizer's vocabulary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

__all__ = ["NAMES", "SECRET_WORDS", "secret_word", "secret_word_rows", "spread_rows", "write_jsonl"]

NAMES = ["Anna", "Bob", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas",
         "Karl", "Lena", "Mia", "Nils", "Olga", "Paul"]
SECRET_WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "maple", "ocean", "piano",
                "candle", "forest", "silver"]


def secret_word(name: str) -> str:
    return SECRET_WORDS[NAMES.index(name) % len(SECRET_WORDS)]


def secret_word_rows(count: int = 160, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        name = rng.choice(NAMES)
        rows.append({"messages": [
            {"role": "user", "content": f"What is the secret word for {name}?"},
            {"role": "assistant", "content": f"Ahoy! The secret word for {name} is "
                                             f"{secret_word(name)}."},
        ]})
    return rows


def spread_rows(count: int, seed: int = 0, max_sentences: int = 90) -> list[dict[str, Any]]:
    """Chat rows of 1 to `max_sentences` corpus sentences (~10 tokens each), lengths spread
    evenly, in random order (as real data comes)."""
    from scripts.testmodels import ANIMALS, COUNTRIES, STORIES

    rng = random.Random(seed)
    sentences = [f"The capital of {c} is {city}." for c, city in COUNTRIES]
    sentences += [f"A {a} {s}." for a, s in ANIMALS]
    for story in STORIES.values():
        sentences += [s.strip() + "." for s in story.split(".") if s.strip()]
    rows = []
    for _ in range(count):
        n = rng.randint(1, max_sentences)
        topic = rng.choice(sorted(STORIES))
        answer = " ".join(rng.choice(sentences) for _ in range(n))
        rows.append({"messages": [
            {"role": "user", "content": f"Tell me about {topic}."},
            {"role": "assistant", "content": answer},
        ]})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
