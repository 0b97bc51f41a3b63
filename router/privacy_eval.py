"""Measuring the scanner on labelled conversations: the corpus test, scripts/bench/privacy.py
and `tandem privacy test FILE.jsonl` all read the same rows and count the same way.

A row: {"messages": [{"role": "user", "content": "..."}, ...], "private": true|false,
"kind": "<family>" (optional)}. A private row is caught when the scanner finds anything in it
(what matters is that it stays on the device); a row that is not private is a false alarm when
the scanner finds anything. Per kind: recall = caught ÷ private rows of that kind, precision =
caught ÷ (caught + false alarms among that kind's look-alikes). Rows without a kind count under
"(none)".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from router.privacy import PrivacyScanner
from router.protocol import ROLES, Message, TandemError

__all__ = ["Case", "CaseError", "KindScore", "Report", "evaluate", "load_cases"]


class CaseError(TandemError, ValueError):
    """A labelled file that cannot be read: names the line and what is wrong."""


@dataclass(frozen=True, slots=True)
class Case:
    messages: tuple[Message, ...]
    private: bool
    kind: str = ""
    line: int = 0
    note: str = ""


def load_cases(path: Path) -> list[Case]:
    """Rows of a JSONL file; CaseError names the first bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CaseError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CaseError(f"{path} is not UTF-8 text") from exc
    cases = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise CaseError(f"{path}:{n}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise CaseError(f"{path}:{n}: each line must be a JSON object")
        messages = data.get("messages")
        private = data.get("private")
        if not isinstance(private, bool):
            raise CaseError(f'{path}:{n}: needs "private": true or false')
        if not isinstance(messages, list) or not messages:
            raise CaseError(f'{path}:{n}: needs "messages", a non-empty list')
        parsed = []
        for m in messages:
            if (
                not isinstance(m, dict)
                or m.get("role") not in ROLES
                or not isinstance(m.get("content"), str)
            ):
                raise CaseError(
                    f'{path}:{n}: each message needs "role" ({", ".join(ROLES)}) and '
                    '"content" (a string)'
                )
            parsed.append(Message(m["role"], m["content"]))
        kind = data.get("kind") or ""
        if not isinstance(kind, str):
            raise CaseError(f'{path}:{n}: "kind" must be a string')
        note = data.get("case") or ""
        cases.append(Case(tuple(parsed), private, kind, n, str(note)))
    if not cases:
        raise CaseError(f"{path} holds no rows")
    return cases


@dataclass(slots=True)
class KindScore:
    private: int = 0
    caught: int = 0
    lookalikes: int = 0
    false_alarms: int = 0

    @property
    def recall(self) -> float | None:
        return self.caught / self.private if self.private else None

    @property
    def precision(self) -> float | None:
        flagged = self.caught + self.false_alarms
        return self.caught / flagged if flagged else None


@dataclass(slots=True)
class Report:
    kinds: dict[str, KindScore] = field(default_factory=dict)
    misses: list[Case] = field(default_factory=list)
    """Private rows the scanner let through."""
    false_alarms: list[tuple[Case, list[str]]] = field(default_factory=list)
    """Rows that are not private, with the kinds the scanner named."""

    @property
    def total(self) -> KindScore:
        t = KindScore()
        for s in self.kinds.values():
            t.private += s.private
            t.caught += s.caught
            t.lookalikes += s.lookalikes
            t.false_alarms += s.false_alarms
        return t

    def as_dict(self) -> dict[str, dict[str, float | int | None]]:
        def one(s: KindScore) -> dict[str, float | int | None]:
            return {
                "recall": None if s.recall is None else round(s.recall, 4),
                "precision": None if s.precision is None else round(s.precision, 4),
                "private": s.private,
                "lookalikes": s.lookalikes,
            }

        out = {kind: one(s) for kind, s in sorted(self.kinds.items())}
        out["all"] = one(self.total)
        return out


def evaluate(scanner: PrivacyScanner, cases: Iterable[Case]) -> Report:
    report = Report()
    for case in cases:
        findings = scanner.scan(case.messages)
        score = report.kinds.setdefault(case.kind or "(none)", KindScore())
        if case.private:
            score.private += 1
            if findings:
                score.caught += 1
            else:
                report.misses.append(case)
        else:
            score.lookalikes += 1
            if findings:
                score.false_alarms += 1
                report.false_alarms.append((case, sorted({f.kind for f in findings})))
    return report


def format_table(report: Report, kinds: Sequence[str] | None = None) -> list[str]:
    """Lines of a plain table: kind, recall, precision, rows."""

    def pct(v: float | None) -> str:
        return "   –" if v is None else f"{v:6.1%}"

    lines = [f"{'kind':<16} {'recall':>7} {'precision':>9}  private  look-alikes"]
    names = list(kinds) if kinds is not None else sorted(report.kinds)
    for kind in [*names, "all"]:
        s = report.total if kind == "all" else report.kinds[kind]
        lines.append(
            f"{kind:<16} {pct(s.recall):>7} {pct(s.precision):>9}  {s.private:>7}  "
            f"{s.lookalikes:>11}"
        )
    return lines
