"""The paper's protocol and tables (senet_viz/analysis/paper.py): class picking, the Fig. 6/7 preset on the embedded
SE-ResNet against a direct gate capture, and Tables 10 / 13 measured on SE-ResNet-50 beside the paper's numbers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import EMBEDDED_MISSING, TINY_CLASSES, embedded_model_ready, requires

from senet_viz.analysis import paper
from senet_viz.data.folders import folder_source
from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.inference.run import RunOptions, run_model
from senet_viz.models import registry, zoo

MODEL = "se_resnet_fmnist"
needs_model = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


def image_set(counts: dict[int, int], names: list[str] = TINY_CLASSES) -> ImageSet:
    items = [ImageItem(f"{k}/{i}.png", f"{i}.png", k, names[k], data=b"x") for k, n in counts.items()
             for i in range(n)]
    items.append(ImageItem("unlabelled.png", "unlabelled.png", None, None, data=b"x"))
    return ImageSet(items, [], list(names))


# ------------------------------------------------------------------------------------------------ pick_classes


def test_pick_classes_defaults_to_the_four_largest_with_the_papers_classes_first_on_ties():
    images = image_set({0: 2, 1: 5, 2: 5, 3: 1, 4: 5, 5: 3})
    assert paper.pick_classes(images, None, None) == [1, 2, 4, 5]  # most images, ties by class index
    wnids = [f"n{i:08d}" for i in range(10)]
    wnids[4], wnids[2] = paper.PAPER_CLASSES[1], paper.PAPER_CLASSES[3]  # pug, cliff: in the paper's order first
    assert paper.pick_classes(images, None, wnids) == [4, 2, 1, 5]
    assert paper.pick_classes(image_set({7: 1, 8: 2}), None, None) == [8, 7]  # fewer than four classes: all


def test_pick_classes_takes_names_wnids_and_indices_and_refuses_unknown_or_absent_ones():
    images = image_set({0: 2, 1: 2, 3: 1})
    wnids = [f"n{i:08d}" for i in range(10)]
    assert paper.pick_classes(images, ["CLASS_1", "n00000003", "0", 1], wnids) == [1, 3, 0, 1]
    with pytest.raises(ValueError, match="'zebra' is not in the image set"):
        paper.pick_classes(images, ["zebra"], wnids)
    with pytest.raises(ValueError, match=r"no images of class\(es\) \['class_2'\]"):
        paper.pick_classes(images, ["class_2"], wnids)


# -------------------------------------------------------------------------------------- the Fig. 6/7 preset


@pytest.fixture(scope="module")
def fmnist():
    return zoo.load_model(MODEL, device="cpu")


@pytest.fixture(scope="module")
def samples(fmnist) -> ImageSet:
    images = folder_source(registry.get_spec(MODEL).samples_dir, fmnist.class_names)
    # 12 images of each class: the preset takes its per-class share from these
    taken: dict[int, int] = {}
    kept = []
    for it in images.items:
        if taken.get(it.label, 0) < 12:
            taken[it.label] = taken.get(it.label, 0) + 1
            kept.append(it)
    return replace(images, items=kept)


@needs_model
def test_paper_preset_equals_a_direct_capture_of_the_same_images(fmnist, samples):
    result = paper.paper_preset(fmnist, samples, classes=["Bag", "Sneaker"], per_class=5, batch_size=16)
    bag, sneaker = fmnist.class_names.index("Bag"), fmnist.class_names.index("Sneaker")
    assert result.classes == ["Bag", "Sneaker"]
    assert result.images_per_class == {"Bag": 5, "Sneaker": 5}
    assert result.n_images == 10 * 5  # the all-class curve: up to per_class images of every class
    assert result.skipped == []
    # the same 50 images through run_model, gates captured directly
    first: dict[int, int] = {}
    subset = []
    for it in samples.items:
        if first.get(it.label, 0) < 5:
            first[it.label] = first.get(it.label, 0) + 1
            subset.append(it)
    direct = run_model(fmnist, replace(samples, items=subset), options=RunOptions(batch_size=16))
    labels = np.array([it.label for it in subset])
    stats = result.stats
    assert stats.classes() == sorted([bag, sneaker])  # per-class curves only for the chosen classes
    for block in fmnist.blocks:
        gates = direct.gates[block.name].astype(np.float64)
        names, counts, means = stats.class_means(block.name, ["Bag", "Sneaker"], include_all=True)
        order = [bag, sneaker]  # rows in the order asked for, then "all"
        assert names == [fmnist.class_names[k] for k in order] + ["all"] and counts.tolist() == [5, 5, 50]
        expected = np.vstack([gates[labels == k].mean(0) for k in order] + [gates.mean(0)])
        np.testing.assert_allclose(means, expected, atol=1e-6)


@needs_model
def test_paper_preset_defaults_to_the_largest_classes_and_caps_per_class(fmnist, samples):
    dress = [it for it in samples.items if it.label == 3]
    fewer = replace(samples, items=[it for it in samples.items if it.label != 3 or it in dress[:5]])
    result = paper.paper_preset(fmnist, fewer, per_class=50, batch_size=32)
    assert len(result.classes) == 4
    counts = result.images_per_class
    assert set(counts.values()) == {12}  # every shown class is a full one: the reduced class 3 is not picked
    assert fmnist.class_names[3] not in counts
    assert result.n_images == len(fewer.items)  # per_class above every class size: every image is in "all"


# ------------------------------------------------------------------------------------------- Tables 10 and 13


@pytest.mark.slow
def test_table13_measured_on_se_resnet50_matches_the_papers_parameters():
    with torch.device("meta"):  # only shapes are read: parameters and MACs count the same without weights
        table = paper.table13_measured("legacy_seresnet50").set_index("variant")
    assert list(table.index) == list(paper.TABLE13_STAGES["variant"])
    ours, theirs = table["ours params (M)"], table["paper params (M)"]
    assert (ours - theirs).abs().max() < 0.06  # the paper's counts, rounded to 0.1 M
    assert ours["SE_All"] == pytest.approx(28.088024)  # every SE block kept: the full SE-ResNet-50
    assert ours["ResNet-50"] == pytest.approx(25.557032)  # no SE block: torchvision's ResNet-50 parameter count
    assert ours["ResNet-50"] < ours["SE_Stage_2"] < ours["SE_Stage_3"] < ours["SE_Stage_4"] < ours["SE_All"]
    gmacs = table["ours GMACs"]
    assert gmacs.between(3.8, 3.95).all() and gmacs["SE_All"] > gmacs["ResNet-50"]
    assert (table["paper top-1 err (%)"] == list(paper.TABLE13_STAGES["top1_err"])).all()


def test_table10_measured_follows_the_reduction_ratio():
    with torch.device("meta"):  # only parameter counts are read
        table = paper.table10_measured("legacy_seresnet50")
    assert table["reduction r"].tolist() == [2, 4, 8, 16, 32]
    ours = table["ours params (M)"]
    assert ours.is_monotonic_decreasing
    assert (ours - table["paper params (M)"]).abs().max() < 0.1
    # SE adds 2 C^2 / r weights per block (plus biases): halving r roughly doubles what SE adds to ResNet-50
    se = ours - 25.557032
    assert se[1] / se[2] == pytest.approx(2.0, rel=0.01)
