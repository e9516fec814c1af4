"""ui.serve serves Streamlit's page with the Plotly chart module preloaded and evaluated while the server runs the
first script (:func:`ui.serve.early_chart_page`), instead of after the first chart's message has arrived."""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import requires
from test_browser import CHROMIUM, CHROMIUM_ARGS
from test_serve_warm_up import start_ui_serve

from ui import serve

ROOT = Path(__file__).resolve().parents[1]
INDEX = """<!DOCTYPE html><html><head><title>Streamlit</title>
<script type="module" crossorigin src="./static/js/index.X1.js"></script>
<link rel="modulepreload" crossorigin href="./static/js/shared.S1.js">
</head><body><div id="root"></div></body></html>"""


def _static(tmp_path: Path, chunks: dict[str, str], index: str = INDEX) -> Path:
    """A Streamlit-like static folder: index.html, favicon.png and static/js/<name> for each of ``chunks``."""
    static = tmp_path / "streamlit-static"
    (static / "static" / "js").mkdir(parents=True)
    (static / "index.html").write_text(index)
    (static / "favicon.png").write_bytes(b"\x89PNG")
    for name, text in chunks.items():
        (static / "static" / "js" / name).write_text(text)
    return static


def _preloads(html: str) -> list[str]:
    return re.findall(r'<link rel="modulepreload" crossorigin href="\./static/js/([^"]+)">', html)


def test_the_page_preloads_the_chart_module_and_its_import_graph(tmp_path):
    static = _static(tmp_path, {
        "index.X1.js": "export const a = 1;",
        "shared.S1.js": "export const s = 1;",
        # the module's leading static imports; the dynamic import and a string in its body are not followed
        "PlotlyChart.P1.js": 'import{a as b}from"./index.X1.js";import{s}from"./shared.S1.js";import"./wrap.W1.js";'
                             'var x=1;const later=()=>import("./Lazy.L1.js");const text=\'import"./Not.N1.js";\';',
        "wrap.W1.js": 'import{t}from"./deep.D1.js";export const w=1;',
        "deep.D1.js": "export const t = 1;",
        "Lazy.L1.js": "export const lazy = 1;",
    })
    original = (static / "index.html").read_text()
    served = serve.early_chart_page(static, tmp_path / "served")
    assert served == tmp_path / "served"
    html = (served / "index.html").read_text()
    # each module of the chart's static import graph that the page does not name already, once
    assert sorted(_preloads(html)) == ["PlotlyChart.P1.js", "deep.D1.js", "shared.S1.js", "wrap.W1.js"]
    assert html.count("shared.S1.js") == 1 and "Lazy.L1.js" not in html and "Not.N1.js" not in html
    assert 'import("./static/js/PlotlyChart.P1.js")' in html  # evaluated early, by the same URL React imports
    assert html.index("PlotlyChart.P1.js") < html.index("</head>")
    assert (static / "index.html").read_text() == original  # Streamlit's own file is untouched
    # everything else is Streamlit's own, linked
    assert (served / "static").is_symlink() and (served / "static").resolve() == (static / "static").resolve()
    assert (served / "favicon.png").read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in served.iterdir()) == ["favicon.png", "index.html", "static"]


@pytest.mark.parametrize(("chunks", "index"), [
    ({"index.X1.js": ""}, INDEX),  # no chart module
    ({"PlotlyChart.A.js": "", "PlotlyChart.B.js": ""}, INDEX),  # two: not the layout this was written for
    ({"PlotlyChart.P1.js": ""}, "<html><body>no head</body></html>"),
])
def test_an_unexpected_layout_serves_streamlits_page_unchanged(tmp_path, chunks, index):
    static = _static(tmp_path, chunks, index)
    assert serve.early_chart_page(static, tmp_path / "served") is None
    assert not (tmp_path / "served").exists()


def test_this_streamlits_static_folder_has_the_layout_and_every_preload_exists(tmp_path):
    """Pins the installed Streamlit: a release that renames its chart module fails here, not silently."""
    from streamlit import file_util

    static = Path(file_util.get_static_dir())
    served = serve.early_chart_page(static, tmp_path / "served")
    assert served is not None
    names = _preloads((served / "index.html").read_text())
    assert any(n.startswith("PlotlyChart.") for n in names)
    assert all((static / "static" / "js" / n).is_file() for n in names)


def test_the_early_page_is_opt_out(monkeypatch):
    from streamlit import file_util

    original = file_util.get_static_dir
    monkeypatch.setattr(file_util, "get_static_dir", original)  # restored after the test whatever happens
    monkeypatch.setenv("SENET_VIZ_EARLY_CHARTS", "0")
    assert serve.serve_early_chart_page() is False
    assert file_util.get_static_dir is original
    monkeypatch.delenv("SENET_VIZ_EARLY_CHARTS")
    assert serve.serve_early_chart_page() is True
    served = Path(file_util.get_static_dir())
    assert served != Path(original()) and "PlotlyChart." in (served / "index.html").read_text()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


@pytest.mark.slow
@pytest.mark.browser
@requires(CHROMIUM, "chromium on PATH: `apt-get install chromium` (`make test` does it) to run the browser tests")
def test_a_served_app_draws_its_first_chart_from_the_early_module(tmp_path):
    """`python -m ui.serve` on a free port: the root and a page's URL get the early page, the chart module loads
    once (the early import and React's lazy import are one module), and Chromium draws the first chart without an
    error in the console."""
    from playwright.sync_api import sync_playwright

    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "SENET_VIZ_EARLY_CHARTS"} | {"SENET_VIZ_WARM_UP": "0"}
    proc, port = start_ui_serve(log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                status, root = _get(url)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)  # polls until the server listens
        chunk = next(n for n in _preloads(root.decode()) if n.startswith("PlotlyChart."))
        assert status == 200 and f'import("./static/js/{chunk}")' in root.decode()
        assert chunk in _get(f"{url}/cost")[1].decode()  # a page's URL is the same page
        status, code = _get(f"{url}/static/js/{chunk}")
        assert status == 200 and len(code) > 1_000_000  # Streamlit's own module, through the link
        for escape in ("/static/..%2f..%2f..%2f..%2fetc%2fpasswd", "/static/js/..%2F..%2F..%2Fapp.py",
                       "/%2e%2e/%2e%2e/etc/passwd"):  # the linked folder serves Streamlit's files and nothing else
            try:
                status, body = _get(url + escape)
            except urllib.error.HTTPError as exc:
                status, body = exc.code, b""
            assert b"root:" not in body and b"st.navigation" not in body, escape
            assert status in (200, 400, 404) and (status != 200 or body.lstrip().startswith(b"<!")), (escape, status)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                tab = browser.new_page(viewport={"width": 1400, "height": 1000})
                errors: list[str] = []
                tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                tab.on("pageerror", lambda e: errors.append(str(e)))
                tab.goto(url)
                tab.wait_for_selector(".js-plotly-plot .main-svg", timeout=180_000)
                fetched = tab.evaluate("() => performance.getEntriesByType('resource')"
                                       ".filter(e => e.name.includes('/PlotlyChart.')).length")
                assert fetched == 1
                assert tab.get_by_test_id("stException").count() == 0
                # no network on a test machine: a page's outside links do not resolve; nothing else may fail
                assert [e for e in errors if "ERR_NAME_NOT_RESOLVED" not in e] == []
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
