"""The command line starts light: ``--help`` and the commands that read files (stats, figure, channels) build their
parsers without importing torch; a command's module is imported only when it runs (benchmarks/cli_startup.py
measures the time and memory)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from senet_viz.cli import COMMANDS, build_parser


def _loaded_after(code: str) -> dict:
    script = f"import json, sys\n{code}\nprint(json.dumps({{m: m in sys.modules for m in ('torch', 'torchvision')}}))\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_help_and_the_file_commands_import_no_torch():
    code = ("import contextlib, io\nfrom senet_viz.cli import build_parser, main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main(['--help'])\n"
            "for name in ('stats', 'figure', 'channels'):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main([name, '--help'])\n")
    assert _loaded_after(code) == {"torch": False, "torchvision": False}


def test_the_top_level_help_lists_every_command_in_order(capsys):
    parser = build_parser(())
    help_text = parser.format_help()
    assert "{" + ",".join(COMMANDS) + "}" in help_text
    for name, (text, _, _) in COMMANDS.items():
        assert text[:40] in " ".join(help_text.split()), name


def test_a_command_parser_built_alone_equals_the_one_in_the_full_parser():
    full = build_parser()
    for name in ("stats", "figure", "models"):
        alone = build_parser({name})
        args = ["--excitations", "x"] if name == "stats" else ["--stats", "s", "--kind", "fig6", "--out", "o"] \
            if name == "figure" else []
        assert vars(alone.parse_args([name, *args])) == vars(full.parse_args([name, *args]))


def test_progress_is_a_tqdm_bar_on_a_terminal_and_nothing_when_quiet_or_piped(monkeypatch):
    from senet_viz.cli.common import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    report = progress("extract", quiet=False)
    for done in (10, 20, 30, 15, 30):  # a second pass starts a new bar
        report(done, 30)
    assert err.getvalue().count("30/30") >= 2 and "extract" in err.getvalue()
    assert progress("extract", quiet=True) is None
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress("extract", quiet=False) is None
