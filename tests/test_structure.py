"""The shape of the package: its import graph has no cycle, no module imports another's
``_private`` name, and no operation module grows past the size a reader can hold.

Imports inside functions count as much as those at the top: a cycle hidden in a function body is
still a cycle. ``TYPE_CHECKING`` blocks count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pgcleave

SRC = Path(pgcleave.__file__).parent
MAX_OPERATION_LINES = 900


def _module(path: Path) -> str:
    parts = ["pgcleave", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import statement in ``path``."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("pgcleave")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("pgcleave"):
                continue
            names = [a.name for a in node.names]
            # `from . import x` imports the module pgcleave.<pkg>.x
            subs = [f"{target}.{n}" for n in names if (SRC / Path(*f"{target}.{n}".split(".")[1:]))
                    .with_suffix(".py").exists() or (SRC / Path(*f"{target}.{n}".split(".")[1:])
                                                     ).is_dir()]
            out += [(s, []) for s in subs]
            rest = [n for n in names if f"{target}.{n}" not in subs]
            if rest:
                out.append((target, rest))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        graph.setdefault(_module(path), set()).update(
            t for t, _ in _imports(path) if t != _module(path))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules along it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n not in graph:
                continue
            if state.get(n) == 1:
                return [*stack[stack.index(n):], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_graph_is_read_whole():
    graph = _graph()
    # sanity: the walk sees the layers it is meant to check
    assert "pgcleave.ops.carve" in graph and "pgcleave.ddl.bounds" in graph["pgcleave.ops.carve"]
    assert "pgcleave.execute" in graph["pgcleave.ops.registry"]


def test_no_import_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_name_crosses_a_module():
    crossings = []
    for path in SRC.rglob("*.py"):
        for target, names in _imports(path):
            crossings += [f"{_module(path)} imports {target}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    assert crossings == []


def test_no_private_attribute_of_another_module():
    """``module._name`` through a module alias (``from .. import schemes`` then
    ``schemes._zone``) is the same breach as importing the name."""
    crossings = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name for n in ast.walk(tree)
                   if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith(
                       "pgcleave")) for a in n.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                crossings.append(f"{_module(path)}:{node.lineno} {node.value.id}.{node.attr}")
    assert crossings == []


def test_operation_modules_stay_readable():
    big = {p.name: n for p in (SRC / "ops").glob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_OPERATION_LINES}
    assert big == {}
