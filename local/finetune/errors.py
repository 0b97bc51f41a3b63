"""The typed failures of fine-tuning; see the tree in the package docstring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from local.finetune.data import Issue

__all__ = [
    "AdapterNotFound",
    "BaseMismatch",
    "DataError",
    "ExportRefused",
    "FinetuneError",
    "ResumeError",
]


class FinetuneError(Exception):
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
