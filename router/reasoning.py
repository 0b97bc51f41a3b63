"""One rule for the whitespace around a thinking model's reasoning, applied by every backend.

Qwen3-style templates write `<think>\\n…\\n</think>\\n\\n` before the answer. mlx-lm's
state machine and vLLM's reasoning parser both cut at the markers but keep the newlines in
different places, so the same answer would arrive as differently padded pieces. Both backends
pass their split through a `ReasoningTrim`: the reasoning without its leading and trailing
whitespace, the answer without the whitespace that separated it from the reasoning. It also
clocks the thinking (first reasoning piece to the end of the reasoning).

Pure: no MLX, no httpx, not even the contract's events (it hands back text, the backends
wrap it), so `router.protocol` can re-export it to `local/` and `cloud/`.
"""

from __future__ import annotations

import time

__all__ = [
    "THINK_SWITCHES", "ReasoningTrim", "ThinkingClock", "parse_think_switch",
]


class ReasoningTrim:
    """Feed the split pieces in order; get back the text to emit ("" when none)."""

    def __init__(self, *, in_reasoning: bool = False) -> None:
        self.reasoning = ""
        """All reasoning text emitted so far."""
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._in_reasoning = in_reasoning
        self._held = ""  # whitespace at the end of the reasoning so far: kept only if more follows
        self._after_reasoning = False  # the answer text has not started since the reasoning

    @property
    def thought(self) -> bool:
        return bool(self.reasoning)

    @property
    def thinking_s(self) -> float | None:
        """Seconds of thinking; None when the answer did not think."""
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else time.perf_counter()
        return end - self.started_at

    def reasoning_piece(self, text: str) -> str:
        self._in_reasoning = True
        if self.started_at is None:
            self.started_at = time.perf_counter()
        if not self.reasoning:
            text = (self._held + text).lstrip()
            self._held = ""
        else:
            text = self._held + text
        body = text.rstrip()
        self._held = text[len(body):]
        self.reasoning += body
        return body

    def text_piece(self, text: str) -> str:
        self.close()
        if self._after_reasoning:
            text = text.lstrip()
            if not text:
                return ""
            self._after_reasoning = False
        return text

    def close(self) -> None:
        """The reasoning is over (answer text, a tool call or the end of the answer)."""
        if self._in_reasoning:
            self._in_reasoning = False
            self._held = ""
            self._after_reasoning = True
            if self.started_at is not None and self.ended_at is None:
                self.ended_at = time.perf_counter()


THINK_SWITCHES = {"/think": True, "/no_think": False}
"""Qwen3's soft switches, as prefixes of a user message: thinking on or off for this answer."""


def parse_think_switch(text: str) -> tuple[bool | None, str]:
    """A leading `/think` or `/no_think` → (True/False, the text without it); else (None, text)."""
    stripped = text.lstrip()
    for word, value in THINK_SWITCHES.items():
        if stripped == word or stripped.startswith(word + " ") or stripped.startswith(word + "\n"):
            return value, stripped[len(word):].lstrip()
    return None, text


class ThinkingClock:
    """How long the answer thought: from its first reasoning piece to what followed it."""

    def __init__(self) -> None:
        self.began: float | None = None
        self.ended: float | None = None

    def start(self) -> None:
        if self.began is None:
            self.began = time.perf_counter()

    def stop(self) -> None:
        if self.began is not None and self.ended is None:
            self.ended = time.perf_counter()

    @property
    def seconds(self) -> float | None:
        if self.began is None:
            return None
        return (self.ended or time.perf_counter()) - self.began
