"""The shape of the code: no import circle in the project, and no module over :data:`MAX_LINES` lines.

The import graph is built from the source (``ast``), not by importing it, over every module of :data:`SCANNED`
(the library, the Streamlit glue, the pages and ``app.py``; ui modules import each other as ``ui.x``). An edge
``a -> b`` means module ``a`` imports module ``b`` *anywhere*: at top level, inside a function or class, and under
``if TYPE_CHECKING:``, plus ``importlib.import_module("b")`` with a constant name. An import inside a function
still ties the two modules together (it only hides the circle until the call); one under ``TYPE_CHECKING`` ties
their types together. ``from . import x`` is an edge to the submodule ``x`` when there is one, else to the
package. A package's ``__init__`` is the package's node; importing a submodule is not counted as an edge to its
parent package (Python has the parent in ``sys.modules`` before the submodule runs).

The size limit has no waivers: a module over :data:`MAX_LINES` lines is split by subject.
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]  # not from conftest: the guards run as a script too
#: Folders (packages or page folders) and single files whose modules are checked (a missing one is skipped).
SCANNED = ("senet_viz", "ui", "app_pages", "pages", "app.py")
MAX_LINES = 500


# ------------------------------------------------------------------------------------------------ modules


def module_name(path: Path, root: Path | None = None) -> str:
    parts = list(path.relative_to(root or REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path | None = None) -> dict[str, Path]:
    """``{dotted name: path}`` of every module of :data:`SCANNED` under ``root`` (default: the repository)."""
    root = root or REPO_ROOT
    out: dict[str, Path] = {}
    for entry in SCANNED:
        where = root / entry
        paths = [where] if where.is_file() else sorted(where.rglob("*.py")) if where.is_dir() else []
        out.update((module_name(p, root), p) for p in paths)
    return out


@functools.cache
def _parse(text: str, filename: str) -> ast.Module:
    return ast.parse(text, filename=filename)


def parse(path: Path) -> ast.Module:
    """The syntax tree of ``path``'s current text (parsed once per text: the checks below read every module)."""
    return _parse(path.read_text(encoding="utf-8"), str(path))


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def resolve_from(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The absolute module name ``from <module> import ...`` reads from (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    base = _package_of(name, path).split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(target: str, modules: dict[str, Path]) -> str | None:
    """The module of ``modules`` that importing ``target`` binds (``a.b.c`` -> ``a.b`` when ``c`` is a name)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _imported(tree: ast.AST, name: str, path: Path, modules: dict[str, Path]):
    """``(target module, line)`` for every import of a project module anywhere in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = resolve_from(node, name, path)
            # "from pkg import x": the submodule pkg.x when there is one, else pkg itself
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        else:
            continue
        for target in targets:
            if (known := _known(target, modules)) is not None:
                yield known, node.lineno


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """``{module: {imported project module: line of its first import}}`` (see the module docstring)."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        tree = parse(path)
        for target, line in sorted(_imported(tree, name, path, modules), key=lambda t: t[1]):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


# ------------------------------------------------------------------------------------------------ circles


def strongly_connected(graph: dict[str, dict[str, int] | set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return sorted(out)


def circles(graph: dict[str, dict[str, int] | set[str]]) -> list[list[str]]:
    """Circles as paths ``[a, b, ..., a]``: for every edge that lies on a circle, the shortest circle through it
    (so every circular import shows up in at least one path; a component of n modules gives at most its edges'
    count of paths, not the exponential count of all elementary circles). Each path starts at its smallest module;
    sorted by length, then name."""
    found: set[tuple[str, ...]] = set()
    for component in strongly_connected(graph):
        inside = set(component)
        for a in component:
            for b in sorted(set(graph.get(a, ())) & inside):
                # shortest path b -> ... -> a inside the component (breadth first)
                came: dict[str, str | None] = {b: None}
                queue = deque([b])
                while queue and a not in came:
                    node = queue.popleft()
                    for nxt in sorted(set(graph.get(node, ())) & inside):
                        if nxt not in came:
                            came[nxt] = node
                            queue.append(nxt)
                back = [a]
                while back[-1] != b:
                    back.append(came[back[-1]])
                ring = [a] + back[::-1][:-1]  # a, b, ..., the module before a
                first = ring.index(min(ring))
                found.add(tuple(ring[first:] + ring[:first]))
    return [[*ring, ring[0]] for ring in sorted(found, key=lambda r: (len(r), r))]


def circle_text(ring: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    """``a -> b (a.py:12) -> a (b.py:40)``: each hop with the file and line of its import."""
    hops = [ring[0]]
    for a, b in zip(ring, ring[1:], strict=False):
        where = modules[a].relative_to(REPO_ROOT).as_posix() if modules[a].is_relative_to(REPO_ROOT) else a
        hops.append(f"{b} ({where}:{graph[a][b]})")
    return " -> ".join(hops)


def test_the_circle_finder_finds_every_circle_and_only_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d2"}, "d2": {"d"}}) == [["d", "d2", "d"]]
    # two circles sharing a module, and a separate component: all three reported
    graph = {"a": {"b", "c"}, "b": {"a"}, "c": {"a"}, "x": {"y"}, "y": {"z"}, "z": {"x"}, "q": {"a"}}
    assert circles(graph) == [["a", "b", "a"], ["a", "c", "a"], ["x", "y", "z", "x"]]
    assert strongly_connected(graph) == [["a", "b", "c"], ["x", "y", "z"]]


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_the_graph_counts_imports_in_functions_under_type_checking_and_across_ui_pages_and_app(tmp_path):
    _write_tree(tmp_path, {
        "senet_viz/__init__.py": "",
        "senet_viz/a.py": "from . import b\nfrom .sub import c\nimport senet_viz.sub.c as cc\n",
        "senet_viz/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
                          "def f():\n    from . import e\n",
        "senet_viz/e.py": "class K:\n    def m(self):\n        import importlib\n"
                          "        return importlib.import_module('senet_viz.sub.d')\n",
        "senet_viz/sub/__init__.py": "from ..b import y\n",
        "senet_viz/sub/c.py": "from . import d\ntry:\n    from .. import a\nexcept ImportError:\n    pass\n",
        "senet_viz/sub/d.py": "import numpy\nimport os.path\n",
        "ui/__init__.py": "",
        "ui/one.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ui.two import T\n",
        "ui/two.py": "from ui import one\nfrom senet_viz.sub import d\n",
        "pages/p.py": "from ui import two\n",
        "app.py": "from ui.one import go\n",
    })
    modules = project_modules(tmp_path)
    assert set(modules) == {"senet_viz", "senet_viz.a", "senet_viz.b", "senet_viz.e", "senet_viz.sub",
                            "senet_viz.sub.c", "senet_viz.sub.d", "ui", "ui.one", "ui.two", "pages.p", "app"}
    graph = {name: set(edges) for name, edges in import_graph(modules).items()}
    assert graph["senet_viz.a"] == {"senet_viz.b", "senet_viz.sub.c"}
    assert graph["senet_viz.b"] == {"senet_viz.a", "senet_viz.e"}  # under TYPE_CHECKING and inside a function
    assert graph["senet_viz.e"] == {"senet_viz.sub.d"}  # import_module with a constant name, in a method
    assert graph["senet_viz.sub"] == {"senet_viz.b"}
    assert graph["senet_viz.sub.c"] == {"senet_viz.sub.d", "senet_viz.a"}
    assert graph["senet_viz.sub.d"] == set()
    assert graph["ui.one"] == {"ui.two"} and graph["ui.two"] == {"ui.one", "senet_viz.sub.d"}
    assert graph["pages.p"] == {"ui.two"} and graph["app"] == {"ui.one"}
    assert circles(graph) == [["senet_viz.a", "senet_viz.b", "senet_viz.a"],
                              ["senet_viz.a", "senet_viz.sub.c", "senet_viz.a"], ["ui.one", "ui.two", "ui.one"]]


@pytest.mark.slow
def test_the_project_has_no_import_circle():
    modules = project_modules()
    graph = import_graph(modules)
    assert {"senet_viz.models.zoo", "ui.sidebar", "app"} <= set(graph)
    assert any(m.startswith(("app_pages.", "pages.")) for m in graph)
    assert sum(map(len, graph.values())) >= 100  # the real project, read
    # the registry pattern: the zoo pulls the embedded package in; neither it nor the registry imports the zoo
    assert "senet_viz.models.embedded" in graph["senet_viz.models.zoo"]
    assert "senet_viz.models.zoo" not in set(graph["senet_viz.models.registry"]) | set(
        graph["senet_viz.models.embedded"])
    found = circles(graph)
    assert found == [], f"{len(found)} import circle(s), imports in functions and under TYPE_CHECKING counted:\n" + (
        "\n".join(circle_text(ring, graph, modules) for ring in found))


# ------------------------------------------------------------------------------------------------ re-export hops


def _top_level(body: list[ast.stmt]):
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _top_level(block)


def imported_names(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: names it binds at top level by ``from ... import`` of a name that is not a module}``: the names
    another module would get second hand from it."""
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = parse(path)
        bound: set[str] = set()
        defined: set[str] = set()
        for node in _top_level(tree.body):
            if isinstance(node, ast.ImportFrom):
                origin = resolve_from(node, name, path)
                bound.update(a.asname or a.name for a in node.names if f"{origin}.{a.name}" not in modules)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        out[name] = bound - defined
    return out


def reexport_hops(modules: dict[str, Path]) -> list[str]:
    """``path:line: from M import n`` where project module ``M`` only imports ``n`` from elsewhere."""
    second_hand = imported_names(modules)
    found = []
    for name, path in modules.items():
        tree = parse(path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            origin = resolve_from(node, name, path)
            hops = sorted(a.name for a in node.names if a.name in second_hand.get(origin, ()))
            if hops:
                rel = path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else name
                found.append(f"{rel}:{node.lineno}: from {origin} import {', '.join(hops)}")
    return found


def test_the_hop_finder_tells_a_name_passed_on_from_one_defined_there(tmp_path):
    _write_tree(tmp_path, {
        "senet_viz/__init__.py": "",
        "senet_viz/a.py": "X = 1\ndef f(): pass\n",
        "senet_viz/b.py": "from senet_viz.a import X, f\nfrom senet_viz import a\ntry:\n    from .a import f as g\n"
                          "except ImportError:\n    pass\nY = X\n",
        "senet_viz/c.py": "from senet_viz.b import X, Y, a\ndef h():\n    from .b import g\n",
    })
    modules = project_modules(tmp_path)
    assert imported_names(modules)["senet_viz.b"] == {"X", "f", "g"}
    assert [line.split(": ", 1)[1] for line in reexport_hops(modules)] == [
        "from senet_viz.b import X", "from senet_viz.b import g"]


@pytest.mark.slow
def test_no_module_imports_a_name_through_a_module_that_passes_it_on():
    found = reexport_hops(project_modules())
    assert found == [], f"{len(found)} re-export hop(s): import each name from the module that defines it:\n" + (
        "\n".join(found))


# ------------------------------------------------------------------------------------------------ module size


def oversized(root: Path | None = None) -> dict[str, int]:
    """``{module path: lines}`` of the modules of :data:`SCANNED` above :data:`MAX_LINES` lines."""
    root = root or REPO_ROOT
    out = {}
    for path in project_modules(root).values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            out[path.relative_to(root).as_posix()] = lines
    return dict(sorted(out.items()))


def test_the_size_check_reads_every_scanned_folder_and_has_no_waiver(tmp_path):
    _write_tree(tmp_path, {
        "senet_viz/big.py": '"""Big.\n\nSize: a stated reason waives nothing."""\n' + "x = 1\n" * MAX_LINES,
        "senet_viz/ok.py": "x = 1\n" * MAX_LINES,
        "ui/big.py": "x = 1\n" * (MAX_LINES + 1),
        "pages/big.py": "x = 1\n" * (MAX_LINES + 1),
        "app.py": "x = 1\n" * (MAX_LINES + 1),
        "tests/big.py": "x = 1\n" * (MAX_LINES + 1),
    })
    assert oversized(tmp_path) == {"app.py": MAX_LINES + 1, "pages/big.py": MAX_LINES + 1,
                                   "senet_viz/big.py": MAX_LINES + 3, "ui/big.py": MAX_LINES + 1}


def test_no_module_is_over_the_size_limit():
    big = oversized()
    assert big == {}, f"{len(big)} module(s) over {MAX_LINES} lines; split them by subject:\n" + "\n".join(
        f"{rel}: {lines} lines" for rel, lines in big.items())
