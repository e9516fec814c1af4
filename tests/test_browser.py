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
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLES = SHARED / "data" / "imagenet-samples"
TFLITE = SHARED / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"
CHROMIUM = Path("/usr/bin/chromium")
OUT = ROOT / "test-output" / "browser"
MODEL = "tf_mobilenetv3_small_100"
CLASSES = {  # class name -> two sample images uploaded into it
    # not a model class: top-1 is scored from the ImageNet-style file names (n01484850_...)
    "sharks": ["n01484850_great_white_shark.JPEG", "n01491361_tiger_shark.JPEG"],
    "French bulldog": ["n02108915_French_bulldog.JPEG", "n02110958_pug.JPEG"],  # a model class
}
PAGES = ["Compare classes", "Explore", "Depth", "Remove SE blocks", "Attribution", "Cost", "Export"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
RUNNING = "[data-testid='stApp'][data-test-script-state='running']"
STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_MS = 240_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing: `apt-get install chromium` "
                                                      "(`make test` does it) to run the browser test"),
    pytest.mark.skipif(not (TFLITE.is_file() and SAMPLES.is_dir()),
                       reason=f"the shared model and samples are missing ({TFLITE}, {SAMPLES})"),
]


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


@pytest.fixture(scope="module")
def server():
    """`streamlit run app.py` on a free port; yields its URL and always terminates it."""
    OUT.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log_path = OUT / "server.log"
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.fileWatcherType", "none", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while _health(url) != "ok":
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no 'ok' from {url}/_stcore/health in {STARTUP_TIMEOUT_S} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1100})
        tab = context.new_page()
        tab.set_default_timeout(RUN_TIMEOUT_MS)
        try:
            yield tab
        finally:
            context.close()
            browser.close()


# ------------------------------------------------------------------------------------------------ helpers


def wait_idle(page, started: bool = True) -> None:
    """Wait until the script run that an action triggered has finished (first for it to start, briefly)."""
    if started:
        try:
            page.wait_for_selector(RUNNING, timeout=3000, state="attached")
        except Exception:  # noqa: BLE001 - a fast run may have started and ended already
            pass
    page.wait_for_selector(IDLE, timeout=RUN_TIMEOUT_MS, state="attached")
    page.wait_for_timeout(300)  # let the last deltas paint
    page.wait_for_selector(IDLE, timeout=RUN_TIMEOUT_MS, state="attached")


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
    page.locator(".st-key-model_name [data-testid='stSelectbox']").click()
    page.keyboard.type(name)  # the selectbox filters its options as one types
    page.get_by_role("option", name=name, exact=True).click()
    wait_idle(page)
    assert name in page.locator(".st-key-model_name input").input_value()


def open_page(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").locator("a").filter(has_text=re.compile(rf"{re.escape(title)}\s*$")).click()
    wait_idle(page)
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


def test_upload_compare_remove_and_every_page(page, server, tmp_path):
    shots: list[Path] = []
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    wait_idle(page, started=False)
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("senet-viz").first.wait_for()
    shot(page, "start", shots)

    # the model: MobileNetV3-Small, loaded from ../shared/models/*.tflite
    pick_model(page, MODEL)
    assert_no_exception(page, "model")

    # two classes named after ImageNet classes, two images each
    sidebar.get_by_test_id("stRadio").get_by_text("Upload by class", exact=True).click()
    wait_idle(page)
    for i, (name, files) in enumerate(CLASSES.items()):
        field = page.locator(f".st-key-class_name_{i} input")
        field.fill(name)
        field.press("Enter")
        wait_idle(page)
        upload_input(page, i).set_input_files([SAMPLES / f for f in files])
        wait_idle(page)
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
    sidebar.get_by_test_id("stRadio").get_by_text("Folder on the server", exact=True).click()
    wait_idle(page)
    assert "sharks (n=2)" not in page.get_by_test_id("stMain").inner_text()  # the folder's images are shown
    sidebar.get_by_test_id("stRadio").get_by_text("Upload by class", exact=True).click()
    wait_idle(page)
    page.get_by_test_id("stPlotlyChart").first.locator(".js-plotly-plot").wait_for()
    assert "4 images, grouped by labels" in page.get_by_test_id("stMain").inner_text()
    assert "2 file(s) in sharks" in sidebar.inner_text()
    assert plotly_data(page) == before
    shot(page, "uploads-kept-after-source-switch", shots)

    # a bad upload is listed with its reason, and the rest is still analysed
    bad = tmp_path / "notes.jpg"
    bad.write_text("a text file renamed .jpg\n" * 50)
    upload_input(page, 0).set_input_files([bad])
    wait_idle(page)
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
    page.locator(".st-key-remove_on").get_by_text(re.compile(r"^Remove")).click()
    wait_idle(page)
    page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^Top-1$")).first.wait_for()
    removed = read_metrics(page)
    assert removed["Top-1"] != full["Top-1 (full network)"], (full, removed)
    assert count(removed["Parameters"]) < count(full["Parameters"]), (full, removed)
    assert_no_exception(page, "Remove SE blocks")
    shot(page, "remove-last-se-block", shots)
    print(f"full network: {full}\nlast SE block removed: {removed}")

    # every page of the navigation, without an exception on screen
    for title in PAGES:
        open_page(page, title)
        assert_no_exception(page, title)
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        shot(page, f"page-{slug}", shots)

    # a PNG export: large, with the title inside the image and the provenance line under the plot
    main = page.get_by_test_id("stMain")
    row = main.get_by_test_id("stHorizontalBlock").filter(has_text="Compare classes").first
    row.get_by_role("button", name="PNG").click()
    wait_idle(page)
    with page.expect_download() as download:
        row.get_by_role("button", name="Download PNG").click()
    png_path = OUT / "export-compare-classes.png"
    download.value.save_as(png_path)
    check_png_export(png_path)
    shot(page, "export-png", shots)

    # a model switch: Export lists only the new model's figures; the old ones sit apart, under their model
    pick_model(page, "se_resnet_fmnist")
    open_page(page, "Export")
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
    print("browser errors:", errors or "none")


@pytest.fixture(scope="module")
def paper_bundle(tmp_path_factory) -> Path:
    """`python -m senet_viz paper` on the 900 shared images with MobileNetV3-Small: the bundle it writes."""
    out = tmp_path_factory.mktemp("paper")
    cmd = [sys.executable, "-m", "senet_viz", "paper", "--model", MODEL, "--weights", str(TFLITE), "--images",
           str(SAMPLES), "--out", str(out), "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    bundle = out / "analysis.senetviz.zip"
    assert bundle.is_file()
    return bundle


def test_an_analysis_bundle_opens_with_no_model_and_draws_fig6(page, server, paper_bundle):
    shots: list[Path] = []
    tab = page.context.browser.new_context(viewport={"width": 1600, "height": 1100}).new_page()  # a fresh session
    tab.set_default_timeout(RUN_TIMEOUT_MS)
    try:
        tab.goto(server)
        wait_idle(tab, started=False)
        sidebar = tab.get_by_test_id("stSidebar")
        sidebar.get_by_test_id("stRadio").get_by_text("An analysis file", exact=True).click()
        wait_idle(tab)
        field = tab.locator(".st-key-bundle_path input")
        field.fill(str(paper_bundle))
        field.press("Enter")
        wait_idle(tab)
        chart = tab.get_by_test_id("stPlotlyChart").first
        chart.locator(".js-plotly-plot").wait_for()
        assert tab.locator(".st-key-model_name").count() == 0  # no model picker: nothing to load
        title = chart.locator(".gtitle").first.text_content()
        assert title.startswith(f"Mean excitation per channel — {MODEL}"), title
        legend = chart.locator(".legend").first.text_content()
        assert "all (n=900)" in legend, legend
        for cls in ("goldfish", "pug", "airliner", "cliff"):
            assert f"{cls} (n=1)" in legend, legend  # the paper's four classes, one image each here
        assert_no_exception(tab, "analysis bundle")
        shot(tab, "bundle-compare-classes", shots)
        open_page(tab, "Depth")
        tab.get_by_text("Verdict:").first.wait_for()
        assert_no_exception(tab, "analysis bundle depth")
        shot(tab, "bundle-depth", shots)
    finally:
        tab.context.close()
