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
# One module more: the cloud client scans the exact request it sends (its last privacy check),
# with the router's pure scanner (no MLX, httpx or Textual: regexes and two field libraries).
MODULE_ALLOWED: dict[str, set[str]] = {
    "cloud/client.py": {"router.privacy"},
    # Both servers parse bodies with one strict JSON reader (no NaN, no lone surrogates): a
    # pure module, stdlib only.
    "cloud/gateway/fields.py": {"router.serve_checks"},
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
                extra = MODULE_ALLOWED.get(str(path.relative_to(ROOT)), set())
                if not _allowed(package, name) and not any(
                    name == a or name.startswith(a + ".") for a in extra
                ):
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


# --- no import circles -------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere: at the top, inside functions and under
    TYPE_CHECKING alike (a circle that only type checkers follow is still a circle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports module a.b when there is one, else a name from a.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_two_modules_import_each_other_even_indirectly() -> None:
    modules = _modules()
    graph = {name: _imported_modules(name, path, modules) for name, path in modules.items()}
    cycles = _import_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" ⇄ ".join(c) for c in cycles)


def test_the_cycle_check_sees_type_checking_and_function_imports(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from pkg import a\n    return a\n")
    modules = {"pkg.a": a, "pkg.b": b}
    graph = {name: _imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert _import_cycles(graph) == [["pkg.a", "pkg.b"]]
    assert _import_cycles({"x": {"y"}, "y": set()}) == []
