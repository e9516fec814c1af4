"""The library never imports streamlit (the UI lives in app.py, ui/ and app_pages/ only)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "senet_viz"
FORBIDDEN = "streamlit"


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_no_library_module_imports_streamlit_in_its_source():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10  # the whole library is scanned, not an empty folder
    offenders = [f.relative_to(REPO_ROOT).as_posix() for f in files
                 if FORBIDDEN in _imported_roots(ast.parse(f.read_text(encoding="utf-8"), filename=str(f)))]
    assert offenders == [], f"these library modules import streamlit: {offenders}"


def test_the_scanner_sees_all_import_forms():
    source = ("import os\nimport streamlit.components.v1 as c\nfrom streamlit import cache\n"
              "importlib.import_module('streamlit')\n")
    assert _imported_roots(ast.parse(source)) == {"os", "streamlit"}
    assert FORBIDDEN not in _imported_roots(ast.parse("from . import streamlit_like\nimport streamlit_helper\n"))


def test_importing_every_library_module_loads_no_streamlit():
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import senet_viz\n"
        "names = [m.name for m in pkgutil.walk_packages(senet_viz.__path__, 'senet_viz.')"
        " if m.name != 'senet_viz.__main__']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'modules': names, 'streamlit': sorted(m for m in sys.modules"
        f" if m == {FORBIDDEN!r} or m.startswith({FORBIDDEN!r} + '.'))}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"senet_viz.gates.blocks", "senet_viz.gates.capture", "senet_viz.models.zoo", "senet_viz.cli"} <= set(
        out["modules"])
    assert out["streamlit"] == []
