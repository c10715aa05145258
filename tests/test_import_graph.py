"""Imports form layers, never circles: the import graph of ``mmssl/`` and ``domains/`` has no cycle.

The graph is read with :mod:`ast` (nothing is imported): every ``import`` and ``from ... import``
statement counts, at module level and inside functions alike (a function-local import only hides
a cycle), except those under ``if TYPE_CHECKING:``, which never run. ``from X import Y`` is an edge
to the module ``X.Y`` when the tree has that module, else to ``X``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmssl", "domains")


def module_name(path: Path) -> str:
    """``mmssl/objectives/__init__.py`` -> ``mmssl.objectives``; ``mmssl/recipe.py`` -> ``mmssl.recipe``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tree_modules() -> dict[str, Path]:
    """Every module of the tree by dotted name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, at any depth, bar the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                found += _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            found += _import_nodes(child)
    return found


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module name of ``from <node.module> import ...`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The tree modules that module ``name`` (file ``path``) imports."""
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        source = _absolute(node, name, path.name == "__init__.py")
        for alias in node.names:
            targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the tree."""
    modules = tree_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of 2+ modules (Tarjan's algorithm), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found, key=lambda c: (-len(c), c))


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return f"{len(component)} modules: " + "; ".join(edges)


# ---------------------------------------------------------------------------- the checker itself
def test_cycles_finds_components_and_ignores_chains() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": set(), "g": {"h"}, "h": {"g"}}
    assert cycles(graph) == [["a", "b", "c"], ["g", "h"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_count_function_level_and_skip_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "mmssl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("")
    (pkg / "other.py").write_text("")
    (pkg / "hidden.py").write_text("")
    source = (
        "from typing import TYPE_CHECKING\nimport json\nfrom mmssl.sub import leaf\nfrom . import other\n"
        "if TYPE_CHECKING:\n    from mmssl import hidden\nelse:\n    import mmssl.sub\n"
        "def f():\n    from .sub.leaf import x\n    import mmssl.other\n"
    )
    (pkg / "user.py").write_text(source)
    modules = {"mmssl", "mmssl.sub", "mmssl.sub.leaf", "mmssl.other", "mmssl.hidden", "mmssl.user"}
    assert imports_of("mmssl.user", pkg / "user.py", modules) == {"mmssl.sub.leaf", "mmssl.other", "mmssl.sub"}


def test_the_graph_reads_the_whole_tree() -> None:
    graph = import_graph()
    assert {"mmssl.recipe", "mmssl.trainer", "domains.text.domain", "mmssl.objectives"} <= graph.keys()
    assert "mmssl.config" in graph["mmssl.recipe"]  # a known edge: the checker sees real imports


# ---------------------------------------------------------------------------- the rule
def test_no_import_cycles_in_mmssl_or_domains() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (each a strongly connected component):\n" + "\n".join(
        _describe(c, graph) for c in found
    )
