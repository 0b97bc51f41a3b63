"""Imports only go down: router/ is the base; local/ and cloud/ see only its contract; tui/ is
the composition root."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "local", "cloud", "tui")
# What each package may import from the others.
ALLOWED: dict[str, set[str]] = {
    "router": set(),
    "local": {"router.protocol"},
    "cloud": {"router.protocol"},
    "tui": {"router", "local", "cloud"},
}


def _project_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from router import protocol` imports router.protocol
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def _allowed(package: str, imported: str) -> bool:
    if imported.split(".")[0] == package:
        return True
    return any(imported == a or imported.startswith(a + ".") for a in ALLOWED[package])


def test_imports_only_go_down() -> None:
    violations = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            names = _project_imports(path)
            # `from router import protocol` yields both "router" and "router.protocol":
            # judge the most specific name only.
            specific = {n for _, n in names}
            for line, name in names:
                if any(other.startswith(name + ".") for other in specific):
                    continue
                if not _allowed(package, name):
                    violations.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not violations, "\n".join(violations)


def test_the_checker_catches_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from local.engine import Engine\nimport cloud\n")
    names = [n for _, n in _project_imports(bad)]
    assert not _allowed("router", "local.engine")
    assert not _allowed("local", "cloud")
    assert "local.engine" in names and "cloud" in names
    assert _allowed("local", "router.protocol")
    assert not _allowed("local", "router.policy")
