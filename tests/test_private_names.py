"""No module reaches into another module's private names.

A private name starts with one underscore and is not a dunder (``_cache``, ``_Pipeline``; ``__version__`` is
public). A module of the project (:data:`test_imports.SCANNED`: senet_viz/, ui/, pages/, app.py) may not

- import one from another project module: ``from senet_viz.x import _y``, ``from . import _y``;
- read one off an imported project module or a name imported from one: ``mod._y``, ``senet_viz.x._y``,
  ``Cls._y``, ``getattr(mod, "_y")``, ``setattr``/``delattr``/``monkeypatch.setattr(mod, "_y", ...)`` and
  ``monkeypatch.setattr("senet_viz.x._y", ...)``.

A private *module* (``senet_viz/plots/_base.py``) is private to its package: its siblings and subpackages may
import it, other modules may not. Names of a namedtuple's API (``_replace``, ``_asdict``, ``_fields``, ...) are
public despite the underscore. Private attributes of third-party modules and objects (torch's hook dicts, say)
are out of scope; so are attributes of instances, which a static check cannot type.

Scope: the library and the app only. The tests and benchmarks (:data:`TEST_FOLDERS`) are not held to the rule
yet: they stub private seams (the hub download functions, cache internals, a pipeline class) that need public
replacements first. ``python tests/test_private_names.py`` prints their uses with the guards' other findings.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_imports import REPO_ROOT, project_modules, resolve_from

#: Folders of importers that are listed by the report below but not checked by the test.
TEST_FOLDERS = ("tests", "benchmarks")
#: Public API of namedtuples and enums that starts with an underscore.
PUBLIC_UNDERSCORE = frozenset({"_replace", "_asdict", "_fields", "_field_defaults", "_make", "_missing_",
                               "_generate_next_value_", "_value_", "_name_", "_ignore_", "_order_"})
_ATTR_FUNCS = frozenset({"getattr", "setattr", "delattr", "hasattr"})


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``, or None when the chain does not start with a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


class _Reader:
    """Walks one file: its project bindings, then the private names it takes from them."""

    def __init__(self, name: str, path: Path, modules: dict[str, Path]) -> None:
        self.name, self.path, self.modules = name, path, modules
        self.bound: dict[str, str] = {}  # local name -> dotted project name it stands for (module or object)
        self.found: list[tuple[int, str]] = []

    def _own(self, target: str) -> bool:
        """Whether ``target`` (a module or a name in one) belongs to this module."""
        return target == self.name or target.startswith(self.name + ".") and target not in self.modules

    def _private_module_allowed(self, module: str) -> bool:
        """A private module (some component starts with ``_``) is open to modules of the package it sits in."""
        parts = module.split(".")
        for i, part in enumerate(parts):
            if is_private(part):
                package = ".".join(parts[:i])
                if not (self.name == package or self.name.startswith(package + ".")):
                    return False
        return True

    def _check_target(self, line: int, dotted: str, how: str) -> None:
        """``dotted`` (``module.name`` or ``package.submodule``) as taken by this file."""
        if dotted in self.modules:  # a module: private modules are package-private
            if not self._private_module_allowed(dotted):
                self.found.append((line, f"{how}: private module {dotted}"))
            return
        module, _, attr = dotted.rpartition(".")
        if is_private(attr) and not self._own(module) and self._project(dotted):
            self.found.append((line, f"{how}: {dotted}"))

    def _project(self, dotted: str) -> bool:
        root = dotted.split(".")[0]
        return any(m == root or m.startswith(root + ".") for m in self.modules)

    def _resolve(self, node: ast.expr) -> str | None:
        parts = _dotted(node)
        if parts is None or parts[0] not in self.bound:
            return None
        return ".".join([self.bound[parts[0]], *parts[1:]])

    def read(self, tree: ast.AST) -> list[tuple[int, str]]:
        for node in ast.walk(tree):  # bindings first: an import inside a function binds for the whole file here
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if self._project(alias.name):
                        local = alias.asname or alias.name.split(".")[0]
                        self.bound[local] = alias.name if alias.asname else local
                        self._check_target(node.lineno, alias.name, "imports")
            elif isinstance(node, ast.ImportFrom):
                origin = resolve_from(node, self.name, self.path)
                if not self._project(origin):
                    continue
                if origin in self.modules:
                    self._check_target(node.lineno, origin, "imports from")
                for alias in node.names:
                    if alias.name == "*":
                        continue
                    self.bound[alias.asname or alias.name] = f"{origin}.{alias.name}"
                    self._check_target(node.lineno, f"{origin}.{alias.name}", "imports")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                if (base := self._resolve(node.value)) is not None:
                    self._check_target(node.lineno, f"{base}.{node.attr}", "reads")
            elif isinstance(node, ast.Call) and node.args:
                func = node.func
                fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if fname not in _ATTR_FUNCS:
                    continue
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str) and fname in ("setattr",
                                                                                                 "delattr"):
                    if self._project(first.value):  # monkeypatch.setattr("senet_viz.x._y", value)
                        self._check_target(node.lineno, first.value, f"{fname}s")
                elif (len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                      and isinstance(node.args[1].value, str) and is_private(node.args[1].value)
                      and (base := self._resolve(first)) is not None):
                    self._check_target(node.lineno, f"{base}.{node.args[1].value}", f"{fname}s")
        return sorted(set(self.found))


def private_uses(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """``(line, what)`` for every private name of another project module that the file at ``path`` takes."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return _Reader(name, path, modules).read(tree)


def violations(root: Path | None = None, folders: tuple[str, ...] = ()) -> list[str]:
    """``path:line: what`` for the project's modules (or, with ``folders``, for the importers in those folders
    instead, e.g. :data:`TEST_FOLDERS`)."""
    root = root or REPO_ROOT
    modules = project_modules(root)
    files = [] if folders else list(modules.items())
    for folder in folders:
        files += [(f"{folder}.{p.stem}", p) for p in sorted((root / folder).rglob("*.py"))]
    out = []
    for name, path in files:
        rel = path.relative_to(root).as_posix()
        grouped: dict[tuple[int, str], list[str]] = {}  # one line per import statement or expression
        for line, what in private_uses(path, name, modules):
            head, _, attr = what.rpartition(".")
            grouped.setdefault((line, head), []).append(attr)
        out += [f"{rel}:{line}: {head}." + (attrs[0] if len(attrs) == 1 else "{" + ", ".join(attrs) + "}")
                for (line, head), attrs in grouped.items()]
    return out


def test_the_reader_sees_every_form_and_spares_public_and_own_names(tmp_path):
    files = {
        "senet_viz/__init__.py": "",
        "senet_viz/a.py": "_x = 1\nclass K:\n    _k = 2\n",
        "senet_viz/p/__init__.py": "",
        "senet_viz/p/_base.py": "def helper(): pass\n",
        "senet_viz/p/sib.py": "from ._base import helper\nfrom . import _base\n",
        "senet_viz/b.py": (
            "import senet_viz.a\nimport senet_viz.a as am\nfrom senet_viz import a\nfrom senet_viz.a import K, _x\n"
            "from .a import _x as y\nfrom senet_viz.p._base import helper\nimport os\n"
            "def f(monkeypatch):\n"
            "    senet_viz.a._x\n"
            "    am._x\n"
            "    K._k\n"
            "    getattr(a, '_x')\n"
            "    monkeypatch.setattr(a, '_x', 2)\n"
            "    monkeypatch.setattr('senet_viz.a._x', 3)\n"
            "    os._exit, a.__name__, a.K._replace, K.public, a.public, a.helper_\n"
            "    _own = 1\n"
            "    return _own\n"),
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = project_modules(tmp_path)
    assert private_uses(tmp_path / "senet_viz/p/sib.py", "senet_viz.p.sib", modules) == []
    assert private_uses(tmp_path / "senet_viz/a.py", "senet_viz.a", modules) == []
    assert private_uses(tmp_path / "senet_viz/b.py", "senet_viz.b", modules) == [
        (4, "imports: senet_viz.a._x"),
        (5, "imports: senet_viz.a._x"),
        (6, "imports from: private module senet_viz.p._base"),
        (9, "reads: senet_viz.a._x"),
        (10, "reads: senet_viz.a._x"),
        (11, "reads: senet_viz.a.K._k"),
        (12, "getattrs: senet_viz.a._x"),
        (13, "setattrs: senet_viz.a._x"),
        (14, "setattrs: senet_viz.a._x"),
    ]


@pytest.mark.slow
def test_no_module_takes_a_private_name_of_another():
    found = violations()
    assert found == [], f"{len(found)} use(s) of another module's private names:\n" + "\n".join(found)


def report() -> str:
    """Everything the guards find (circles, sizes, hops, private names), for whoever is fixing them."""
    from test_imports import MAX_LINES, circle_text, circles, import_graph, oversized, reexport_hops

    modules = project_modules()
    graph = import_graph(modules)
    found = circles(graph)
    big = oversized()
    private = violations()
    in_tests = violations(folders=TEST_FOLDERS)
    hops = reexport_hops(modules)
    return "\n".join([
        f"== import circles ({len(found)}; imports in functions and under TYPE_CHECKING counted)",
        *(circle_text(ring, graph, modules) for ring in found),
        f"\n== modules over {MAX_LINES} lines ({len(big)})",
        *(f"{rel}: {lines} lines" for rel, lines in big.items()),
        f"\n== re-export hops ({len(hops)})",
        *hops,
        f"\n== private names of other modules, library and app ({len(private)})",
        *private,
        f"\n== private names of project modules in {' and '.join(TEST_FOLDERS)} ({len(in_tests)}; not enforced)",
        *in_tests,
    ])


if __name__ == "__main__":
    print(report())
