"""Library functions the pages draw from (no Streamlit): statistics from a kept result, where an image is compared,
the image-vs-class table, bounded export tables, a result's tables, and histogram quantiles at their edges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from senet_viz.analysis.stats import GateStats
from senet_viz.analysis.stats_accumulate import ALL, MAX_DETAIL_CLASSES
from senet_viz.analysis.stats_views import hist_quantile
from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.inference.run import Result

BLOCKS = [{"name": "SE_2_1", "stage": 2, "channels": 4}, {"name": "SE_5_1", "stage": 5, "channels": 6}]
CLASSES = ["cat", "dog", "fox"]


def make_result(n: int = 12, seed: int = 0) -> Result:
    """A pass over ``n`` images: labels cycle over the classes (one unlabelled image), predictions are shifted."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    labels[-1] = -1
    pred = (labels + (np.arange(n) % 4 == 0)) % 3
    top5 = np.stack([pred, (pred + 1) % 3, (pred + 2) % 3], axis=1)
    probs = np.tile(np.array([0.7, 0.2, 0.1], np.float32), (n, 1))
    gates = {b["name"]: rng.uniform(0, 1, (n, b["channels"])).astype(np.float16) for b in BLOCKS}
    return Result(model="toy", keys=[f"k{i}.png" for i in range(n)], names=[f"k{i}.png" for i in range(n)],
                  labels=labels.astype(np.int64), label_names=[CLASSES[k] if k >= 0 else None for k in labels],
                  pred=pred.astype(np.int64), top5=top5.astype(np.int64), top5_prob=probs, gates=gates)


# ------------------------------------------------------------------------------------------- GateStats.from_result


@pytest.mark.parametrize("by", ["labels", "prediction"])
def test_statistics_from_a_kept_result_equal_the_streamed_ones(by):
    result = make_result()
    stats = GateStats.from_result(result, BLOCKS, CLASSES, by=by)
    streamed = GateStats.for_blocks("toy", BLOCKS, CLASSES)
    labels = result.labels if by == "labels" else result.pred
    for name, gates in result.gates.items():
        streamed.update(name, gates, labels)
    assert stats.model == "toy" and stats.class_names == CLASSES
    pd.testing.assert_frame_equal(stats.frame(), streamed.frame())
    pd.testing.assert_frame_equal(stats.indices(), streamed.indices())
    counts = stats.class_table().set_index("class")["count"]
    expected = np.bincount(labels[labels >= 0], minlength=3)
    assert [int(counts[c]) for c in CLASSES] == list(expected) and int(counts[ALL]) == result.n


def test_statistics_from_a_result_need_its_gates_and_a_known_grouping():
    result = make_result()
    with pytest.raises(ValueError, match="keep_gates"):
        GateStats.from_result(result, [*BLOCKS, {"name": "SE_5_2", "stage": 5, "channels": 6}], CLASSES)
    with pytest.raises(ValueError, match="by must be one of"):
        GateStats.from_result(result, BLOCKS, CLASSES, by="cluster")


# ------------------------------------------------------------------------------------------- one image


def stats_with(counts: dict[str, int], detail_classes=None) -> GateStats:
    stats = GateStats.for_blocks("toy", BLOCKS, list(counts), detail_classes=detail_classes)
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(len(counts)), list(counts.values()))
    for b in BLOCKS:
        stats.update(b["name"], rng.uniform(0, 1, (len(labels), b["channels"])), labels)
    return stats


def test_where_an_image_is_compared():
    stats = stats_with({"cat": 5, "dog": 1, "fox": 3})
    place = stats.place_image("cat")
    assert (place.group, place.reference, place.within, place.single) == ("cat", "cat", "cat", False)
    assert place.counts == {ALL: 9, "cat": 5, "dog": 1, "fox": 3}
    place = stats.place_image("dog")  # a one-image class: ranked among all images
    assert (place.group, place.reference, place.within, place.single) == ("dog", ALL, ALL, True)
    for unknown in (None, "wolf"):
        place = stats.place_image(unknown)
        assert (place.group, place.reference, place.within, place.single) == (ALL, ALL, ALL, False)
    # per-channel histograms not kept for the class: its mean is drawn, percentiles are taken among all images
    place = stats_with({"cat": 5, "dog": 1, "fox": 3}, detail_classes=[]).place_image("fox")
    assert (place.group, place.reference, place.within) == ("fox", "fox", ALL)


def test_image_against_its_class_block_by_block():
    stats = stats_with({"cat": 5, "dog": 1, "fox": 3})
    gates = {"SE_2_1": np.array([0.1, 0.2, 0.3, 0.4]), "SE_5_1": np.full(6, 0.9)}
    table = stats.image_vs_class(gates, "cat")
    assert list(table.columns) == ["block", "mean gate (this image)", "mean gate (cat)"]
    assert list(table["block"]) == ["SE_2_1", "SE_5_1"]
    np.testing.assert_allclose(table["mean gate (this image)"], [0.25, 0.9])
    _, _, means = stats.class_means("SE_5_1", ["cat"])
    assert table["mean gate (cat)"].iloc[1] == pytest.approx(means.mean())
    assert list(stats.image_vs_class(gates, ALL, ["SE_5_1"])["block"]) == ["SE_5_1"]


def test_largest_classes_and_bounded_tables():
    stats = stats_with({"cat": 2, "dog": 5, "fox": 2, "owl": 5})
    assert stats.largest_classes(3) == ["dog", "owl", "cat"]  # ties: lower class index first
    tables = stats.tables()
    assert list(tables) == ["channel_stats"] and set(tables["channel_stats"]["class"]) == {ALL, "cat", "dog", "fox",
                                                                                           "owl"}
    many = MAX_DETAIL_CLASSES + 6
    big = stats_with({f"c{k}": 1 + k % 3 for k in range(many)})
    tables = big.tables()
    assert list(tables) == ["channel_stats", "class_block_stats"]
    assert set(tables["channel_stats"]["class"]) == {ALL}  # no class x channel rows past the bound
    assert len(tables["class_block_stats"]) == len(BLOCKS) * (many + 1)
    assert "hist" not in tables["class_block_stats"].columns


# ------------------------------------------------------------------------------------------- a result's tables


def test_a_results_predictions_top5_and_relabelling():
    result = make_result()
    predictions = result.predictions(CLASSES)
    assert list(predictions.columns) == ["key", "name", "label", "label_name", "pred", "pred_name"]
    assert list(predictions["pred_name"]) == [CLASSES[p] for p in result.pred]
    top5 = result.top5_frame("k4.png", CLASSES)
    assert list(top5["rank"]) == [1, 2, 3] and top5["class"].iloc[0] == CLASSES[result.pred[4]]
    np.testing.assert_allclose(top5["probability"], [0.7, 0.2, 0.1])
    items = [ImageItem(k, k, None, None, data=b"") for k in reversed(result.keys)]
    items.append(ImageItem("extra", "x", 0, "cat", data=b""))  # not in the result: left out
    images = ImageSet(items, [], ["only"])
    relabelled = result.labelled_by_prediction(images, CLASSES)
    assert [it.key for it in relabelled.items] == result.keys  # the result's images, in its order
    assert [it.label for it in relabelled.items] == list(result.pred)
    assert [it.label_name for it in relabelled.items] == [CLASSES[p] for p in result.pred]
    assert relabelled.class_names == CLASSES and relabelled.skipped == []


# ------------------------------------------------------------------------------------------- histogram quantiles


def test_hist_quantile_edges():
    # 10 bins over [0, 1]; values only in bins 3..5 (bin 4 empty): the support is [0.3, 0.6]
    hist = np.zeros(10)
    hist[3], hist[5] = 2, 2
    q = hist_quantile(hist, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(q, [0.3, 0.35, 0.4, 0.55, 0.6])
    # q = 0 and q = 1 are the support's edges, not 0 and 1; the empty bin between never holds a quantile
    assert hist_quantile(hist, 0.0) == pytest.approx(0.3) and hist_quantile(hist, 1.0) == pytest.approx(0.6)
    # mass in the first and last bins: the edges are 0 and 1
    np.testing.assert_allclose(hist_quantile([1, 0, 0, 1], [0, 1]), [0.0, 1.0])
    # no count at all: NaN, also within a batch of histograms
    assert np.isnan(hist_quantile(np.zeros(5), 0.5))
    batch = np.stack([np.zeros(4), [0, 4, 0, 0]])
    out = hist_quantile(batch, [0, 0.5, 1])
    assert out.shape == (2, 3) and np.isnan(out[0]).all()
    np.testing.assert_allclose(out[1], [0.25, 0.375, 0.5])
    assert hist_quantile(np.ones((2, 3, 4)), 0.5).shape == (2, 3)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        hist_quantile(hist, 1.5)


def test_hist_quantile_agrees_with_numpy_within_a_bin_at_every_q():
    rng = np.random.default_rng(5)
    values = rng.beta(2, 5, 5000)
    hist, _ = np.histogram(values, bins=40, range=(0, 1))
    qs = np.linspace(0, 1, 21)
    ours = hist_quantile(hist, qs)
    assert np.all(np.abs(ours - np.quantile(values, qs)) <= 1 / 40)
    assert np.all(np.diff(ours) >= 0)
