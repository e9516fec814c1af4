"""A real browser against a real server (issue 18, "Done when"): hostile model files uploaded under "Your own
model" with default settings leave no trace on disk, and the same kind of server started with
SENET_VIZ_ALLOW_CODE=1 loads a clean TorchScript SE model and draws Fig. 6.

- default server (SENET_VIZ_ALLOW_CODE unset): a ``.pt2`` whose pickled weight would create a marker file, then a
  TorchScript archive whose scripted ``__setstate__`` would create another; the page shows each refusal (naming
  SENET_VIZ_ALLOW_CODE=1) and neither marker exists;
- a server with SENET_VIZ_ALLOW_CODE=1: a tiny TorchScript network with one SE gate and 1,000 outputs (ImageNet's
  classes, so the app's embedded ImageNet samples label its images) is uploaded; Compare classes draws Fig. 6.

The hostile files are built by tests/test_hostile_models.py's builders; the server and browser helpers are
tests/test_browser.py's. The default server is the one tests/test_browser_fresh.py checks, and the bundle test uses
tests/test_browser.py's server (the session's temporary folders are its data roots): same configurations, so the
same servers (tb.shared_server).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import test_browser as tb
import torch
from conftest import requires
from test_hostile_models import pickled_pt2, setstate_torchscript, tiny_se_net

browser = tb.browser  # the shared Chromium fixture

pytestmark = [
    pytest.mark.browser,
    requires(tb.CHROMIUM, "chromium on PATH: `apt-get install chromium` (`make test` does it) to run the browser "
                          "tests"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.jit is deprecated for torch.export
]


@pytest.fixture(scope="session")
def default_server():
    """The browser modules' default server: no data roots beyond the project and its samples, no
    SENET_VIZ_ALLOW_CODE."""
    yield from tb.shared_server_fixture("default")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """tests/test_browser.py's server: the session's temporary folders are among its data roots."""
    yield from tb.shared_server_fixture("data-roots", roots=tmp_path_factory.getbasetemp())


def _own_model(tab) -> object:
    """Open "Your own model" in the sidebar; the sidebar."""
    sidebar = tab.get_by_test_id("stSidebar")
    with tb.script_run(tab):
        sidebar.get_by_test_id("stRadio").get_by_text("Your own model", exact=True).click()
    sidebar.get_by_text("Upload a model file").first.wait_for()
    return sidebar


def _upload(tab, path: Path) -> None:
    with tb.script_run(tab):
        tab.locator(".st-key-own_model_upload input[type='file']").set_input_files(path)


def test_hostile_uploads_leave_no_trace_on_a_default_server(browser, default_server, tmp_path):
    pt2_marker, ts_marker = tmp_path / "pwned_by_pt2", tmp_path / "pwned_by_torchscript"
    pt2 = pickled_pt2(tmp_path / "weights_pickled.pt2", pt2_marker)
    torchscript = setstate_torchscript(tmp_path / "writes_on_load.pt", ts_marker)
    shots: list[Path] = []
    context = browser.new_context(viewport=tb.VIEWPORT)
    tab = tb.new_tab(context)
    try:
        tb.open_app(tab, default_server)
        sidebar = _own_model(tab)
        _upload(tab, pt2)
        alert = sidebar.get_by_test_id("stAlert").filter(has_text="can run code on this server")
        alert.first.wait_for()
        text = alert.first.inner_text()
        assert "weights_pickled.pt2" in text and "stored as a pickle" in text, text
        assert "SENET_VIZ_ALLOW_CODE=1" in text and "ONNX" in text, text
        tb.shot(tab, "hostile-pt2-refused", shots)
        assert not pt2_marker.exists()

        _upload(tab, torchscript)
        alert = sidebar.get_by_test_id("stAlert").filter(has_text="is a TorchScript archive")
        alert.first.wait_for()
        text = alert.first.inner_text()
        assert "writes_on_load.pt" in text and "SENET_VIZ_ALLOW_CODE=1" in text, text
        tb.shot(tab, "hostile-torchscript-refused", shots)
        assert not ts_marker.exists()
        tb.assert_no_exception(tab, "hostile uploads")
        tb.assert_clean(tab, "hostile uploads")
    finally:
        context.close()
    tb.stop_shared_server("default")  # its last user in the session (a later one would get a new server)
    assert not pt2_marker.exists() and not ts_marker.exists()  # nothing ran later either (the server is gone)


@requires(tb.SAMPLES.is_dir(), f"the shared ImageNet samples ({tb.SAMPLES}; see ../shared/README.md)")
def test_a_server_that_allows_code_loads_clean_torchscript_and_draws_fig6(browser, tmp_path):
    model_file = tmp_path / "tiny_se_1000.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(tiny_se_net(classes=1000)).save(str(model_file))
    shots: list[Path] = []
    with tb.streamlit_server(tb.OUT / "server-allow-code.log", allow_code=True) as url:
        context = browser.new_context(viewport=tb.VIEWPORT)
        tab = tb.new_tab(context)
        try:
            tb.open_app(tab, url)
            sidebar = _own_model(tab)
            assert "This server allows code" in sidebar.inner_text()
            _upload(tab, model_file)
            sidebar.get_by_text("tiny_se_1000.pt · torchscript · 1 gate (se) · 1000 classes").first.wait_for()
            # the default image source: the app's ImageNet samples, labelled by the model's ImageNet classes
            chart = tab.get_by_test_id("stPlotlyChart").first
            chart.locator(".js-plotly-plot").wait_for()
            title = chart.locator(".gtitle").first.text_content()
            assert title.startswith("Mean excitation per channel — tiny_se_1000"), title
            tb.assert_no_exception(tab, "allow-code Fig. 6")
            tb.shot(tab, "allow-code-fig6", shots)
            tb.assert_clean(tab, "allow-code Fig. 6")
        finally:
            context.close()


def test_markup_in_an_opened_bundle_makes_no_browser_fetch_anything(browser, server, tmp_path):
    """The review's case: an analysis file whose provenance held a Markdown image made every viewer's browser fetch
    it from another host. Here that host is a local HTTP server that counts requests; the bundle is opened by path
    (its folder lies in the server's data roots) and shown on Compare classes, Depth and Export: no request, no such
    image."""
    import http.server
    import threading

    from test_hostile_bundles import prov, stats_of

    from senet_viz.analysis.bundle import write_bundle

    hits: list[str] = []

    class Tracker(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    tracker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tracker)
    threading.Thread(target=tracker.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{tracker.server_address[1]}"
    evil = f"![t]({host}/md.png) <img src={host}/html.png> [link]({host}/a)"
    stats = stats_of(0)
    stats.model = evil
    bundle = write_bundle(tmp_path / "evil", stats, prov(model=evil, weights=evil, images=evil, command=evil,
                                                         created=evil))
    shots: list[Path] = []
    try:
        context = browser.new_context(viewport=tb.VIEWPORT)
        tab = tb.new_tab(context)
        try:
            tb.open_app(tab, server)
            sidebar = tab.get_by_test_id("stSidebar")
            with tb.script_run(tab):
                sidebar.get_by_test_id("stRadio").get_by_text("An analysis file", exact=True).click()
            field = tab.locator(".st-key-bundle_path input")
            field.fill(str(bundle))
            with tb.script_run(tab):
                field.press("Enter")
            tab.get_by_test_id("stPlotlyChart").first.locator(".js-plotly-plot").wait_for()
            assert f"![t]({host}/md.png)" in sidebar.inner_text()  # the provenance, shown as typed
            tb.shot(tab, "markup-bundle-compare", shots)
            for page in ("Depth", "Export"):
                tb.open_page(tab, page)
                tb.assert_no_exception(tab, f"markup bundle {page}")
            tb.shot(tab, "markup-bundle-export", shots)
            assert tab.locator(f"img[src^='{host}']").count() == 0
            assert tab.locator(f"a[href^='{host}']").count() == 0
            tb.assert_clean(tab, "markup bundle")
        finally:
            context.close()
    finally:
        tracker.shutdown()
    assert hits == [], hits
