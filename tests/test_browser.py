"""A real browser against a real server: `streamlit run app.py` (headless, free port) driven by Debian's Chromium
through Playwright.

The flow: MobileNetV3-Small from ../shared (the .tflite), "Upload by class" with two classes named after ImageNet
classes (so top-1 is scored) and two images each, the Compare classes figure, a bad upload listed with its
reason while the app keeps working, removal of the last SE block changing top-1 and parameters, and every
page of the navigation opened without an exception on screen. Screenshots go to test-output/browser/.

The classes are "great white shark" (the great white shark and tiger shark samples) and "French bulldog" (the
French bulldog and pug samples): removing the last SE block of MobileNetV3-Small changes the top-1 class of the
great white shark and the French bulldog images, so top-1 accuracy moves; the goldfish and pug images keep
theirs, and a goldfish/pug pair would leave top-1 unchanged.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLES = SHARED / "data" / "imagenet-samples"
TFLITE = SHARED / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"
CHROMIUM = Path("/usr/bin/chromium")
OUT = ROOT / "test-output" / "browser"
MODEL = "tf_mobilenetv3_small_100"
CLASSES = {  # class name (an ImageNet class) -> two sample images uploaded into it
    "great white shark": ["n01484850_great_white_shark.JPEG", "n01491361_tiger_shark.JPEG"],
    "French bulldog": ["n02108915_French_bulldog.JPEG", "n02110958_pug.JPEG"],
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


def open_page(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").locator("a").filter(has_text=re.compile(rf"{re.escape(title)}\s*$")).click()
    wait_idle(page)
    page.get_by_test_id("stHeading").filter(has_text=title).first.wait_for()  # the page's own header


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
    page.locator(".st-key-model_name [data-testid='stSelectbox']").click()
    page.keyboard.type(MODEL)  # the selectbox filters its options as one types
    page.get_by_role("option").filter(has_text=f"{MODEL} —").first.click()
    wait_idle(page)
    assert MODEL in page.locator(".st-key-model_name input").input_value()
    assert_no_exception(page, "model")

    # two classes named after ImageNet classes, two images each
    sidebar.get_by_test_id("stRadio").get_by_text("Upload by class", exact=True).click()
    wait_idle(page)
    for i, (name, files) in enumerate(CLASSES.items()):
        field = page.locator(f".st-key-class_name_{i} input")
        field.fill(name)
        field.press("Enter")
        wait_idle(page)
        page.locator(f".st-key-class_files_{i} input[type='file']").set_input_files([SAMPLES / f for f in files])
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

    # a bad upload is listed with its reason, and the rest is still analysed
    bad = tmp_path / "notes.jpg"
    bad.write_text("a text file renamed .jpg\n" * 50)
    page.locator(".st-key-class_files_0 input[type='file']").set_input_files([bad])
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
    assert _health(server) == "ok"  # the server keeps serving
    assert all(p.is_file() and p.stat().st_size > 0 for p in shots)
    print("browser errors:", errors or "none")
