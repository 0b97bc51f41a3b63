"""Training data: read JSONL, validate every line before anything trains, split off validation.

Three formats, one per line, one per file:

- chat: ``{"messages": [{"role": ..., "content": ...}, ...], "tools": [...]}`` (tools optional)
- completions: ``{"prompt": ..., "completion": ...}``
- text: ``{"text": ...}``

Every problem is an `Issue` reported as ``file:line: reason``. Over-long rows are found later,
by the tokenizer (see `pipeline`), and are truncated rather than refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from local.finetune.errors import DataError, Issue

__all__ = [
    "ROLES",
    "DataSet",
    "Example",
    "Issue",
    "load_data",
    "read_jsonl",
    "split",
]

Format = Literal["chat", "completions", "text"]
ROLES = ("system", "user", "assistant", "tool")
VALID_SHARE = 0.1
"""Share of examples kept for validation when no valid.jsonl is given."""


@dataclass(frozen=True, slots=True)
class Example:
    """One valid row, with where it came from (for later messages about it)."""

    format: Format
    row: dict[str, Any]
    path: Path
    line: int
    digest: str
    """sha256 of the raw line: the split and the cache key use it."""


@dataclass(slots=True)
class DataSet:
    """Validated train and validation examples, and what was wrong with the rest."""

    train: list[Example]
    valid: list[Example]
    format: Format
    issues: list[Issue] = field(default_factory=list)
    sources: tuple[Path, ...] = ()

    @property
    def digest(self) -> str:
        """A content hash of both splits (order included): names the tokenized cache."""
        h = hashlib.sha256()
        for part in (self.train, self.valid):
            h.update(b"|split|")
            for ex in part:
                h.update(ex.digest.encode())
        return h.hexdigest()


def _format_of(row: dict[str, Any]) -> Format | None:
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "completions"
    if "text" in row:
        return "text"
    return None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _check_chat(row: dict[str, Any]) -> str | None:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            return f"message {i} is not an object"
        if "role" not in message:
            return f"message {i}: missing key 'role'"
        role = message["role"]
        if role not in ROLES:
            return f"message {i}: unknown role {role!r} (expected {', '.join(ROLES)})"
        if "content" not in message and not message.get("tool_calls"):
            return f"message {i}: missing key 'content'"
        content = message.get("content")
        if not message.get("tool_calls") and not _nonempty_str(content):
            return f"message {i} ({role}): empty content"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message to learn from"
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "'tools' must be a list"
    return None


def _check(row: dict[str, Any], fmt: Format) -> str | None:
    if fmt == "chat":
        return _check_chat(row)
    if fmt == "completions":
        for key in ("prompt", "completion"):
            if key not in row:
                return f"missing key {key!r}"
            if not _nonempty_str(row[key]):
                return f"empty {key}"
        return None
    if not _nonempty_str(row["text"]):
        return "empty text"
    return None


def read_jsonl(path: Path) -> tuple[list[Example], list[Issue]]:
    """Read and validate one JSONL file: the valid examples and an issue per bad line."""
    examples: list[Example] = []
    issues: list[Issue] = []
    first: tuple[Format, int] | None = None
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue  # blank lines (often a trailing one) are not examples
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "msg", None) or "not UTF-8"
                issues.append(Issue(path, number, f"bad JSON ({reason})"))
                continue
            if not isinstance(row, dict):
                issues.append(Issue(path, number, "not a JSON object"))
                continue
            fmt = _format_of(row)
            if fmt is None:
                issues.append(
                    Issue(path, number, "missing key: expected 'messages', 'prompt' and "
                          "'completion', or 'text'")
                )
                continue
            if first is None:
                first = (fmt, number)
            elif fmt != first[0]:
                issues.append(
                    Issue(path, number, f"{fmt} row in a file of {first[0]} rows "
                          f"(line {first[1]}); use one format per file")
                )
                continue
            problem = _check(row, fmt)
            if problem:
                issues.append(Issue(path, number, problem))
                continue
            digest = hashlib.sha256(raw.strip()).hexdigest()
            examples.append(Example(fmt, row, path, number, digest))
    return examples, issues


def split(
    examples: list[Example], share: float = VALID_SHARE
) -> tuple[list[Example], list[Example]]:
    """Deterministic train/validation split by content hash: the same rows land in the same
    split whatever their order in the file. Keeps file order within each split."""
    if len(examples) < 2:
        return list(examples), []
    n_valid = max(1, round(len(examples) * share))
    chosen = {id(e) for e in sorted(examples, key=lambda e: e.digest)[:n_valid]}
    train = [e for e in examples if id(e) not in chosen]
    valid = [e for e in examples if id(e) in chosen]
    return train, valid


def load_data(source: Path, *, skip_invalid: bool = False) -> DataSet:
    """Read a folder (train.jsonl, optional valid.jsonl) or one .jsonl file (split 90/10).

    Raises DataError listing every bad line unless `skip_invalid`, in which case the bad
    lines are left out and kept in `DataSet.issues`.
    """
    source = Path(source)
    if source.is_dir():
        train_path, valid_path = source / "train.jsonl", source / "valid.jsonl"
        if not train_path.exists():
            raise DataError(f"{source} has no train.jsonl; put the training rows there")
        sources: tuple[Path, ...] = (train_path,)
    elif source.is_file():
        train_path, valid_path = source, None
        sources = (train_path,)
    else:
        raise DataError(f"{source}: no such file or folder")
    train, issues = read_jsonl(train_path)
    if valid_path is not None and valid_path.exists():
        valid, valid_issues = read_jsonl(valid_path)
        issues += valid_issues
        sources = (train_path, valid_path)
    else:
        train, valid = split(train)
    fatal = [i for i in issues if i.fatal]
    if fatal and not skip_invalid:
        raise DataError(
            f"{len(fatal)} invalid line(s) in the data; fix them or pass --skip-invalid",
            issues,
        )
    formats = {e.format for e in train + valid}
    if not train:
        raise DataError(f"{train_path}: no valid training rows", issues)
    if len(formats) > 1:
        raise DataError(
            f"train and validation data use different formats ({', '.join(sorted(formats))})"
        )
    return DataSet(train, valid, train[0].format, issues, sources)
