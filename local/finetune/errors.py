"""The typed failures of fine-tuning; see the tree in the package docstring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from router.protocol import TandemError

__all__ = [
    "AdapterNotFound",
    "BaseMismatch",
    "DataError",
    "ExportRefused",
    "FinetuneError",
    "Issue",
    "ResumeError",
]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem with one line of the data (here, beside the error that carries a list of
    them, so that data.py and this module do not import each other)."""

    path: Path
    line: int
    reason: str
    fatal: bool = True
    """False for a warning (a truncated row): training goes on."""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class FinetuneError(TandemError):
    """A failure the user can act on; `str()` says what happened and what to do."""


class DataError(FinetuneError):
    """The data has invalid lines; `issues` lists every one as `file:line: reason`."""

    def __init__(self, message: str, issues: Sequence[Issue] = ()) -> None:
        super().__init__(message)
        self.issues = tuple(issues)


class AdapterNotFound(FinetuneError, LookupError):
    """No adapter of that name in the registry. Also a LookupError, which the local engine's
    adapter lane turns into a ModelError."""


class BaseMismatch(FinetuneError):
    """The adapter was trained on a model whose weights differ from the one given."""


class ExportRefused(FinetuneError):
    """The adapter's kind (DoRA, full fine-tune) has no PEFT layout that vLLM loads."""


class ResumeError(FinetuneError):
    """`--resume` found no checkpoint, or one from a different run."""
