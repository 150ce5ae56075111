"""The import graph among pcipassd's own modules, read with ast: a measure, not a lint.

Only module-level imports count (those the interpreter runs when the module is imported): an
import inside a function, or under ``if TYPE_CHECKING:``, is left out of :func:`module_graph`
and listed by :func:`deferred_imports` instead.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pcipassd"


def module_names() -> list[str]:
    """Every module of the package, dotted (``pcipassd.verbs.plan``); a package by its name."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _path(module: str) -> Path:
    base = PACKAGE.parent.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _targets(node: ast.Import | ast.ImportFrom, module: str, known: set[str]) -> set[str]:
    """The pcipassd modules an import statement names (``from pkg import mod`` names pkg.mod)."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        found = set()
        for base in bases:
            parts = base.split(".")
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in known:
                    found.add(".".join(parts[:n]))
                    break
        return found
    if node.level:
        package = module.split(".")
        if _path(module).name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            found.add(f"{base}.{alias.name}")
        elif base in known:
            found.add(base)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(module: str) -> tuple[set[str], set[str]]:
    """(module-level imports, deferred imports) of one module, among pcipassd's modules."""
    known = set(module_names())
    tree = ast.parse(_path(module).read_text(), str(_path(module)))
    top: set[str] = set()
    deferred: set[str] = set()

    def visit(body: list[ast.stmt], at_top: bool) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                (top if at_top else deferred).update(_targets(node, module, known) - {module})
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(list(ast.iter_child_nodes(node)), False)  # type: ignore[arg-type]
            elif isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.body, False)
                visit(node.orelse, at_top)
            else:
                visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)],
                      at_top)

    visit(tree.body, True)
    return top, deferred


@cache
def module_graph() -> dict[str, frozenset[str]]:
    """Each module and the pcipassd modules it imports at module level."""
    return {m: frozenset(_walk(m)[0]) for m in module_names()}


@cache
def deferred_imports() -> dict[str, frozenset[str]]:
    """Each module and the pcipassd modules it imports only inside a function or for typing."""
    return {m: frozenset(_walk(m)[1]) for m in module_names()}


def find_cycle(graph: dict[str, frozenset[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def longest_chain(graph: dict[str, frozenset[str]]) -> list[str]:
    """The longest import chain (importer first): its length minus one is the graph's depth."""
    best: dict[str, list[str]] = {}

    def chain(node: str) -> list[str]:
        if node not in best:
            tails = [chain(nxt) for nxt in sorted(graph.get(node, ()))]
            best[node] = [node, *max(tails, key=len, default=[])]
        return best[node]

    assert find_cycle(graph) is None, find_cycle(graph)
    return max((chain(n) for n in sorted(graph)), key=len)


if __name__ == "__main__":
    path = longest_chain(module_graph())
    print(f"depth {len(path) - 1} (levels {len(path)}):", " -> ".join(path))
