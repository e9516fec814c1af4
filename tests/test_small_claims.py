"""Issue 20's smaller user-visible points, each with a test: the Channels captions name the model's predicted class,
Remove in mean mode counts the scored images, Export names the real image source, Compare starts from the
paper's four classes, Table 13 labels the paper's "GFLOPs" as multiply-adds, and Fig. 6 / Fig. 7 draw intervals of
the class means.

One app session (:func:`test_the_app_names_predictions_scored_images_and_sources`) covers the app's points; the
rest are library calls.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from apptest_helpers import assert_ok, open_page, shown
from conftest import EMBEDDED_MISSING, REPO_ROOT, embedded_model_ready, requires

from senet_viz.analysis import paper
from senet_viz.analysis.stats import GateStats
from senet_viz.data.labels import imagenet_class_names, imagenet_wnids
from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.gates.kinds import SEBlock
from senet_viz.plots.gates import fig6_matrix, fig7

MODEL = "se_resnet_fmnist"
SAMPLES = REPO_ROOT / "assets" / "fmnist_samples"


# ------------------------------------------------------------------------------------------ Table 13's units


def test_table13_shows_the_papers_gflops_as_multiply_adds_beside_our_gmacs():
    measured = [(25.557e6, 3.857973e9)] * 4 + [(28.088e6, 3.860488e9)]
    table = paper.table13_frame(measured)
    assert "paper GFLOPs" not in table.columns  # the unit the paper prints, never as a bare column beside GMACs
    assert "multiply-adds" in paper.PAPER_GMACS_COLUMN and "GMACs" in paper.PAPER_GMACS_COLUMN
    assert table[paper.PAPER_GMACS_COLUMN].tolist() == paper.TABLE13_STAGES["gflops"].tolist()
    assert table[paper.OURS_GMACS_COLUMN].iloc[-1] == pytest.approx(3.860488)
    with pytest.raises(ValueError, match="one \\(params, macs\\) per Table 13 variant"):
        paper.table13_frame(measured[:2])


# ------------------------------------------------------------------------------------------ Compare's classes


def _block(channels: int) -> SEBlock:
    return SEBlock(name="SE_5_1", path="m.se", gate_path="m.se.gate", stage=5, index=1, order=0, channels=channels,
                   params=0, kind="structural", gate_fn="Sigmoid")


def _imagenet_stats(counts: dict[int, int]) -> GateStats:
    """Statistics over ImageNet class indices ``counts`` (class -> images), one 3-channel block."""
    names = imagenet_class_names()
    stats = GateStats.for_blocks("toy", [_block(3)], names)
    labels = np.repeat(np.array(list(counts), dtype=np.int64), list(counts.values()))
    gates = np.random.default_rng(0).random((len(labels), 3), dtype=np.float32)
    stats.update("SE_5_1", gates, labels)
    return stats


def test_compare_starts_from_the_papers_four_classes_as_the_sidebar_and_paper_do():
    wnids, names = imagenet_wnids(), imagenet_class_names()
    first = list(range(8))  # tench, goldfish, great white shark, tiger shark, ... by class index
    ours = [wnids.index(w) for w in paper.PAPER_CLASSES]
    counts = dict.fromkeys(sorted(set(first) | set(ours)), 1)  # one image per class, as the 900 samples
    chosen = paper.default_classes(_imagenet_stats(counts), wnids, names)
    assert chosen == ["goldfish", "pug", "airliner", "cliff"]
    images = ImageSet([ImageItem(str(k), str(k), k, names[k]) for k in counts], class_names=names)
    assert [names[k] for k in paper.pick_classes(images, None, wnids)] == chosen  # the sidebar's and `paper`'s pick
    # more images still come first; without a model's wnids the tie goes to the lower class index
    assert paper.default_classes(_imagenet_stats({**counts, 0: 2}), wnids, names)[:2] == ["tench", "goldfish"]
    assert paper.default_classes(_imagenet_stats(counts), None, None) == names[:4]


# ------------------------------------------------------------------------------------------ Fig. 6 / Fig. 7 intervals


def test_fig6_and_fig7_draw_the_class_mean_intervals_as_error_bars():
    means = np.array([[0.2, 0.5, 0.8, 0.4], [0.3, 0.3, 0.3, 0.3], [0.25, 0.4, 0.55, 0.35]])
    block = (["a", "b", "all"], [5, 1, 6], means)
    lo, hi = means[0] - 0.05, means[0] + np.array([0.1, 0.1, 0.1, np.nan])
    nan = np.full(4, np.nan)
    note = "95% bootstrap interval of the class mean (200 resamples, seed 0)"
    fig = fig6_matrix({"SE_5_1": block}, model="toy", all_channels=True,
                      intervals={"SE_5_1": {"a": (lo, hi), "b": (nan, nan)}}, interval_note=note)
    bars = {t.meta["class"]: t.error_y for t in fig.data}
    assert list(bars["a"].array[:3]) == pytest.approx([0.1] * 3) and np.isnan(bars["a"].array[3])
    assert list(bars["a"].arrayminus) == pytest.approx([0.05] * 4)
    assert bars["b"].array is None and bars["all"].array is None  # one image: no interval; "all": none given
    assert note in fig.layout.title.subtitle.text
    plain = fig6_matrix({"SE_5_1": block}, model="toy", all_channels=True)
    assert all(t.error_y.array is None for t in plain.data) and "error bars" not in plain.layout.title.subtitle.text
    with pytest.raises(ValueError, match="over the 4 channels"):
        fig6_matrix({"SE_5_1": block}, model="toy", intervals={"SE_5_1": {"a": (lo[:2], hi[:2])}})

    frame = GateStats.for_blocks("toy", [_block(4)], ["a", "b"])
    gates = np.random.default_rng(1).random((6, 4), dtype=np.float32)
    frame.update("SE_5_1", gates, np.array([0, 0, 0, 0, 0, 1]))
    channels = frame.frame(["SE_5_1"], ["a"], hist=False)
    mean = gates[:5].mean(axis=0)
    one = fig7(channels, "SE_5_1", "a", all_channels=True, interval=(mean - 0.01, mean + 0.02), interval_note=note)
    trace = next(t for t in one.data if t.meta == "mean")
    assert list(trace.error_y.array) == pytest.approx([0.02] * 4, abs=1e-6)
    assert list(trace.error_y.arrayminus) == pytest.approx([0.01] * 4, abs=1e-6)
    assert note in one.layout.title.subtitle.text
    with pytest.raises(ValueError, match="one value per channel"):
        fig7(channels, "SE_5_1", "a", all_channels=True, interval=(mean[:2], mean[:2]))


# ------------------------------------------------------------------------------------------ the app


def _mixed_folder(root):
    """Class folders "Bag" (a model class: scored) and "dogs", "fish" (not model classes: unscored) of Fashion-MNIST
    samples, 6 each; returns the folder and its images' keys (relative paths)."""
    folder = root / "mixed"
    for cls, source in {"Bag": "Bag", "dogs": "Sneaker", "fish": "Trouser"}.items():
        (folder / cls).mkdir(parents=True)
        for f in sorted((SAMPLES / source).glob("*.png"))[:6]:
            shutil.copy(f, folder / cls / f.name)
    return folder, [f"{p.parent.name}/{p.name}" for p in sorted(folder.rglob("*.png"))]


@pytest.mark.slow
@requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)
def test_the_app_names_predictions_scored_images_and_sources(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from senet_viz.analysis.ablation import split_calibration

    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=240)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL).run()
    assert_ok(at)
    model_classes = list(at.session_state["selection"].model.class_names)

    # Compare, Fig. 6 with 30 images per class: error bars of the class means, and the caption says what they are
    open_page(at, "compare", "Compare classes")
    note = paper.interval_note()
    assert any(note in c.value for c in at.caption), [c.value for c in at.caption]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(t.get("error_y", {}).get("array") is not None for t in spec["data"])

    # Export: the same images reached as a folder on the server are named so, not as the embedded samples
    at.radio(key="image_source").set_value("Folder on the server").run()
    open_page(at, "export", "Export")
    line = next(shown(c.value) for c in at.caption if c.value.startswith("Current selection"))
    assert f"Folder on the server ({SAMPLES.resolve()}): 300 files in 10 classes" in line, line
    assert "Embedded samples" not in line

    # Remove, mean mode, on a folder where 6 of 18 images carry a model class
    folder, keys = _mixed_folder(tmp_path)
    calibration, rest = split_calibration(ImageSet([ImageItem(k, k, 0, "x") for k in keys]))
    assert calibration.items and any(it.key.startswith("Bag/") for it in rest.items)  # mean mode can score
    at.text_input(key="server_folder").set_value(str(folder)).run()
    assert_ok(at)
    open_page(at, "remove", "Remove SE blocks")
    at.toggle(key="remove_on").set_value(True)
    at.radio(key="remove_mode").set_value("mean").run()
    assert_ok(at)
    text = " ".join(c.value for c in at.caption)
    # the identity top-1 it is compared with covers the 6 Bag images (before: "on 18", every image evaluated)
    assert f"{len(rest.items)} images evaluated (" in text
    assert re.search(r"with identity \(\d+\.\d% on 6 scored images\)", text), text

    # Channels: the captions name the model's predicted class, never a folder class looked up by the prediction
    open_page(at, "channels", "Channels")
    area = [b for b in at.main.children.values() if getattr(b, "key", None) == "channel_exemplars"]
    captions = [img.caption for e in area[0].children.values() if e.type == "image" for img in e.proto.imgs]
    assert captions
    preds = [c.split("(pred. ")[1].rstrip(")") for c in captions if "(pred. " in c]
    assert preds and set(preds) <= set(model_classes), preds
    labels = {c.split(" · ")[1].split(" (pred.")[0] for c in captions}
    assert labels <= {"Bag", "dogs", "fish"}
