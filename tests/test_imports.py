"""The shape of the code: no import circle inside senet_viz, and no oversized module without a stated reason.

The import graph is built from the modules' source (``ast``), not by importing them. An edge ``a -> b`` means
module ``a`` imports module ``b`` *at top level*: statements of the module body, including those inside a
top-level ``if`` / ``try`` / ``with``, but not imports inside functions or classes (they run later, when the
module is complete, which is how a module may use one that imports it) and not imports under
``if TYPE_CHECKING:`` (they never run). ``from . import x`` is an edge to the submodule ``x`` when there is one,
else to the package. A package's ``__init__`` is the package's node; importing a submodule is not counted as an
edge to its parent package (Python has the parent in ``sys.modules`` before the submodule runs).

Size: a module in senet_viz/, ui/ or pages/ has at most :data:`MAX_LINES` lines unless its docstring has a line
that starts with ``Size:`` and gives the reason (the allowlist is those docstrings, nothing else).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = "senet_viz"
MAX_LINES = 500
SIZE_CHECKED = ("senet_viz", "ui", "pages")


# ------------------------------------------------------------------------------------------------ import graph


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO_ROOT / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _top_level_imports(block)
        elif isinstance(node, ast.With):
            yield from _top_level_imports(node.body)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules of the package it imports at top level}`` (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                # "from pkg import x": the submodule pkg.x when there is one, else pkg itself
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
            for target in targets:
                while target and target not in modules:  # "import senet_viz.a.b" binds senet_viz.a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d2"}, "d2": {"d"}}) == ["d", "d2", "d"]


def test_the_graph_reads_relative_absolute_and_guarded_imports(tmp_path, monkeypatch):
    root = tmp_path / "senet_viz"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from . import b\nfrom .sub import c\nimport senet_viz.sub.c as cc\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
                "def f():\n    from . import a\n",
        "sub/__init__.py": "from ..b import y\n",
        "sub/c.py": "from . import d\ntry:\n    from .. import a\nexcept ImportError:\n    pass\n",
        "sub/d.py": "",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    graph = import_graph(_modules())
    assert graph["senet_viz.a"] == {"senet_viz.b", "senet_viz.sub.c"}
    assert graph["senet_viz.b"] == set()  # under TYPE_CHECKING and inside a function: not top level
    assert graph["senet_viz.sub"] == {"senet_viz.b"}
    assert graph["senet_viz.sub.c"] == {"senet_viz.sub.d", "senet_viz.a"}
    assert find_cycle(graph) == ["senet_viz.a", "senet_viz.sub.c", "senet_viz.a"]


def test_senet_viz_has_no_import_circle():
    modules = _modules()
    graph = import_graph(modules)
    assert len(graph) >= 20 and sum(map(len, graph.values())) >= 30  # the real package, read
    # the registry pattern: the zoo pulls the embedded package in; neither it nor the registry imports the zoo
    assert "senet_viz.models.embedded" in graph["senet_viz.models.zoo"]
    assert "senet_viz.models.zoo" not in graph["senet_viz.models.registry"] | graph["senet_viz.models.embedded"]
    assert all(edge != "senet_viz.models.zoo" for mod in graph if mod.startswith("senet_viz.models.embedded")
               for edge in graph[mod])
    cycle = find_cycle(graph)
    assert cycle is None, "import circle (top-level imports): " + " -> ".join(cycle)


def test_the_embedded_package_imported_first_registers_itself_and_the_zoo_adds_the_rest():
    script = (
        "import json, sys\n"
        "import senet_viz.models.embedded.train\n"  # a deep module first, before the zoo
        "from senet_viz import registry\n"
        "first = registry.list_models()\n"
        "loaded_zoo = 'senet_viz.models.zoo' in sys.modules\n"
        "import senet_viz.models.zoo as zoo\n"
        "print(json.dumps({'first': first, 'zoo_before': loaded_zoo, 'all': zoo.list_models()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["first"] == ["se_resnet_fmnist", "se_resnet_fmnist_nose5"] and not out["zoo_before"]
    assert {"legacy_seresnet50", "tf_mobilenetv3_small_100", "se_resnet_fmnist"} <= set(out["all"])


# ------------------------------------------------------------------------------------------------ module size


def _size_reason(path: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))) or ""
    return next((line.strip() for line in doc.splitlines() if line.strip().startswith("Size:")), None)


def oversized() -> dict[str, int]:
    """``{module path: lines}`` of the modules above :data:`MAX_LINES` lines, with or without a reason."""
    out = {}
    for folder in SIZE_CHECKED:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                out[path.relative_to(REPO_ROOT).as_posix()] = lines
    return out


def test_no_module_is_oversized_without_a_reason_in_its_docstring():
    unexplained = {rel: lines for rel, lines in oversized().items()
                   if not (reason := _size_reason(REPO_ROOT / rel)) or len(reason) <= len("Size:") + 10}
    assert unexplained == {}, (
        f"modules over {MAX_LINES} lines: split them, or give the reason on a docstring line starting "
        f"'Size:' (at least a few words): {unexplained}")


@pytest.mark.parametrize("text, reason", [
    ('"""Plots.\n\nSize: one figure per paper figure, kept together for one style."""\n', "Size: one figure"),
    ('"""Plots, no reason."""\n', None),
    ('# Size: a comment is no docstring\n', None),
])
def test_the_size_reason_is_read_from_the_docstring_only(tmp_path, text, reason):
    path = tmp_path / "m.py"
    path.write_text(text)
    found = _size_reason(path)
    assert (found is None) if reason is None else found.startswith(reason)
