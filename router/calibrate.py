"""Pick the complexity threshold from the user's own prompts, for a target cloud share.

The way RouteLLM calibrates, but on the user's traffic instead of a public set: score every
prompt, then choose the threshold at which the wanted share of them scores above it (requests
scoring above the threshold go to the cloud).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from router.complexity import ComplexityScorer, FeatureScorer
from router.protocol import Message, TandemError

__all__ = ["Calibration", "CalibrationError", "calibrate", "load_prompts", "threshold_for_share"]


class CalibrationError(TandemError, ValueError):
    """The prompts file cannot be read, or there is nothing to calibrate on."""


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float
    target_share: float
    achieved_share: float
    """The share of the given prompts that score above the threshold."""
    prompts: int


def threshold_for_share(scores: Sequence[float], share: float) -> float:
    """The threshold t in [0, 1] for which the share of `scores` strictly above t is closest
    to `share` (ties in the scores make some shares unreachable; the nearer one wins, and on
    equal distance the smaller cloud share)."""
    if not scores:
        raise CalibrationError("no prompts to calibrate on")
    if not 0.0 <= share <= 1.0:
        raise CalibrationError("the cloud share must be between 0 and 1")
    ordered = sorted(scores, reverse=True)
    n = len(ordered)
    best_t, best_gap = 1.0, share  # t = 1.0: nothing goes to the cloud
    for k in range(1, n + 1):
        # Send the k highest: t strictly between the k-th and the (k+1)-th score (or 0).
        high = ordered[k - 1]
        low = ordered[k] if k < n else 0.0
        if (k < n and low == high) or high <= 0.0:
            continue  # a tie cannot be split; a score of 0 is never above a threshold
        gap = abs(k / n - share)
        if gap < best_gap - 1e-12:
            best_t, best_gap = (low + high) / 2, gap
    return round(best_t, 6)


def calibrate(
    conversations: Sequence[Sequence[Message]],
    cloud_share: float,
    scorer: ComplexityScorer | None = None,
) -> Calibration:
    """Score every conversation and choose the threshold for `cloud_share`."""
    scorer = scorer or FeatureScorer()
    scores = [scorer.score(c) for c in conversations]
    threshold = threshold_for_share(scores, cloud_share)
    achieved = sum(1 for s in scores if s > threshold) / len(scores)
    return Calibration(threshold, cloud_share, achieved, len(scores))


def load_prompts(path: Path) -> list[tuple[Message, ...]]:
    """Prompts from a file: JSON Lines (each line a string, {"prompt": ...}, or {"messages":
    [...]} as chat data is stored; for chat data, every user turn with its history counts), or
    plain text with one prompt per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"cannot read {path}: {exc}") from exc
    conversations: list[tuple[Message, ...]] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        if line[0] not in '{["':
            conversations.append((Message("user", line),))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            conversations.append((Message("user", line),))
            continue
        conversations += _conversations_in(row, path, number)
    if not conversations:
        raise CalibrationError(f"{path} holds no prompts")
    return conversations


def _conversations_in(row: object, path: Path, number: int) -> list[tuple[Message, ...]]:
    if isinstance(row, str):
        return [(Message("user", row),)]
    if isinstance(row, dict) and isinstance(row.get("prompt"), str):
        return [(Message("user", row["prompt"]),)]
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        history: list[Message] = []
        found: list[tuple[Message, ...]] = []
        for item in row["messages"]:
            try:
                message = Message(item["role"], str(item["content"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise CalibrationError(f"{path}:{number}: not a chat message: {item!r}") from exc
            history.append(message)
            if message.role == "user":
                found.append(tuple(history))
        return found
    raise CalibrationError(
        f'{path}:{number}: expected a string, {{"prompt": ...}} or {{"messages": [...]}}'
    )
