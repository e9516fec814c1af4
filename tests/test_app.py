"""AppTest tests of the Streamlit app: every page renders with the embedded SE model (``se_resnet_fmnist`` and
its Fashion-MNIST samples), widgets change what the charts show, and bad uploads are listed with their reason
while the good ones are analysed.

Charts are read from their plotly spec (``json.loads(chart.proto.spec)``). Every run starts in app.py, whose
navigation runs the page scripts in app_pages/ (``open_page`` switches to one).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from apptest_helpers import assert_ok, open_page, shown, uploader
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires
from PIL import Image
from streamlit.testing.v1 import AppTest

from senet_viz.analysis.ablation import split_calibration
from senet_viz.data.uploads import uploads_source
from senet_viz.models import download

ROOT = Path(__file__).resolve().parents[1]
MODEL = "se_resnet_fmnist"
SAMPLES = ROOT / "assets" / "fmnist_samples"
TIMEOUT = 180

pytestmark = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


# ------------------------------------------------------------------------------------------------ helpers


def new_app() -> AppTest:
    """A fresh session with the embedded model and its embedded samples (all 10 classes, 300 images)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL)
    at.run()
    assert_ok(at)
    assert at.radio(key="image_source").value == "Embedded samples"
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def chart(at: AppTest) -> dict:
    found = charts(at)
    assert len(found) == 1, f"expected one chart, found {len(found)}"
    return found[0]


def n_values(v) -> int:
    """Length of a trace array as plotly serialises it: a list, or a typed array {"dtype", "bdata"[, "shape"]}."""
    if isinstance(v, dict) and "bdata" in v:
        return int(np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).size)
    return len(v or [])


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def count(text: str) -> int:
    return int(text.replace(",", ""))


def sample(cls: str, i: int = 0) -> Path:
    return sorted((SAMPLES / cls).glob("*.png"))[i]


# ------------------------------------------------------------------------------------------------ every page


@pytest.mark.slow
def test_every_page_renders_its_charts():
    at = new_app()
    assert "300 files in 10 classes (unreadable ones are listed on each page)" in [c.value for c in at.sidebar.caption]
    expected = {  # page file: (header, number of plotly charts)
        "compare": ("Compare classes", 1),
        "explore": ("Explore one image", 1),
        "depth": ("Depth profile", 1),
        "remove": ("Remove SE blocks", 0),
        "attribution": ("Attribution", 2),
        "cost": ("Cost", 1),
        "export": ("Export", 0),
    }
    for page, (header, n_charts) in expected.items():
        open_page(at, page, header)
        found = charts(at)
        assert len(found) == n_charts, (page, len(found))
        for spec in found:
            assert spec["data"], f"{page}: a chart without traces"
        if page == "remove":
            assert {"Top-1 (full network)", "Parameters", "GMACs"} <= set(metrics(at))
            assert metrics(at)["Top-1 (full network)"].endswith("%")  # labels are model classes: scored
        if page == "cost":
            assert count(metrics(at)["Parameters"]) > count(metrics(at)["SE parameters"]) > 0
        if page == "export":
            labels = [b.label for b in at.get("download_button")]
            assert labels.count("CSV") >= 3 and "HTML" in labels  # tables, and the figures drawn so far


# ------------------------------------------------------------------------------------------------ widgets


@pytest.mark.slow
def test_compare_widgets_change_the_figure():
    at = open_page(new_app(), "compare", "Compare classes")
    assert "300 images, grouped by labels" in at.caption[0].value
    fig = chart(at)
    assert {t["type"] for t in fig["data"]} == {"scatter"}
    names = {t["name"] for t in fig["data"]}
    assert "Bag (n=30)" not in names and "T-shirt/top (n=30)" in names  # default: the first six classes

    at.multiselect(key="compare_classes").set_value(["Bag", "Sneaker"])
    at.run()
    assert_ok(at)
    assert {t["name"] for t in chart(at)["data"]} == {"Bag (n=30)", "Sneaker (n=30)", "all (n=300)"}

    lengths = {n_values(t["x"]) for t in chart(at)["data"]}
    assert max(lengths) > 5
    at.number_input(key="fig6_n").set_value(5)
    at.run()
    assert_ok(at)
    assert {n_values(t["x"]) for t in chart(at)["data"]} == {5}

    at.radio(key="compare_view").set_value("Class × channel heatmap")
    at.run()
    assert_ok(at)
    heat = chart(at)
    assert [t["type"] for t in heat["data"]] == ["heatmap"]
    assert sorted(heat["data"][0]["y"]) == ["Bag", "Sneaker"]

    for view in ("Paper Fig. 7 (one class, ±1 std)", "Per-stage distributions"):
        at.radio(key="compare_view").set_value(view)
        at.run()
        assert_ok(at)
        assert chart(at)["data"]


@pytest.mark.slow
def test_remove_toggle_and_mode_change_the_numbers():
    at = open_page(new_app(), "remove", "Remove SE blocks")
    full = metrics(at)
    full_params = count(full["Parameters"])
    assert at.slider(key="remove_k").value == 1

    at.toggle(key="remove_on").set_value(True)
    at.run()
    assert_ok(at)
    identity = metrics(at)
    assert {"Top-1", "Top-5", "Agreement with full", "Parameters", "GMACs"} <= set(identity)
    assert 0 < count(identity["Parameters"]) < full_params
    assert identity["Top-1"].endswith("%")

    at.radio(key="remove_mode").set_value("mean")
    at.run()
    assert_ok(at)
    mean = metrics(at)
    assert count(mean["Parameters"]) == count(identity["Parameters"])  # the same block is removed
    scored = ("Top-1", "Top-5", "Agreement with full")
    assert [mean[k] for k in scored] != [identity[k] for k in scored]  # mean gates on the other 80% of the images
    assert "the mean gates were fitted on" in " ".join(c.value for c in at.caption)


@pytest.mark.slow
def test_depth_metrics_change_the_traces():
    at = open_page(new_app(), "depth", "Depth profile")
    assert {t["meta"]["metric"] for t in chart(at)["data"]} == {"specificity", "spread", "saturation"}
    at.multiselect(key="depth_metrics").set_value(["mean_gate", "cross_class_corr"])
    at.run()
    assert_ok(at)
    assert {t["meta"]["metric"] for t in chart(at)["data"]} == {"mean_gate", "cross_class_corr"}


@pytest.mark.slow
def test_explore_another_image_changes_the_chart():
    at = open_page(new_app(), "explore", "Explore one image")
    box = at.selectbox(key="explore_image")
    assert len(box.options) == 300
    before = chart(at)
    at.selectbox(key="explore_image").select_index(len(box.options) - 1)
    at.run()
    assert_ok(at)
    after = chart(at)
    assert after != before
    assert after["layout"]["title"]["text"] != before["layout"]["title"]["text"]


# ------------------------------------------------------------------------------------------------ bad uploads


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _bomb_png(side: int = 100_000) -> bytes:
    """A tiny PNG whose header declares side x side RGB pixels (10 Gpx): refused before any pixel is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.slow
def test_bad_uploads_are_listed_and_the_rest_is_analysed():
    bag = Image.open(sample("Bag", 2)).convert("RGB")
    big_jpeg = _jpeg(bag.resize((256, 256)))
    odd_name = 'sneaker “smart” \'quoted\' "double" ü 🙂.png'
    broken_name = 'broken "half" jpeg ü.jpg'
    bag_files = [
        ("bag 1.png", sample("Bag", 0).read_bytes(), "image/png"),
        ("bag 2.png", sample("Bag", 1).read_bytes(), "image/png"),
        ("one pixel.png", _png(Image.new("RGBA", (1, 1), (90, 90, 90, 128))), "image/png"),  # odd, but an image
        ("notes.jpg", b"this is a text file with an image extension\n" * 20, "image/jpeg"),
        (broken_name, big_jpeg[: len(big_jpeg) // 3], "image/jpeg"),
        ("readme.txt", b"not an image", "text/plain"),
    ]
    sneaker_16bit = Image.fromarray(np.asarray(Image.open(sample("Sneaker", 2)).convert("L"), np.uint16) * 257)
    sneaker_files = [
        ("sneaker cmyk.jpg", _jpeg(Image.open(sample("Sneaker", 0)).convert("CMYK")), "image/jpeg"),
        (odd_name, sample("Sneaker", 1).read_bytes(), "image/png"),
        ("sneaker 16 bit.png", _png(sneaker_16bit), "image/png"),
        ("bomb.png", _bomb_png(), "image/png"),
        ("empty.png", b"", "image/png"),
    ]
    assert sneaker_16bit.mode.startswith("I")

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL)
    at.radio(key="image_source").set_value("Upload by class")
    at.run()
    assert_ok(at)
    at.text_input(key="class_name_0").set_value("Bag")
    at.text_input(key="class_name_1").set_value("Sneaker")
    uploader(at, 0).set_value(bag_files)
    at.run()
    assert_ok(at)
    assert at.multiselect(key="compare_classes").value == ["Bag"]
    uploader(at, 1).set_value(sneaker_files)
    at.run()
    assert_ok(at)
    # a class that appears later is compared too (the selection follows the classes present)
    assert sorted(at.multiselect(key="compare_classes").value) == ["Bag", "Sneaker"]

    # files refused before decoding are listed in the sidebar, undecodable images on the page
    expanders = [e.label for e in at.expander]
    assert "2 file(s) left out" in expanders
    assert "3 image(s) could not be read and were left out" in expanders
    listed = "\n".join(shown(m.value) for m in at.markdown)
    for name, reason in [("readme.txt", "not an image file (.txt)"), ("empty.png", "file is empty"),
                         ("notes.jpg", "not an image (cannot identify format)"),
                         (broken_name, "truncated or corrupt image data"),
                         ("bomb.png", "decompression bomb")]:
        line = next((ln for ln in listed.splitlines() if ln.startswith(f"- {name}: ")), None)
        assert line is not None, f"{name} is not listed: {listed}"
        assert reason in line, line

    # the six readable images (1x1 RGBA, CMYK, 16-bit grey, a quoted unicode name) are analysed
    head, _, groups = at.caption[0].value.partition(": ")
    assert head == "6 images, grouped by labels" and set(groups.split(", ")) == {"Bag (n=3)", "Sneaker (n=3)"}
    assert {t["name"] for t in chart(at)["data"]} == {"Bag (n=3)", "Sneaker (n=3)", "all (n=6)"}

    open_page(at, "explore", "Explore one image")
    box = at.selectbox(key="explore_image")
    assert len(box.options) == 6
    assert f"{odd_name} (Sneaker)" in box.options  # options are shown as "<name> (<label>)"
    at.selectbox(key="explore_image").select_index(box.options.index(f"{odd_name} (Sneaker)"))
    at.run()
    assert_ok(at)
    assert odd_name in chart(at)["layout"]["title"]["text"]

    open_page(at, "remove", "Remove SE blocks")  # the labels are model classes: top-1 is scored
    assert metrics(at)["Top-1 (full network)"].endswith("%")
    at.toggle(key="remove_on").set_value(True)
    at.run()
    assert_ok(at)
    # identity: scored on all six readable images
    assert metrics(at)["Top-1"].endswith("%")
    captions = [c.value for c in at.caption]
    assert any(c.startswith("6 images evaluated (all scored).") for c in captions), captions
    # mean: the calibration split (sha1(key) mod 1000 < 200) of these uploads is empty, so no gate can be fitted:
    # the page says so, and shows no ablated metric (and no exception)
    uploads = uploads_source([(n, b, "Bag") for n, b, _ in bag_files]
                             + [(n, b, "Sneaker") for n, b, _ in sneaker_files])
    calibration, evaluation = split_calibration(uploads)
    assert calibration.items == [] and len(evaluation.items) == 9  # 6 readable + 3 undecodable, none calibrates
    at.radio(key="remove_mode").set_value("mean")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Top-1" not in metrics(at) and "Top-1 (full network)" in metrics(at)
    assert [shown(w.value) for w in at.warning if w.value.startswith("Cannot evaluate this removal")] == [
        "Cannot evaluate this removal: no image could be used to compute mean gates; add calibration images "
        "(mode 'mean' fits the gates on 20% of the images)."]

    for page, header in [("depth", "Depth profile"), ("compare", "Compare classes")]:  # the app keeps serving
        open_page(at, page, header)
        assert charts(at)


@pytest.mark.slow
def test_a_model_without_weights_offers_a_download_that_fails_clearly_offline(monkeypatch, tmp_path):
    # The download goes to a closed loopback port: the real code path, and never the internet.
    monkeypatch.setenv("SENET_VIZ_CACHE", str(tmp_path))
    monkeypatch.setattr(download, "weights_url", lambda name: "http://127.0.0.1:9/model.safetensors")
    monkeypatch.setattr(download, "hub_url", lambda spec: "http://127.0.0.1:9/")
    monkeypatch.setattr(download, "hub_cached_file", lambda spec: None)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model_name").set_value("legacy_seresnet18")
    at.run()
    assert not at.exception
    # no download without the button: the sidebar says one is needed (with the file's size when the hub answers)
    assert any("download needed" in i.value for i in at.info), [i.value for i in at.info]
    at.button(key="download_weights").click()
    at.run()
    assert not at.exception
    assert any("cannot download the weights of legacy_seresnet18" in e.value for e in at.error)
    # The app keeps serving: back to the embedded model, the first page draws its figure.
    at.selectbox(key="model_name").set_value(MODEL)
    at.run()
    assert_ok(at)
    assert at.get("plotly_chart")
