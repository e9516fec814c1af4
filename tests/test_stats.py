"""Streaming gate statistics and indices on constructed gates (formulas in senet_viz/stats.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from senet_viz.stats import GateStats, hist_quantile

BLOCKS = [{"name": "SE_2_1", "stage": 2, "channels": 8}, {"name": "SE_5_1", "stage": 5, "channels": 16}]
CLASSES = ["a", "b", "c"]


def make(bins: int = 50) -> GateStats:
    return GateStats.for_blocks("toy", BLOCKS, CLASSES, bins=bins)


def row(stats: GateStats, block: str) -> dict:
    frame = stats.indices()
    return frame[frame["block"] == block].iloc[0].to_dict()


def test_identical_classes_have_zero_specificity():
    rng = np.random.default_rng(0)
    base = rng.uniform(size=(60, 8))
    stats = make()
    # Every class sees exactly the same gate vectors: no variance is explained by class.
    for k in range(3):
        stats.update("SE_2_1", base, np.full(60, k))
    r = row(stats, "SE_2_1")
    assert r["specificity_method"] == "eta2"
    assert r["specificity"] == pytest.approx(0.0, abs=1e-12)
    assert r["spread"] == pytest.approx(0.0, abs=1e-12)
    assert r["cross_class_corr"] == pytest.approx(1.0)


def test_separated_classes_have_high_specificity():
    rng = np.random.default_rng(1)
    stats = make()
    centres = [0.1, 0.5, 0.9]
    for k, c in enumerate(centres):
        gates = np.clip(c + rng.normal(0, 0.01, size=(40, 8)), 0, 1)
        stats.update("SE_2_1", gates, np.full(40, k))
    r = row(stats, "SE_2_1")
    assert r["specificity"] > 0.95
    assert r["n_classes"] == 3 and r["n_images"] == 120


def test_single_image_per_class_uses_spread_fallback():
    stats = make()
    # One image per class: eta^2 is undefined, the fallback measures the spread of class means.
    same = np.full((3, 8), 0.4)
    stats.update("SE_2_1", same, np.arange(3))
    assert row(stats, "SE_2_1")["specificity_method"] == "spread"
    assert row(stats, "SE_2_1")["specificity"] == pytest.approx(0.0)
    split = make()
    split.update("SE_2_1", np.array([[0.0] * 8, [1.0] * 8]), np.array([0, 1]))
    assert row(split, "SE_2_1")["specificity"] == pytest.approx(1.0)


def test_all_ones_gates_are_fully_saturated():
    stats = make()
    stats.update("SE_5_1", np.ones((30, 16)), np.zeros(30))
    r = row(stats, "SE_5_1")
    assert r["saturation"] == 1.0
    assert r["mean_abs_1_minus_s"] == 0.0
    assert r["share_near_0"] == 0.0
    half = make()
    half.update("SE_5_1", np.hstack([np.ones((30, 8)), np.full((30, 8), 0.05)]), np.zeros(30))
    r = row(half, "SE_5_1")
    assert r["saturation"] == pytest.approx(0.5)
    assert r["share_near_0"] == pytest.approx(0.5)
    assert r["mean_abs_1_minus_s"] == pytest.approx(0.5 * 0.95)


def test_merged_shards_equal_one_pass():
    rng = np.random.default_rng(2)
    gates = rng.uniform(size=(500, 16))
    labels = rng.integers(-1, 3, size=500)  # -1: unlabelled images count only in "all"
    one = make()
    one.update("SE_5_1", gates, labels)
    parts = []
    for chunk in np.array_split(np.arange(500), 4):
        part = make()
        part.update("SE_5_1", gates[chunk], labels[chunk])
        parts.append(part)
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    a, b = one.frame(), merged.frame()
    for col in ("count", "mean", "std", "min", "max"):
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.stack(a["hist"]), np.stack(b["hist"]))
    pd.testing.assert_frame_equal(one.indices(), merged.indices(), rtol=1e-9)
    # The all-group mean and std equal numpy's over every image.
    total = a[(a["class"] == "all")].sort_values("channel")
    np.testing.assert_allclose(total["mean"], gates.mean(axis=0))
    np.testing.assert_allclose(total["std"], gates.std(axis=0, ddof=1))


def test_histogram_quantiles_within_one_bin_of_numpy():
    rng = np.random.default_rng(3)
    bins = 50
    gates = rng.beta(2, 5, size=(2000, 8))
    stats = make(bins)
    stats.update("SE_2_1", gates, np.zeros(2000))
    hist = stats.acc[("SE_2_1", -1)].hist
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        ours = hist_quantile(hist, q)
        theirs = np.quantile(gates, q, axis=0)
        assert np.all(np.abs(ours - theirs) <= 1.0 / bins), (q, ours, theirs)


def test_save_load_round_trip_and_merge_after_load(tmp_path):
    rng = np.random.default_rng(4)
    stats = make()
    stats.update("SE_2_1", rng.uniform(size=(50, 8)), rng.integers(0, 3, 50))
    stats.update("SE_5_1", rng.uniform(size=(50, 16)), rng.integers(0, 3, 50))
    stats.save(tmp_path / "s.parquet")
    loaded = GateStats.load(tmp_path / "s.parquet")
    pd.testing.assert_frame_equal(loaded.indices(), stats.indices(), rtol=1e-12)
    # Exact merge state survives the round trip: merging a loaded copy doubles counts, keeps means.
    doubled = GateStats.load(tmp_path / "s.parquet").merge(loaded)
    a, b = stats.frame(), doubled.frame()
    np.testing.assert_array_equal(b["count"], 2 * a["count"])
    np.testing.assert_allclose(b["mean"], a["mean"])


def test_memory_is_independent_of_image_count():
    stats = make()
    rng = np.random.default_rng(5)
    for _ in range(20):
        stats.update("SE_2_1", rng.uniform(size=(100, 8)), rng.integers(0, 3, 100))
    sizes = {key: acc.hist.nbytes + acc.mean.nbytes for key, acc in stats.acc.items()}
    assert len(stats.acc) == 4  # "all" + 3 classes, however many batches
    assert all(v == 8 * 50 * 8 + 8 * 8 for v in sizes.values())


def test_bad_shapes_and_unknown_blocks_are_reported():
    stats = make()
    with pytest.raises(ValueError, match="expected \\(N, 8\\)"):
        stats.update("SE_2_1", np.zeros((3, 5)), np.zeros(3))
    with pytest.raises(KeyError, match="unknown block"):
        stats.update("SE_9_9", np.zeros((3, 8)), np.zeros(3))
    other = GateStats.for_blocks("toy", BLOCKS[:1], CLASSES)
    with pytest.raises(ValueError, match="different blocks"):
        stats.merge(other)
