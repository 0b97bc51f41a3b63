"""How hard a request looks: a score in [0, 1] that the policy compares with a threshold.

The scorer is pluggable (anything with `score(messages) -> float` in [0, 1]); the default reads
cheap features of the conversation, mostly of the last user message: its length, code, math,
multi-step structure, "think carefully" cues, a language other than English (the small model on
the device is weakest there), and how long the conversation is. It runs in microseconds and
needs no model. `tandem router calibrate` turns the user's own prompts into the threshold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from router.protocol import Message

__all__ = ["ComplexityScorer", "FeatureScorer", "FeatureWeights", "last_user_text"]


@runtime_checkable
class ComplexityScorer(Protocol):
    """Anything that rates a conversation: 0 = trivially easy, 1 = needs the big model."""

    name: str

    def score(self, messages: Sequence[Message]) -> float: ...


def last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return messages[-1].content if messages else ""


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Cues, matched on the lower-cased text: whole words (one regex pass splits the text into
# words, then set look-ups) and phrases or symbols (substring counts). Microseconds per message.
_WORD = re.compile(r"[a-z_#][a-z0-9_+#-]*")
_CODE_WORDS = _words(
    "def import return const function lambda #include fn impl struct println printf async "
    "await code bug stacktrace compile compiler regex sql python javascript rust typescript "
    "refactor algorithm implement debug segfault exception"
)
_CODE_SYMBOLS = ("```", "=>", "->", "::", "{", "};", "();", "==")
_MATH_WORDS = _words(
    "prove proof integral derivative equation theorem lemma matrix probability solve "
    "calculate compute eigenvalue polynomial"
)
_MATH_SYMBOLS = ("\\frac", "\\int", "\\sum", "\\sqrt", "∫", "∑", "√", "≤", "≥", "≠", "∞", "π")
_ARITHMETIC = re.compile(r"\d\s*[-+*/^=]\s*\d")
_STEP_WORDS = _words(
    "compare contrast analyze analyse plan design trade-off trade-offs tradeoffs finally "
    "step-by-step"
)
_STEP_PHRASES = (
    "step by step", "and then", "after that", "pros and cons", "explain why", "in detail",
)  # fmt: skip
_LIST_ITEM = re.compile(r"^[ \t]*(?:\d+[.)]|[-*])[ \t]+", re.M)
_THINK_PHRASES = (
    "think carefully", "think hard", "think step", "reason carefully", "reason through",
    "be rigorous", "be thorough", "be precise", "double-check", "double check", "carefully",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FeatureWeights:
    """How much each feature adds to the score (before clamping into [0, 1])."""

    length: float = 0.35
    conversation: float = 0.15
    code: float = 0.25
    math: float = 0.25
    steps: float = 0.2
    think: float = 0.3
    language: float = 0.15
    bias: float = -0.05


class FeatureScorer:
    """The default scorer: a weighted sum of cheap features, clamped into [0, 1]."""

    name = "features"

    def __init__(self, weights: FeatureWeights | None = None) -> None:
        self.weights = weights or FeatureWeights()

    def features(self, messages: Sequence[Message]) -> dict[str, float]:
        """Each feature in [0, 1], for the route record and for tuning."""
        # The last user message says most; a huge paste is capped so that scoring stays cheap
        # (its first 8,000 characters say enough about what kind of request it is).
        head = last_user_text(messages)[:8000]
        low = head.lower()
        words = _WORD.findall(low)
        code = sum(w in _CODE_WORDS for w in words) + sum(low.count(s) for s in _CODE_SYMBOLS)
        math_ = (
            sum(w in _MATH_WORDS for w in words)
            + sum(low.count(s) for s in _MATH_SYMBOLS)
            + len(_ARITHMETIC.findall(low))
        )
        steps = (
            sum(w in _STEP_WORDS for w in words)
            + sum(p in low for p in _STEP_PHRASES)
            + len(_LIST_ITEM.findall(low))
        )
        sample = head[:2000]
        non_ascii = 0 if sample.isascii() else sum(ord(ch) > 127 for ch in sample)
        history_chars = sum(len(m.content) for m in messages)
        return {
            # log-scaled: 5 words ~0.3, 50 words ~0.65, 400+ words 1.0
            "length": min(1.0, math.log1p(len(head.split())) / math.log1p(400)),
            "conversation": min(1.0, history_chars / 24000),
            "code": min(1.0, code / 4),
            "math": min(1.0, math_ / 3),
            "steps": min(1.0, steps / 3),
            "think": 1.0 if any(p in low for p in _THINK_PHRASES) else 0.0,
            "language": min(1.0, 4 * non_ascii / max(1, len(sample))),
        }

    def score(self, messages: Sequence[Message]) -> float:
        w = self.weights
        f = self.features(messages)
        raw = (
            w.bias
            + w.length * f["length"]
            + w.conversation * f["conversation"]
            + w.code * f["code"]
            + w.math * f["math"]
            + w.steps * f["steps"]
            + w.think * f["think"]
            + w.language * f["language"]
        )
        return min(1.0, max(0.0, raw))
