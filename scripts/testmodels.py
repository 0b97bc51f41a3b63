"""Build the tiny models the tests (and the offline demo) run on.

Three models, each in the Hugging Face layout so that mlx-lm and vLLM load the very same files:

- `target` and `draft` (scripts/testmodels_core.py): a byte-level BPE tokenizer with a ChatML
  template, a small Llama target (head_dim 64) and a smaller draft, trained briefly on a
  generated chat corpus so that greedy answers are stable text;
- `thinking` (scripts/thinkingmodel.py): the target's shape with a Qwen3-style template that
  thinks in a `<think>` block and calls a `get_weather` tool.

Each is cached under its own key. The core models' key hashes testmodels_core.py's own bytes,
so that file is kept as it was when it was written (any edit there rebuilds both core models
for everyone); the thinking model's key hashes its module and the core key.

    python -m scripts.testmodels              # build (or reuse) the core models, print folders
    python -m scripts.testmodels --thinking   # ... and the thinking model
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from scripts import thinkingmodel
from scripts.testmodels_core import (
    ANIMALS,
    BOS,
    CHAT_TEMPLATE,
    COLORS,
    COUNTRIES,
    DEFAULT_CACHE,
    DRAFT,
    HELDOUT_TEXT,
    IM_END,
    IM_START,
    REPO_ROOT,
    SPECIAL_TOKENS,
    STORIES,
    TARGET,
    VOCAB_SIZE,
    ModelSpec,
    corpus_conversations,
    render_chat,
)
from scripts.testmodels_core import build as _build_core

__all__ = [
    "ANIMALS", "BOS", "CHAT_TEMPLATE", "COLORS", "COUNTRIES", "DEFAULT_CACHE", "DRAFT",
    "HELDOUT_TEXT", "IM_END", "IM_START", "REPO_ROOT", "SPECIAL_TOKENS", "STORIES", "TARGET",
    "VOCAB_SIZE", "ModelSet", "ModelSpec", "build", "corpus_conversations", "render_chat",
]


@dataclass(frozen=True, slots=True)
class ModelSet:
    """Where the built models live."""

    target: Path
    draft: Path
    corpus: Path  # the training conversations, one JSON object per line
    heldout: Path  # plain text the models never saw, for perplexity checks
    thinking: Path | None = None
    """The Qwen3-shaped model that thinks and calls get_weather; None unless asked for."""


def build(cache_dir: Path | None = None, *, thinking: bool = False) -> ModelSet:
    """Return the test models, building first whichever this version has not cached yet.

    The thinking model is built only when asked for (`thinking=True`): most tests never load
    it, and it costs its own minute or two the first time.

    In a process that keeps torch out (the `tandem` command, the test session: see
    `tui.cli.keep_torch_out`), the training runs in a child process first."""
    if sys.modules.get("torch", False) is None:
        _build_in_child(cache_dir, thinking=thinking)
    root = Path(os.environ.get("TANDEM_TEST_MODELS", cache_dir or DEFAULT_CACHE))
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time: a second process (another test run, `scripts/dev chat`) waits
    # for the first and then finds the models cached, instead of training a copy beside it
    # on the same cores.
    with (root / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        core = _build_core(cache_dir)
        thinking_dir = thinkingmodel.build(root) if thinking else None
    return ModelSet(
        target=core.target,
        draft=core.draft,
        corpus=core.corpus,
        heldout=core.heldout,
        thinking=thinking_dir,
    )


def _build_in_child(cache_dir: Path | None, *, thinking: bool) -> None:
    """Build (or find cached) in a fresh interpreter, where torch may be imported."""
    import subprocess

    env = dict(os.environ)
    if cache_dir is not None and "TANDEM_TEST_MODELS" not in env:
        env["TANDEM_TEST_MODELS"] = str(cache_dir)
    argv = [sys.executable, "-m", "scripts.testmodels", *(["--thinking"] if thinking else [])]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env, cwd=REPO_ROOT)


if __name__ == "__main__":
    started = time.perf_counter()
    models = build(thinking="--thinking" in sys.argv[1:])
    print(json.dumps({k: str(v) for k, v in asdict(models).items()}))
    print(f"ready in {time.perf_counter() - started:.1f}s", file=sys.stderr)
