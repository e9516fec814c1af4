"""The public face ``import senet_viz``: light to import, every name resolves, and the README's "Python API" snippet
runs as written (on the embedded model and its sample images)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import EMBEDDED_MISSING, REPO_ROOT, embedded_model_ready, requires

HEAVY = ("torch", "torchvision", "timm", "pandas", "plotly", "pyarrow", "streamlit")


def readme_snippet() -> str:
    """The first ``python`` block of README.md's "## Python API" section."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md's Python API section has no python block"
    return match.group(1)


def test_import_senet_viz_loads_no_heavy_library():
    script = ("import json, sys\nimport senet_viz\nnames = dir(senet_viz)\n"
              f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_every_public_name_resolves_from_the_module_that_defines_it():
    import senet_viz

    assert {"load_model", "run_model", "RunOptions", "GateStats", "fig6", "read_bundle"} <= set(dir(senet_viz))
    for name in senet_viz.__all__:
        value = getattr(senet_viz, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        module = value.__module__  # no hop: the object is the one its own module defines under that name
        assert module.startswith("senet_viz.") and getattr(sys.modules[module], name) is value, name


def test_an_unknown_name_is_an_attribute_error_and_subpackages_still_import():
    import senet_viz

    try:
        senet_viz.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("senet_viz.no_such_name resolved")
    from senet_viz import plots

    assert plots.__name__ == "senet_viz.plots"


@pytest.mark.slow
@requires(embedded_model_ready(), EMBEDDED_MISSING)
def test_the_readme_python_api_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    (tmp_path / "assets").symlink_to(REPO_ROOT / "assets")  # the snippet reads assets/..., writes beside it
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_snippet(), "README.md (Python API)", "exec"), {"__name__": "__main__"})  # noqa: S102
    out = capsys.readouterr().out
    assert "se_resnet_fmnist 5 SE blocks: SE_2_1" in out
    assert "top-1 without SE in stage 5" in out
    assert (tmp_path / "fig6.html").stat().st_size > 0 and (tmp_path / "depth.html").stat().st_size > 0
