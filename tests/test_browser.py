"""A real browser against a real server: `streamlit run app.py` (headless, free port) driven by Debian's Chromium
through Playwright.

The flow: MobileNetV3-Small from ../shared (the .tflite), "Upload by class" with two classes and two images each,
the Compare classes figure, the image source switched away and back (the uploads and the figure are unchanged), a
bad upload listed with its reason while the app keeps working, removal of the last SE block changing top-1 and
parameters (top-1 is scored: one class is named after a model class, the other's files have ImageNet-style
names), a PNG export with its title inside the image, every page of the navigation opened without an exception
on screen, and Export after a model switch listing only the new model's figures. Screenshots go to
test-output/browser/.

The classes are "sharks" (the great white shark and tiger shark samples) and "French bulldog" (the French bulldog
and pug samples): removing the last SE block of MobileNetV3-Small changes the top-1 class of the great white
shark and the French bulldog images, so top-1 accuracy moves; the goldfish and pug images keep theirs, and a
goldfish/pug pair would leave top-1 unchanged.

A fresh server's first request to a page URL: tests/test_browser_fresh.py.

Waits are on real state, never fixed sleeps: :class:`Watch` reads the session's websocket (Streamlit's
``ForwardMsg`` protobufs) and counts the script runs the server reports finished; an action that reruns the script
is wrapped in :func:`script_run`, which returns once a run after the action has finished and the app shows no run
in progress. JavaScript errors of the page (``pageerror``) are collected and asserted empty.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import require, requires
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLES = SHARED / "data" / "imagenet-samples"
TFLITE = SHARED / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"
# The Chromium on PATH, as `make test` looks for it (and installs it when missing).
CHROMIUM = shutil.which("chromium")
OUT = ROOT / "test-output" / "browser"
MODEL = "tf_mobilenetv3_small_100"
CLASSES = {  # class name -> two sample images uploaded into it
    # not a model class: top-1 is scored from the ImageNet-style file names (n01484850_...)
    "sharks": ["n01484850_great_white_shark.JPEG", "n01491361_tiger_shark.JPEG"],
    "French bulldog": ["n02108915_French_bulldog.JPEG", "n02110958_pug.JPEG"],  # a model class
}
PAGES = ["Compare classes", "Explore", "Channels", "Depth", "Remove SE blocks", "Attribution", "Cost", "Export"]
# Each page (app_pages/<name>.py) -> its URL path, its title in the navigation and its own header (st.header). Compare
# classes is the default page: app.py's navigation serves it at the root URL (Streamlit serves a default page only
# there; /compare is not one of the app's URLs and gets Streamlit's "Page not found" on any server).
PAGE_URLS = {
    "compare": ("", "Compare classes", "Compare classes"),
    "explore": ("explore", "Explore", "Explore one image"),
    "channels": ("channels", "Channels", "Channels"),
    "depth": ("depth", "Depth", "Depth profile"),
    "remove": ("remove", "Remove SE blocks", "Remove SE blocks"),
    "attribution": ("attribution", "Attribution", "Attribution"),
    "cost": ("cost", "Cost", "Cost"),
    "export": ("export", "Export", "Export"),
}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
STARTUP_TIMEOUT_S = 120
RUN_START_TIMEOUT_S = 60  # a rerun starts within milliseconds of the action; generous for a busy machine
RUN_TIMEOUT_MS = 240_000
VIEWPORT = {"width": 1600, "height": 1100}

pytestmark = [
    pytest.mark.browser,
    requires(CHROMIUM, "chromium on PATH: `apt-get install chromium` (`make test` does it) to run the browser tests"),
]
needs_shared = requires(TFLITE.is_file() and SAMPLES.is_dir(),
                        f"the shared model and samples ({TFLITE}, {SAMPLES}; see ../shared/README.md)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().decode().strip()
    except OSError:
        return None


def start_server(log_path: Path, roots: Path | None = None, allow_code: bool = False) -> tuple[subprocess.Popen, str]:
    """Start `streamlit run app.py` on a free port (the project's .streamlit/config.toml applies): the process and
    its URL. The operator's settings are these alone, whatever this process's environment holds: ``roots``, a folder
    typed server paths may name (SENET_VIZ_DATA_ROOTS) besides the project and its sample folders; ``allow_code``,
    SENET_VIZ_ALLOW_CODE=1 (formats that carry code load from the browser)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.fileWatcherType", "none", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false"]
    env = {k: v for k, v in os.environ.items() if k not in ("SENET_VIZ_DATA_ROOTS", "SENET_VIZ_ALLOW_CODE")}
    if roots is not None:
        env["SENET_VIZ_DATA_ROOTS"] = str(roots)
    if allow_code:
        env["SENET_VIZ_ALLOW_CODE"] = "1"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    """Return once the server at ``url`` answers "ok" on /_stcore/health; fail if it exits or never does."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while _health(url) != "ok":
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no 'ok' from {url}/_stcore/health in {STARTUP_TIMEOUT_S} s:\n"
                        f"{log_path.read_text()[-3000:]}")
        time.sleep(0.1)  # polls the health endpoint


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def streamlit_server(log_path: Path, roots: Path | None = None, allow_code: bool = False) -> Iterator[str]:
    """A server of :func:`start_server`: yields its URL once /_stcore/health answers "ok", and always terminates
    it."""
    proc, url = start_server(log_path, roots, allow_code)
    try:
        wait_healthy(proc, url, log_path)
        yield url
    finally:
        stop_server(proc)


@dataclass
class SharedServer:
    proc: subprocess.Popen
    url: str
    log_path: Path
    asked: bool = False  # handed to a test: requests may have been made


# Servers the browser modules share, one per configuration: each start costs a first script run (torch, the app,
# the default model), so every test that needs a given configuration uses the same server.
SHARED_SERVERS: dict[str, SharedServer] = {}


def shared_server(name: str, roots: Path | None = None, fresh: bool = False) -> str:
    """The URL of the shared server ``name``, started on first need with ``roots`` (see :func:`start_server`; never
    with SENET_VIZ_ALLOW_CODE). ``fresh``: a server nothing was handed yet, so the caller makes its first request
    (one handed out before is replaced)."""
    server = SHARED_SERVERS.get(name)
    if server is not None and ((fresh and server.asked) or server.proc.poll() is not None):
        stop_server(SHARED_SERVERS.pop(name).proc)
        server = None
    if server is None:
        log_path = OUT / f"server-{name}.log"
        proc, url = start_server(log_path, roots)
        server = SHARED_SERVERS[name] = SharedServer(proc, url, log_path)
    wait_healthy(server.proc, server.url, server.log_path)
    server.asked = True
    return server.url


def stop_shared_server(name: str) -> None:
    """Stop the shared server ``name`` now (if it runs): a later :func:`shared_server` starts a new one."""
    server = SHARED_SERVERS.pop(name, None)
    if server is not None:
        stop_server(server.proc)


def shared_server_fixture(name: str, roots: Path | None = None, fresh: bool = False) -> Iterator[str]:
    """The body of a session-scoped fixture of :func:`shared_server`. Each browser module declares its own fixture (a
    fixture is cached per module that defines it); the servers behind them are shared and stopped when the session
    ends."""
    try:
        yield shared_server(name, roots, fresh)
    finally:
        while SHARED_SERVERS:
            stop_server(SHARED_SERVERS.popitem()[1].proc)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The server the flow tests share, with tests/test_browser_hostile.py's bundle test: the test session's
    temporary folders (where `paper` writes its bundle) are among its data roots."""
    yield from shared_server_fixture("data-roots", roots=tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def browser():
    require(importlib.util.find_spec("playwright") is not None,
            "playwright (`pip install -r requirements-dev.txt`, as `make test` does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    tab = new_tab(context)
    try:
        yield tab
    finally:
        context.close()


# ------------------------------------------------------------------------------------------------ helpers


class Watch:
    """What a tab's session reports: the script runs the server started (``ForwardMsg.new_session`` on the websocket)
    and finished (``script_finished``, not counting a run cut short for a rerun), the pages it reported not found
    (``page_not_found``), and the page's JavaScript errors (``pageerror``)."""

    def __init__(self, tab) -> None:
        self.started = 0
        self.finished = 0
        self.not_found: list[str] = []
        self.errors: list[str] = []
        tab.on("websocket", self._websocket)
        tab.on("pageerror", lambda exc: self.errors.append(f"{exc}\n{getattr(exc, 'stack', '') or ''}".strip()))

    def _websocket(self, ws) -> None:
        if ws.url.endswith("/_stcore/stream"):
            ws.on("framereceived", self._frame)

    def _frame(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            return
        msg = ForwardMsg.FromString(bytes(payload))
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.started += 1
        elif kind == "script_finished" and msg.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
            self.finished += 1
        elif kind == "page_not_found":
            self.not_found.append(msg.page_not_found.page_name or "(main page)")


WATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def new_tab(context):
    """A new tab of ``context`` with its :class:`Watch` and the default timeout of a script run."""
    tab = context.new_page()
    tab.set_default_timeout(RUN_TIMEOUT_MS)
    WATCHES[tab] = Watch(tab)
    return tab


def _wait_count(page, what: str, n: int, timeout_s: float) -> None:
    """Wait until the tab's :class:`Watch` has counted ``n`` script runs ``what`` ("started" or "finished")."""
    watch = WATCHES[page]
    deadline = time.monotonic() + timeout_s
    while getattr(watch, what) < n:
        assert time.monotonic() < deadline, f"{getattr(watch, what)} script runs {what} in {timeout_s:.0f} s, " \
                                            f"waited for {n}"
        page.wait_for_timeout(50)  # lets Playwright deliver the websocket frames


def wait_runs(page, n: int) -> None:
    """Wait until the session has finished ``n`` script runs in all and the app shows none in progress."""
    _wait_count(page, "finished", n, RUN_TIMEOUT_MS / 1000)
    page.wait_for_selector(IDLE, state="attached")


@contextlib.contextmanager
def script_run(page) -> Iterator[None]:
    """Around an action that reruns the script: returns once a run after it has finished (see :class:`Watch`). An
    action that starts no run (e.g. choosing the option already selected) fails fast instead of waiting out the
    run timeout."""
    watch = WATCHES[page]
    started, finished = watch.started, watch.finished
    yield
    try:
        _wait_count(page, "started", started + 1, RUN_START_TIMEOUT_S)
    except AssertionError as exc:
        raise AssertionError(f"the action started no script run: {exc}") from None
    wait_runs(page, finished + 1)


def open_app(page, url: str) -> None:
    """Load ``url`` in ``page`` and wait for the session's first script run."""
    before = WATCHES[page].finished
    page.goto(url)
    wait_runs(page, before + 1)


def assert_clean(page, where: str) -> None:
    """No JavaScript error and no "page not found" in the tab so far."""
    watch = WATCHES[page]
    assert watch.errors == [], f"{where}: JavaScript errors in the page: {watch.errors}"
    assert watch.not_found == [], f"{where}: the server reported pages not found: {watch.not_found}"


def shot(page, name: str, shots: list[Path]) -> Path:
    path = OUT / f"{len(shots) + 1:02d}-{name}.png"
    page.screenshot(path=str(path))
    shots.append(path)
    print(f"screenshot: {path}")
    return path


def assert_no_exception(page, where: str) -> None:
    errors = page.get_by_test_id("stException")
    assert errors.count() == 0, f"{where}: exception on screen: {errors.first.inner_text()[:2000]}"


def read_metrics(page) -> dict[str, str]:
    out = {}
    for metric in page.get_by_test_id("stMetric").all():
        label = metric.get_by_test_id("stMetricLabel").inner_text().strip()
        out[label] = metric.get_by_test_id("stMetricValue").inner_text().strip()
    return out


def count(text: str) -> int:
    return int(text.replace(",", ""))


def upload_input(page, slot: int):
    """The file input of an upload class; its key ends in a generation number (the sidebar moves uploaded files
    into session state and empties the widget)."""
    return page.locator(f"[class*='st-key-class_files_{slot}_'] input[type='file']")


def plotly_data(page) -> list:
    """The traces (name, x, y) of the first plotly chart on the page, as the browser holds them."""
    return page.evaluate("""() => document.querySelector('.js-plotly-plot').data.map(
        t => [t.name, Array.from(t.x || []), Array.from(t.y || [])])""")


def pick_model(page, name: str) -> None:
    if name in page.locator(".st-key-model_name input").input_value():
        return  # already chosen: choosing it again would start no run
    page.locator(".st-key-model_name [data-testid='stSelectbox']").click()
    page.keyboard.type(name)  # the selectbox filters its options as one types
    with script_run(page):
        page.get_by_role("option", name=name, exact=True).click()
    assert name in page.locator(".st-key-model_name input").input_value()


def nav_link(page, title: str):
    return page.get_by_test_id("stSidebarNav").locator("a").filter(has_text=re.compile(rf"{re.escape(title)}\s*$"))


def open_page(page, title: str) -> None:
    """Open page ``title`` from the navigation: once its run has finished, it shows its own header and no exception
    (checked first: a page that raised shows no header, and waiting for one would take the run timeout)."""
    with script_run(page):
        nav_link(page, title).click()
    assert_no_exception(page, title)
    page.get_by_test_id("stHeading").filter(has_text=title).first.wait_for()  # the page's own header


def check_png_export(path: Path) -> None:
    """1600 x >= 900 at scale 2, the title drawn in the top band (dark text pixels left of centre), the provenance
    line near the bottom, nothing cut at the edges."""
    from PIL import Image

    image = np.asarray(Image.open(path).convert("L"))
    height, width = image.shape
    assert width == 3200 and height >= 1800, image.shape
    title_band = image[: 120 * 2, : width // 2]  # the title sits in the top margin (120 px), left-aligned
    assert (title_band < 100).sum() > 500, "no title text in the top band of the PNG"
    footer = image[height - 40 * 2:, : width // 2]
    assert (footer < 200).sum() > 200, "no provenance line at the bottom of the PNG"
    assert (image[:, -4:] > 240).all(), "something is cut at the right edge"


# ------------------------------------------------------------------------------------------------ the flow


@needs_shared
def test_upload_compare_remove_and_every_page(page, server, tmp_path):
    shots: list[Path] = []
    open_app(page, server)
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("senet-viz").first.wait_for()
    shot(page, "start", shots)

    # the model: MobileNetV3-Small, loaded from ../shared/models/*.tflite
    pick_model(page, MODEL)
    assert_no_exception(page, "model")

    # two classes named after ImageNet classes, two images each
    with script_run(page):
        sidebar.get_by_test_id("stRadio").get_by_text("Upload by class", exact=True).click()
    for i, (name, files) in enumerate(CLASSES.items()):
        field = page.locator(f".st-key-class_name_{i} input")
        field.fill(name)
        with script_run(page):
            field.press("Enter")
        with script_run(page):
            upload_input(page, i).set_input_files([SAMPLES / f for f in files])
    chart = page.get_by_test_id("stPlotlyChart").first
    chart.locator(".js-plotly-plot").wait_for()
    main_text = page.get_by_test_id("stMain").inner_text()
    assert "4 images, grouped by labels" in main_text
    legend = chart.locator(".legend").first.text_content()
    chosen = page.locator(".st-key-compare_classes").inner_text()
    for name in CLASSES:
        assert name in chosen, chosen  # the classes multiselect shows what the figure draws
        assert f"{name} (n=2)" in main_text
        assert f"{name} (n=2)" in legend, legend  # both classes are drawn (Fig. 6, one line per class)
    assert_no_exception(page, "Compare classes")
    shot(page, "compare-classes", shots)

    # switch the image source away and back: the uploads are kept, the figure is the same
    before = plotly_data(page)
    with script_run(page):
        sidebar.get_by_test_id("stRadio").get_by_text("Folder on the server", exact=True).click()
    assert "sharks (n=2)" not in page.get_by_test_id("stMain").inner_text()  # the folder's images are shown
    with script_run(page):
        sidebar.get_by_test_id("stRadio").get_by_text("Upload by class", exact=True).click()
    page.get_by_test_id("stPlotlyChart").first.locator(".js-plotly-plot").wait_for()
    assert "4 images, grouped by labels" in page.get_by_test_id("stMain").inner_text()
    assert "2 file(s) in sharks" in sidebar.inner_text()
    assert plotly_data(page) == before
    shot(page, "uploads-kept-after-source-switch", shots)

    # a bad upload is listed with its reason, and the rest is still analysed
    bad = tmp_path / "notes.jpg"
    bad.write_text("a text file renamed .jpg\n" * 50)
    with script_run(page):
        upload_input(page, 0).set_input_files([bad])
    page.get_by_text("1 image(s) could not be read and were left out").first.wait_for()
    listed = page.get_by_test_id("stExpander").filter(has_text="could not be read").first.inner_text()
    assert "notes.jpg" in listed and "not an image (cannot identify format)" in listed, listed
    page.get_by_test_id("stPlotlyChart").first.locator(".js-plotly-plot").wait_for()
    assert "4 images, grouped by labels" in page.get_by_test_id("stMain").inner_text()
    assert_no_exception(page, "bad upload")
    shot(page, "bad-upload-listed", shots)

    # removing the last SE block changes top-1 and the parameter count
    open_page(page, "Remove SE blocks")
    page.get_by_test_id("stMetric").first.wait_for()
    full = read_metrics(page)
    assert {"Top-1 (full network)", "Parameters"} <= set(full), full
    assert full["Top-1 (full network)"].endswith("%"), full  # class names are model classes: scored
    shot(page, "remove-full-network", shots)
    with script_run(page):
        page.locator(".st-key-remove_on").get_by_text(re.compile(r"^Remove")).click()
    page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^Top-1$")).first.wait_for()
    removed = read_metrics(page)
    assert removed["Top-1"] != full["Top-1 (full network)"], (full, removed)
    assert count(removed["Parameters"]) < count(full["Parameters"]), (full, removed)
    assert_no_exception(page, "Remove SE blocks")
    shot(page, "remove-last-se-block", shots)
    print(f"full network: {full}\nlast SE block removed: {removed}")

    # every other page of the navigation, without an exception on screen
    for title in PAGES:
        if title in ("Compare classes", "Remove SE blocks"):
            continue  # shown above with these classes and the bad upload
        open_page(page, title)
        assert_no_exception(page, title)
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        shot(page, f"page-{slug}", shots)

    # a PNG export: large, with the title inside the image and the provenance line under the plot
    main = page.get_by_test_id("stMain")
    row = main.get_by_test_id("stHorizontalBlock").filter(has_text="Compare classes").first
    with script_run(page):
        row.get_by_role("button", name="PNG").click()
    with script_run(page), page.expect_download() as download:  # the download button reruns the script too
        row.get_by_role("button", name="Download PNG").click()
    png_path = OUT / "export-compare-classes.png"
    download.value.save_as(png_path)
    check_png_export(png_path)
    shot(page, "export-png", shots)

    # a model switch on Export (the run it starts draws Export again): it lists only the new model's figures; the
    # old ones sit apart, under their model
    pick_model(page, "se_resnet_fmnist")
    assert nav_link(page, "Export").get_attribute("aria-current") == "page"
    page.get_by_test_id("stHeading").filter(has_text="Export").first.wait_for()
    assert_no_exception(page, "Export after a model switch")
    current = main.inner_text().split("Earlier selections")[0]
    assert "Current selection: model se_resnet_fmnist" in current
    for name in ("Compare classes", "Explore", "Depth", "Grad-CAM"):
        assert f"\n{name}\n" not in current, current
    earlier = main.get_by_test_id("stExpander").filter(has_text=f"{MODEL} — Upload by class").first
    earlier.click()
    assert "Compare classes" in earlier.inner_text()
    shot(page, "export-after-model-switch", shots)
    assert _health(server) == "ok"  # the server keeps serving
    assert all(p.is_file() and p.stat().st_size > 0 for p in shots)
    assert_clean(page, "the flow")


# The paper's four classes (analysis/paper.py PAPER_CLASSES) and 8 others, one image each.
BUNDLE_IMAGES = ["n01443537_goldfish.JPEG", "n02110958_pug.JPEG", "n02690373_airliner.JPEG", "n09246464_cliff.JPEG",
                 "n01484850_great_white_shark.JPEG", "n01491361_tiger_shark.JPEG", "n02108915_French_bulldog.JPEG",
                 "n01440764_tench.JPEG", "n03042490_cliff_dwelling.JPEG", "n01530575_brambling.JPEG",
                 "n02123045_tabby.JPEG", "n04285008_sports_car.JPEG"]


@pytest.fixture(scope="module")
def paper_bundle(tmp_path_factory) -> Path:
    """`python -m senet_viz paper` (in this process: ``cli.main``) on 12 shared images (the paper's four classes among
    them) with MobileNetV3-Small: the bundle it writes."""
    from senet_viz import cli

    images = tmp_path_factory.mktemp("paper-images")
    for name in BUNDLE_IMAGES:
        shutil.copy(SAMPLES / name, images / name)
    out = tmp_path_factory.mktemp("paper")
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["paper", "--model", MODEL, "--weights", str(TFLITE), "--images", str(images), "--out",
                         str(out), "--json"])
    assert code == 0
    bundle = out / "analysis.senetviz.zip"
    assert bundle.is_file()
    return bundle


@needs_shared
def test_an_analysis_bundle_opens_with_no_model_and_draws_fig6(browser, server, paper_bundle):
    shots: list[Path] = []
    context = browser.new_context(viewport=VIEWPORT)  # a fresh session
    tab = new_tab(context)
    try:
        open_app(tab, server)
        sidebar = tab.get_by_test_id("stSidebar")
        with script_run(tab):
            sidebar.get_by_test_id("stRadio").get_by_text("An analysis file", exact=True).click()
        field = tab.locator(".st-key-bundle_path input")
        field.fill(str(paper_bundle))
        with script_run(tab):
            field.press("Enter")
        chart = tab.get_by_test_id("stPlotlyChart").first
        chart.locator(".js-plotly-plot").wait_for()
        assert tab.locator(".st-key-model_name").count() == 0  # no model picker: nothing to load
        title = chart.locator(".gtitle").first.text_content()
        assert title.startswith(f"Mean excitation per channel — {MODEL}"), title
        legend = chart.locator(".legend").first.text_content()
        assert f"all (n={len(BUNDLE_IMAGES)})" in legend, legend
        for cls in ("goldfish", "pug", "airliner", "cliff"):
            assert f"{cls} (n=1)" in legend, legend  # the paper's four classes, one image each here
        assert_no_exception(tab, "analysis bundle")
        shot(tab, "bundle-compare-classes", shots)
        open_page(tab, "Depth")
        tab.get_by_text("Verdict:").first.wait_for()
        assert_no_exception(tab, "analysis bundle depth")
        shot(tab, "bundle-depth", shots)
        assert_clean(tab, "analysis bundle")
    finally:
        context.close()


# ----------------------------------------------------------------------------------- the Channels page (issue 14)


def exemplar_images(tab, expected: int = 16) -> list[int]:
    """Natural widths of the images in the Channels page's exemplar area (0: broken), once ``expected`` of them
    have finished loading (or failed to)."""
    tab.wait_for_function("""(n) => {
        const imgs = [...document.querySelectorAll('.st-key-channel_exemplars img')];
        return imgs.length === n && imgs.every(i => i.complete);
    }""", arg=expected)
    return tab.locator(".st-key-channel_exemplars img").evaluate_all("(imgs) => imgs.map(i => i.naturalWidth)")


def click_fig6_point(tab) -> None:
    """Click the first point of Fig. 6's first trace (plotly's own axis mapping gives its pixel position)."""
    chart = tab.get_by_test_id("stPlotlyChart").first.locator(".js-plotly-plot")
    chart.wait_for()
    x, y = chart.evaluate("""(gd) => {
        const box = gd.getBoundingClientRect(), trace = gd._fullData[0], L = gd._fullLayout;
        const xa = L[trace.xaxis.replace('x', 'xaxis')], ya = L[trace.yaxis.replace('y', 'yaxis')];
        return [box.left + xa._offset + xa.l2p(trace.x[0]), box.top + ya._offset + ya.l2p(trace.y[0])];
    }""")
    tab.mouse.move(x, y)
    with script_run(tab):
        tab.mouse.click(x, y)


def test_channels_page_shows_exemplars_picked_by_block_and_channel_and_from_a_fig6_click(browser, server):
    shots: list[Path] = []
    context = browser.new_context(viewport=VIEWPORT)  # a fresh session
    tab = new_tab(context)
    try:
        open_app(tab, server)
        if "se_resnet_fmnist" not in tab.locator(".st-key-model_name input").input_value():
            pick_model(tab, "se_resnet_fmnist")  # the embedded model and its 300 samples: no ../shared needed
        # from Fig. 6: a click on a point offers the channel; the link opens it on the Channels page
        tab.get_by_test_id("stPlotlyChart").first.locator(".js-plotly-plot").wait_for()
        click_fig6_point(tab)
        link = tab.get_by_role("link", name=re.compile(r"^Open channel \d+ of SE_\d+_\d+ in the Channels view"))
        link.wait_for()
        block, channel = re.search(r"channel (\d+) of (SE_\d+_\d+)", link.inner_text()).group(2, 1)
        with script_run(tab):
            link.click()
        tab.get_by_test_id("stHeading").filter(has_text="Channels").first.wait_for()
        tab.get_by_text(f"{block} · channel {channel}").first.wait_for()
        widths = exemplar_images(tab)
        assert len(widths) == 16 and all(w > 0 for w in widths), widths
        assert_no_exception(tab, "Channels from Fig. 6")
        shot(tab, "channels-from-fig6", shots)

        # pick a block and a channel by hand
        tab.locator("[class*='st-key-channels_block'] [data-testid='stSelectbox']").first.click()
        with script_run(tab):
            tab.get_by_role("option", name="SE_4_1", exact=True).click()
        field = tab.locator("[class*='st-key-channels_channel'] input")
        field.fill("7")
        with script_run(tab):
            field.press("Enter")
        tab.get_by_text("SE_4_1 · channel 7").first.wait_for()
        widths = exemplar_images(tab)
        assert len(widths) == 16 and all(w > 0 for w in widths), widths
        captions = tab.locator(".st-key-channel_exemplars").inner_text()
        assert captions.count("s=") == 16, captions
        tab.get_by_test_id("stPlotlyChart").nth(2).locator(".js-plotly-plot").wait_for()  # the SE-input maps
        assert_no_exception(tab, "Channels by hand")
        shot(tab, "channels-by-hand", shots)

        # a row of the most class-specific channels opens that channel
        grid = tab.locator("[class*='st-key-channels_top_table'] [data-testid='stDataFrameResizable']")
        headers = [h.strip() for h in grid.locator("[role='columnheader']").all_inner_texts()]
        first_row = grid.locator("[role='row']").nth(1).locator("[role='gridcell']").all_inner_texts()
        top_channel = first_row[headers.index("channel")].strip()
        assert top_channel != "7", first_row
        box = grid.bounding_box()
        with script_run(tab):
            tab.mouse.click(box["x"] + 14, box["y"] + 35 + 17)  # the first row's selection box (rows are 35 px)
        tab.get_by_text(f"SE_4_1 · channel {top_channel}").first.wait_for()
        assert field.input_value() == top_channel
        widths = exemplar_images(tab)
        assert len(widths) == 16 and all(w > 0 for w in widths), widths
        assert_no_exception(tab, "Channels from the table")
        shot(tab, "channels-from-the-table", shots)
        assert_clean(tab, "Channels page")
    finally:
        context.close()


# ----------------------------------------------------------------------------------- your own model (issue 13)


def test_an_uploaded_exported_model_draws_fig6(browser, server, tmp_path):
    """"Your own model": the trained embedded SE-ResNet exported here (a torch.export .pt2 file, as a user would save
    theirs) is uploaded in the sidebar with its input size, normalisation and class names; a folder on the server
    with three of the Fashion-MNIST samples of each class (one sub-folder per class) is read and Compare classes
    draws Fig. 6 for the file's gates."""
    import warnings

    import torch
    from conftest import EMBEDDED_MISSING, embedded_model_ready

    from senet_viz.models import zoo
    from senet_viz.models.embedded.data import CLASS_NAMES, MEAN, STD

    require(embedded_model_ready(), EMBEDDED_MISSING)
    # a torch.export program without pickles: a browser user may upload it to a default server (TorchScript carries
    # code and needs SENET_VIZ_ALLOW_CODE=1: tests/test_browser_hostile.py)
    model_file = tmp_path / "my_se_resnet.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = zoo.load_model("se_resnet_fmnist", device="cpu").model
        program = torch.export.export(network, (torch.zeros(2, 1, 28, 28),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(model_file))
    classes_file = tmp_path / "fashion_mnist_classes.txt"
    classes_file.write_text("\n".join(CLASS_NAMES) + "\n")
    samples = tmp_path / "fmnist"  # the session's temporary folders are among the server's data roots
    for folder in sorted(p for p in (ROOT / "assets" / "fmnist_samples").iterdir() if p.is_dir()):
        (samples / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:3]:
            shutil.copy(image, samples / folder.name / image.name)

    shots: list[Path] = []
    context = browser.new_context(viewport=VIEWPORT)  # a fresh session
    tab = new_tab(context)
    try:
        open_app(tab, server)
        sidebar = tab.get_by_test_id("stSidebar")
        with script_run(tab):
            sidebar.get_by_test_id("stRadio").get_by_text("Your own model", exact=True).click()
        sidebar.get_by_text("Upload a model file").first.wait_for()
        sidebar.get_by_test_id("stExpander").filter(has_text="Input and classes").first.locator("summary").click()
        for key, value in (("own_input_size", "1,28,28"), ("own_resize", "28"), ("own_mean", str(MEAN)),
                           ("own_std", str(STD))):
            field = tab.locator(f".st-key-{key} input")
            field.fill(value)
            with script_run(tab):
                field.press("Enter")
        with script_run(tab):
            tab.locator(".st-key-own_classes_upload input[type='file']").set_input_files(classes_file)
        sidebar.get_by_text(f"10 class names from {classes_file.name}").first.wait_for()
        with script_run(tab):
            tab.locator(".st-key-own_model_upload input[type='file']").set_input_files(model_file)
        sidebar.get_by_text("my_se_resnet.pt2 · export · 5 gates").first.wait_for()
        assert "10 classes · input 1x28x28" in sidebar.inner_text()
        assert_no_exception(tab, "own model loaded")
        shot(tab, "own-model-loaded", shots)

        with script_run(tab):
            sidebar.get_by_test_id("stRadio").get_by_text("Folder on the server", exact=True).click()
        field = tab.locator(".st-key-server_folder input")
        field.fill(str(samples))
        with script_run(tab):
            field.press("Enter")
        chart = tab.get_by_test_id("stPlotlyChart").first
        chart.locator(".js-plotly-plot").wait_for()
        title = chart.locator(".gtitle").first.text_content()
        assert title.startswith("Mean excitation per channel — my_se_resnet"), title
        legend = chart.locator(".legend").first.text_content()
        assert "all (n=30)" in legend, legend
        assert sum(f"{name} (n=3)" in legend for name in CLASS_NAMES) >= 2, legend  # labelled by the file's classes
        assert_no_exception(tab, "own model Fig. 6")
        shot(tab, "own-model-fig6", shots)
        assert_clean(tab, "own model")
    finally:
        context.close()
