"""The library's modules import each other without cycles, imports inside functions counted: a cycle hidden by a
function-level import still ties two modules' lifetimes and makes their import order matter."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"intfa_compile": ROOT / "intfa_compile", "intfa_compile.passes": ROOT / "passes",
            "intfa_compile.kernels": ROOT / "kernels"}
"""Each installed package and the folder it comes from (``pyproject.toml``'s package-dir)."""


def library_modules() -> dict[str, Path]:
    """Every module of the library by its installed dotted name."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The library modules ``module`` imports anywhere in its file (``from x import y`` counts ``x.y`` when that
    is a module, else ``x``)."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known and name != module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the library modules it imports."""
    modules = library_modules()
    return {name: _imported(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (or a module importing itself): Tarjan's method."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    (tmp_path / "x.py").write_text("def f():\n    from .y import g\n")
    assert _imported("pkg.x", tmp_path / "x.py", {"pkg.x", "pkg.y"}) == {"pkg.y"}


def test_the_library_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and graph["intfa_compile.config"] and graph["intfa_compile.passes.matcher.replacement"]
    assert cycles(graph) == []


def test_every_library_module_has_a_test_file_of_its_name():
    """Tests mirror the library, one file per module (``tests/test_<module>.py``; a package's ``__init__`` aside),
    so a module's tests are found by its name."""
    missing = [name for name, path in library_modules().items()
               if path.stem != "__init__" and not (ROOT / "tests" / f"test_{path.stem}.py").exists()]
    assert missing == []
