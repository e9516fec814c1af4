"""The project as an installable package: pyproject.toml's dependencies are requirements.txt's pins, every package
imported anywhere in the project is pinned, the ``senet-viz`` script runs, and what `make run` and
.streamlit/config.toml set."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Everything that is Python in the project: the library, the app, its pages and ui, benchmarks and tests.
SOURCES = ["senet_viz", "ui", "pages", "benchmarks", "tests", "app.py"]
# Imports that are the project's own modules, not packages to install.
LOCAL = {"senet_viz", "ui", "pages", "app"} | {p.stem for p in (REPO_ROOT / "tests").glob("*.py")}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: list[str]) -> dict[str, str]:
    """``{canonical name: version}`` of ``name==version`` lines (comments and blank lines ignored)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"not pinned with ==: {line!r}"
        out[canonical(name.strip())] = version.strip()
    return out


def requirements(name: str) -> dict[str, str]:
    return pins((REPO_ROOT / name).read_text(encoding="utf-8").splitlines())


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_pyproject_dependencies_are_the_pins_of_requirements_txt():
    declared = pins(PYPROJECT["project"]["dependencies"])
    assert declared == requirements("requirements.txt")
    # same order too, so a diff of the two lists reads line for line
    assert list(declared) == list(requirements("requirements.txt"))


@pytest.mark.slow
def test_every_imported_package_is_pinned():
    pinned = requirements("requirements.txt") | requirements("requirements-dev.txt")
    for extra in PYPROJECT["project"].get("optional-dependencies", {}).values():
        pinned |= pins(extra)
    files = [p for src in SOURCES for p in ([REPO_ROOT / src] if src.endswith(".py")
                                            else sorted((REPO_ROOT / src).rglob("*.py")))]
    assert len(files) > 50
    roots: dict[str, list[str]] = {}
    for f in files:
        for root in imported_roots(f):
            roots.setdefault(root, []).append(f.relative_to(REPO_ROOT).as_posix())
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for root, where in sorted(roots.items()):
        if root in sys.stdlib_module_names or root in LOCAL or root == "__future__":
            continue
        dists = distributions.get(root) or [root]  # not installed here (an optional extra): named as imported
        if not any(canonical(d) in pinned for d in dists):
            missing[root] = (dists, where[:3])
    assert missing == {}, f"imported but not pinned in requirements*.txt or an extra of pyproject.toml: {missing}"


def test_the_console_script_is_the_cli_entry_point():
    assert PYPROJECT["project"]["scripts"] == {"senet-viz": "senet_viz.cli:main"}
    from senet_viz import cli
    assert callable(cli.main)
    found = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "senet_viz" in found and "ui" in found


def test_the_installed_senet_viz_script_runs():
    """`make` installs the project (pip install -e .), which puts the script beside the interpreter."""
    script = Path(sys.executable).parent / "senet-viz"
    require(script.is_file(), f"{script}: the project installed in this environment (`pip install -e .`, as "
                              "`make venv` does)")
    dist = importlib.metadata.distribution("senet-viz")
    assert {canonical(r.split(";")[0].split("==")[0]) for r in dist.requires or []} >= set(
        requirements("requirements.txt"))
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    for command in ("models", "blocks", "cost", "extract", "evaluate", "sweep", "train", "stats", "figure", "paper"):
        assert command in done.stdout
    # from another folder it runs the repository's library (an editable install)
    where = subprocess.run([str(Path(sys.executable)), "-c", "import senet_viz, ui; print(senet_viz.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd="/")
    assert Path(where.stdout.strip()) == REPO_ROOT / "senet_viz" / "__init__.py", where.stderr


def test_make_run_serves_this_machine_on_port_8501_or_the_port_and_address_given():
    make = shutil.which("make")
    require(make, "make (apt-get install make)")
    env = {**os.environ, "VENV": "/nonexistent-venv"}  # -n: print the commands only, nothing runs
    cases = (([], "8501", "localhost"), (["PORT=8502"], "8502", "localhost"),
             (["ADDRESS=0.0.0.0"], "8501", "0.0.0.0"))
    for args, port, address in cases:
        done = subprocess.run([make, "-n", "run", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        # ui.serve is `streamlit run app.py` with the app's imports preloaded while the server starts
        assert (f"/nonexistent-venv/bin/python -m ui.serve --server.port {port} --server.address {address}"
                in done.stdout)
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert any("http://localhost:8501" in line for line in readme[:12])


def test_streamlit_config_hides_deploy_and_keeps_the_server_settings():
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["client"]["toolbarMode"] == "viewer"  # no Deploy button; the menu keeps Settings and Print
    assert config["server"]["fileWatcherType"] == "none"
    assert config["server"]["headless"] is True
    # remote users see a generic message for an uncaught exception; the traceback (server paths) goes to the log
    assert config["client"]["showErrorDetails"] == "none"


def test_benchmarks_import_the_installed_project_without_patching_sys_path():
    benchmarks = sorted((REPO_ROOT / "benchmarks").glob("*.py"))
    assert benchmarks
    assert [p.name for p in benchmarks if "sys.path" in p.read_text(encoding="utf-8")] == []
