"""One error tree: every exception class the project defines hangs from router.errors'
TandemError, and the tree drawn in that module's docstring names them all.

Read from the source (ast), not by importing: the packages import MLX, vLLM and Textual
lazily, and this check must stay fast."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import router.errors

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "local", "cloud", "tui")
# Control flow, not errors: never raised to a caller.
NOT_ERRORS = {"_StopRequested"}


def _classes() -> dict[str, tuple[str, list[str]]]:
    """Every class in the packages: name → (where, base names)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ClassDef):
                    bases = [
                        b.id if isinstance(b, ast.Name) else b.attr
                        for b in node.bases
                        if isinstance(b, ast.Name | ast.Attribute)
                    ]
                    found[node.name] = (str(path.relative_to(ROOT)), bases)
    return found


def _builtin_exception(name: str) -> bool:
    value = getattr(builtins, name, None)
    return isinstance(value, type) and issubclass(value, BaseException)


def _exception_classes() -> dict[str, tuple[str, list[str]]]:
    classes = _classes()

    def is_exception(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if _builtin_exception(name):
            return True
        if name not in classes or name in seen:
            return False
        return any(is_exception(b, seen | {name}) for b in classes[name][1])

    return {n: v for n, v in classes.items() if is_exception(n) and n not in NOT_ERRORS}


def test_every_error_class_hangs_from_tandem_error() -> None:
    errors = _exception_classes()

    def rooted(name: str) -> bool:
        if name == "TandemError":
            return True
        return name in errors and any(rooted(b) for b in errors[name][1])

    stray = [f"{where}: {name}" for name, (where, _) in errors.items() if not rooted(name)]
    assert not stray, "errors outside the tree (derive them from TandemError):\n" + "\n".join(
        stray
    )


def test_the_tree_in_the_docstring_names_every_error() -> None:
    doc = router.errors.__doc__ or ""
    missing = sorted(n for n in _exception_classes() if n not in doc and not n.startswith("_"))
    assert not missing, f"add these to the tree in router/errors.py: {missing}"

