"""The library never imports streamlit (the UI lives in app.py, ui/ and app_pages/ only), and what a fresh
interpreter that imports the library sees.

One subprocess for the module (the ``fresh_interpreter`` fixture: an interpreter start that imports torch is the
cost) imports, in this order, a deep module of the embedded package, the zoo, then every library module, and
reports: the registry before and after the zoo, the streamlit modules loaded, and the home and weights cache it
resolves (tests/conftest.py isolates the test session; a subprocess must inherit that)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TEST_HOME

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


FRESH_INTERPRETER = (
    "import importlib, json, pathlib, pkgutil, sys\n"
    "import senet_viz.models.embedded.train\n"  # a deep module first, before the zoo
    "from senet_viz.models import registry\n"
    "first = registry.list_models()\n"
    "zoo_before = 'senet_viz.models.zoo' in sys.modules\n"
    "import senet_viz.models.zoo\n"
    "after_zoo = registry.list_models()\n"
    "import senet_viz\n"
    "names = [m.name for m in pkgutil.walk_packages(senet_viz.__path__, 'senet_viz.')"
    " if m.name != 'senet_viz.__main__']\n"
    "for name in names:\n"
    "    importlib.import_module(name)\n"
    "from senet_viz.models import download\n"
    "print(json.dumps({'first': first, 'zoo_before': zoo_before, 'all': after_zoo, 'modules': names,"
    " 'streamlit': sorted(m for m in sys.modules"
    f" if m == {FORBIDDEN!r} or m.startswith({FORBIDDEN!r} + '.')),"
    " 'home': str(pathlib.Path.home()), 'download_dir': str(download.download_dir())}))\n"
)


@pytest.fixture(scope="module")
def fresh_interpreter() -> dict:
    proc = subprocess.run([sys.executable, "-c", FRESH_INTERPRETER], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_importing_every_library_module_loads_no_streamlit(fresh_interpreter):
    assert {"senet_viz.gates.blocks", "senet_viz.gates.capture", "senet_viz.models.zoo", "senet_viz.cli"} <= set(
        fresh_interpreter["modules"])
    assert fresh_interpreter["streamlit"] == []


@pytest.mark.slow
def test_the_embedded_package_imported_first_registers_itself_and_the_zoo_adds_the_rest(fresh_interpreter):
    assert fresh_interpreter["first"] == ["se_resnet_fmnist", "se_resnet_fmnist_nose5"]
    assert not fresh_interpreter["zoo_before"]
    assert {"legacy_seresnet50", "tf_mobilenetv3_small_100", "se_resnet_fmnist"} <= set(fresh_interpreter["all"])


@pytest.mark.slow
def test_subprocesses_inherit_the_isolation(fresh_interpreter):
    assert Path(fresh_interpreter["home"]) == TEST_HOME
    assert Path(fresh_interpreter["download_dir"]).is_relative_to(TEST_HOME)
