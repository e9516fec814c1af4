"""Streaming gate statistics and indices on constructed gates (formulas in senet_viz/analysis/stats.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from senet_viz.analysis.stats import GateStats
from senet_viz.analysis.stats_views import hist_quantile

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
    gates = np.vstack([np.clip(c + rng.normal(0, 0.01, size=(40, 8)), 0, 1) for c in centres])
    labels = np.repeat(np.arange(3), 40)
    for k in range(3):
        stats.update("SE_2_1", gates[labels == k], labels[labels == k])
    r = row(stats, "SE_2_1")
    assert r["specificity"] > 0.95
    # every index equals the module doc's formula computed straight from the 120 gate vectors
    for key, value in brute_indices(gates, labels).items():
        assert r[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


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
    hist = stats.hist("SE_2_1", "all")
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


def test_state_round_trip_is_exact_and_shares_no_memory():
    rng = np.random.default_rng(11)
    stats = make()
    stats.update("SE_2_1", rng.uniform(size=(50, 8)), rng.integers(-1, 3, 50))
    stats.update("SE_5_1", rng.uniform(size=(50, 16)), rng.integers(0, 2, 50))
    state = stats.state()
    assert not state["accumulators"]["SE_2_1"]["means"].flags.writeable  # views, read-only
    copy = GateStats.from_state(state)
    pd.testing.assert_frame_equal(copy.frame(), stats.frame())
    pd.testing.assert_frame_equal(copy.indices(), stats.indices())
    assert copy.classes() == stats.classes() and copy.detailed_classes() == stats.detailed_classes()
    copy.update("SE_2_1", rng.uniform(size=(10, 8)), np.zeros(10))  # the copy moves on alone
    assert copy.n_images("SE_2_1") == stats.n_images("SE_2_1") + 10
    bad = stats.state()
    bad["accumulators"]["SE_5_1"] = {**bad["accumulators"]["SE_5_1"], "means": np.zeros((2, 3))}
    with pytest.raises(ValueError, match="means of shape"):
        GateStats.from_state(bad)


def test_large_batches_and_reserved_rows_give_the_same_statistics(monkeypatch):
    from senet_viz.analysis import stats_accumulate

    gates, labels = many_classes(n=600, classes=40)
    small = feed(GateStats.for_blocks("toy", WIDE, [f"c{k}" for k in range(40)]), gates, labels, batch=600)
    monkeypatch.setattr(stats_accumulate, "UPDATE_BYTES", 8 * 40 * 7)  # 7 rows per update step on SE_3_1
    sliced = GateStats.for_blocks("toy", WIDE, [f"c{k}" for k in range(40)])
    sliced.reserve(labels)
    assert all(a.rows == len(set(labels[labels >= 0])) for a in sliced.accumulators.values())
    feed(sliced, gates, labels, batch=600)
    pd.testing.assert_frame_equal(sliced.indices(), small.indices(), rtol=1e-10)
    pd.testing.assert_frame_equal(sliced.frame(hist=False), small.frame(hist=False), rtol=1e-10)
    assert sliced.nbytes() <= small.nbytes()


def test_memory_is_independent_of_image_count():
    stats = make()
    rng = np.random.default_rng(5)
    sizes = []
    total, squares, counts = np.zeros(8), np.zeros(8), np.zeros(3, int)
    for n in (1_000, 10_000):
        for _ in range(n // 100):
            gates, labels = rng.uniform(size=(100, 8)), rng.integers(0, 3, 100)
            stats.update("SE_2_1", gates, labels)
            total += gates.sum(axis=0)
            squares += (gates ** 2).sum(axis=0)
            counts += np.bincount(labels, minlength=3)
        sizes.append(stats.nbytes())
    assert sizes[0] == sizes[1]
    # fixed memory, yet exact moments over all 11,000 images (against sums kept beside it)
    frame = stats.frame(blocks=["SE_2_1"]).set_index(["class", "channel"])
    mean = total / 11_000
    np.testing.assert_allclose(frame.loc["all", "mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(frame.loc["all", "std"], np.sqrt((squares - 11_000 * mean ** 2) / (11_000 - 1)),
                               rtol=1e-8)
    assert [frame.loc[c, "count"].iloc[0] for c in CLASSES] == counts.tolist() and counts.sum() == 11_000
    # the layout of the module doc: "all" (C (8 bins + 32)), 3 classes with means/M2 (16 C) and sketches
    # (8 bins + 40: counts, index, min, max, sum), per-channel histograms of the 3 detailed classes (C (8 bins + 16))
    block = 8 * (8 * 50 + 32) + 3 * (16 * 8 + 8 * 50 + 40) + 3 * 8 * (8 * 50 + 16)
    other = 16 * (8 * 50 + 32) + 0  # SE_5_1 never updated: its "all" accumulators only
    assert sizes[0] == block + other


def test_bad_shapes_and_unknown_blocks_are_reported():
    stats = make()
    with pytest.raises(ValueError, match="expected \\(N, 8\\)"):
        stats.update("SE_2_1", np.zeros((3, 5)), np.zeros(3))
    with pytest.raises(KeyError, match="unknown block"):
        stats.update("SE_9_9", np.zeros((3, 8)), np.zeros(3))
    other = GateStats.for_blocks("toy", BLOCKS[:1], CLASSES)
    with pytest.raises(ValueError, match="different blocks"):
        stats.merge(other)


# ------------------------------------------------------------------------------------------------ at scale

MANY = 300  # more classes than the auto policy keeps per-channel histograms for (64)
WIDE = [{"name": "SE_2_1", "stage": 2, "channels": 24}, {"name": "SE_3_1", "stage": 3, "channels": 40}]


def many_classes(n: int = 3000, seed: int = 7, classes: int = MANY) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, classes, n)  # a few unlabelled images too
    centres = {b["name"]: rng.uniform(0.2, 0.8, (classes + 1, b["channels"])) for b in WIDE}
    gates = {b["name"]: np.clip(centres[b["name"]][labels] + rng.normal(0, 0.1, (n, b["channels"])), 0, 1)
             .astype(np.float16) for b in WIDE}
    return gates, labels


def feed(stats: GateStats, gates: dict[str, np.ndarray], labels: np.ndarray, rows=None, batch: int = 256) -> GateStats:
    rows = np.arange(len(labels)) if rows is None else rows
    for start in range(0, len(rows), batch):
        sel = rows[start:start + batch]
        for name, g in gates.items():
            stats.update(name, g[sel], labels[sel])
    return stats


def brute_indices(gates: np.ndarray, labels: np.ndarray, threshold: float = 0.9) -> dict:
    """The module doc's formulas, straight from every gate value with numpy."""
    g = gates.astype(np.float64)
    ks = np.unique(labels[labels >= 0])
    means = np.array([g[labels == k].mean(axis=0) for k in ks])
    n = np.array([(labels == k).sum() for k in ks], dtype=float)
    grand = (n[:, None] * means).sum(axis=0) / n.sum()
    between = (n[:, None] * (means - grand) ** 2).sum(axis=0) / n.sum()
    within = np.array([((g[labels == k] - means[i]) ** 2).sum(axis=0) for i, k in enumerate(ks)]).sum(axis=0) / n.sum()
    corr = np.corrcoef(means)
    total = g.mean(axis=0)
    return {"eta2": between.sum() / (between.sum() + within.sum()),
            "spread": means.std(axis=0).mean() / np.sqrt(grand * (1 - grand)).mean(),
            "cross_class_corr": corr[np.triu_indices(len(ks), 1)].mean(),
            "saturation": (total >= threshold).mean(), "share_near_0": (total <= 1 - threshold).mean(),
            "mean_gate": total.mean(), "mean_abs_1_minus_s": np.abs(1 - g).mean(),
            "all_std_max": g.std(axis=0, ddof=1).max(), "gate_min": g.min(), "gate_max": g.max(),
            "min_class_count": n.min(), "max_class_count": n.max(), "n_images": len(g), "n_classes": len(ks)}


def test_indices_equal_a_brute_force_numpy_computation():
    gates, labels = many_classes()
    stats = feed(GateStats.for_blocks("toy", WIDE, [f"c{k}" for k in range(MANY)]), gates, labels)
    indices = stats.indices().set_index("block")
    for b in WIDE:
        expected = brute_indices(gates[b["name"]], labels)
        got = indices.loc[b["name"]]
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        assert got["specificity"] == got["eta2"] and got["specificity_method"] == "eta2"
    # class means and within-class std per channel, against numpy
    labels_, counts, means = stats.class_means("SE_3_1", [5, "c7"])
    g = gates["SE_3_1"].astype(np.float64)
    assert labels_ == ["c5", "c7"] and list(counts) == [(labels == 5).sum(), (labels == 7).sum()]
    np.testing.assert_allclose(means, [g[labels == 5].mean(axis=0), g[labels == 7].mean(axis=0)], rtol=1e-12)
    np.testing.assert_allclose(stats.class_std("SE_3_1", ["c5"])[0], g[labels == 5].std(axis=0, ddof=1), rtol=1e-9)


def test_many_classes_keep_means_for_all_and_histograms_for_none():
    gates, labels = many_classes()
    stats = feed(GateStats.for_blocks("toy", WIDE, [f"c{k}" for k in range(MANY)]), gates, labels)
    assert stats.detailed_classes() == [] and len(stats.classes()) == MANY
    table = stats.class_table()
    assert table["detail"].tolist() == [True] + [False] * MANY  # "all" keeps its per-channel histograms
    assert stats.hist("SE_2_1", "c3") is None
    g = gates["SE_2_1"].astype(np.float64)
    expected_all = np.stack([np.histogram(g[:, c], bins=50, range=(0, 1))[0] for c in range(24)])
    np.testing.assert_array_equal(stats.hist("SE_2_1", "all"), expected_all)
    # the pooled per-class sketch: a histogram of every gate of the class, and its min / max
    pooled = stats.block_frame("SE_2_1", ["c3"]).set_index("class")
    values = g[labels == 3].ravel()
    np.testing.assert_array_equal(pooled.loc["c3", "hist"], np.histogram(values, bins=50, range=(0, 1))[0])
    assert pooled.loc["c3", "min"] == values.min() and pooled.loc["c3", "max"] == values.max()
    assert pooled.loc["c3", "mean"] == pytest.approx(values.mean()) and pooled.loc["c3", "count"] == (labels == 3).sum()
    assert pooled.loc["c3", "std"] == pytest.approx(values.std(ddof=1))
    # a bounded frame: the chosen blocks and classes only, with "all"; no histogram where none is kept
    frame = stats.frame(blocks=["SE_3_1"], classes=["c1", "c2"])
    assert len(frame) == 3 * 40 and set(frame["class"]) == {"all", "c1", "c2"}
    g3 = gates["SE_3_1"].astype(np.float64)
    for cls, rows in (("all", labels >= -1), ("c1", labels == 1), ("c2", labels == 2)):
        part = frame[frame["class"] == cls].sort_values("channel")
        np.testing.assert_allclose(part["mean"], g3[rows].mean(axis=0), rtol=1e-10)
        np.testing.assert_allclose(part["std"], g3[rows].std(axis=0, ddof=1), rtol=1e-8)
        assert (part["count"] == rows.sum()).all()
    some = frame[frame["class"] == "c1"]
    assert some["hist"].isna().all() and some["min"].isna().all()
    assert frame[frame["class"] == "all"]["hist"].map(len).eq(50).all()
    with pytest.raises(ValueError, match="valid classes"):
        stats.frame(classes=["zebra"])
    with pytest.raises(ValueError, match="valid blocks"):
        stats.frame(blocks=["SE_9_9"])


def test_auto_policy_keeps_histograms_up_to_the_cap_and_merges_exactly():
    gates, labels = many_classes(n=2000, classes=80)
    names = [f"c{k}" for k in range(80)]
    rows_a = np.flatnonzero(labels < 40)  # shard A: classes -1..39, shard B: 40..79
    rows_b = np.flatnonzero(labels >= 40)
    a = feed(GateStats.for_blocks("toy", WIDE, names), gates, labels, rows_a)
    b = feed(GateStats.for_blocks("toy", WIDE, names), gates, labels, rows_b)
    assert len(a.detailed_classes()) == 40 and len(b.detailed_classes()) == 40  # each under the cap of 64
    merged = a.merge(b)
    one = feed(GateStats.for_blocks("toy", WIDE, names), gates, labels)
    assert merged.detailed_classes() == one.detailed_classes() == []  # 80 classes in all: dropped, as in one pass
    x, y = one.frame(hist=False), merged.frame(hist=False)
    assert (x["count"].to_numpy() == y["count"].to_numpy()).all()
    np.testing.assert_allclose(x["mean"], y["mean"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(x["std"], y["std"], rtol=0, atol=1e-10)
    pd.testing.assert_frame_equal(one.indices(), merged.indices(), rtol=1e-9)
    p, q = one.block_frame(), merged.block_frame()
    assert all((h1 == h2).all() for h1, h2 in zip(p["hist"], q["hist"], strict=True))


def test_explicit_detail_classes_merge_exactly_and_incomplete_ones_are_dropped():
    gates, labels = many_classes()
    names = [f"c{k}" for k in range(MANY)]
    parts = []
    for rows in np.array_split(np.random.default_rng(0).permutation(len(labels)), 3):
        parts.append(feed(GateStats.for_blocks("toy", WIDE, names, detail_classes=["c3", 7]), gates, labels, rows))
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.detail_classes == (3, 7) and merged.detailed_classes() == [3, 7]
    g = gates["SE_3_1"].astype(np.float64)
    for k in (3, 7):
        expected = np.stack([np.histogram(g[labels == k, c], bins=50, range=(0, 1))[0] for c in range(40)])
        np.testing.assert_array_equal(merged.hist("SE_3_1", k), expected)
        rows = merged.frame(["SE_3_1"], [k])
        rows = rows[rows["class"] == f"c{k}"]
        np.testing.assert_array_equal(rows["min"], g[labels == k].min(axis=0))
        np.testing.assert_array_equal(np.stack(rows["hist"]), expected)
    # A part that saw class 3 without keeping its histograms makes the merged histogram incomplete: dropped.
    some = np.flatnonzero(labels == 3)[:2]
    other = feed(GateStats.for_blocks("toy", WIDE, names, detail_classes=[7]), gates, labels, some)
    merged.merge(other)
    assert merged.detailed_classes() == [7]
    assert merged.hist("SE_3_1", "c3") is None


def test_save_load_round_trip_of_the_large_layout(tmp_path):
    gates, labels = many_classes()
    stats = feed(GateStats.for_blocks("toy", WIDE, [f"c{k}" for k in range(MANY)], detail_classes=[11]),
                 gates, labels)
    stats.save(tmp_path / "s.parquet")
    back = GateStats.load(tmp_path / "s.parquet")
    assert back.detail_classes == (11,) and back.detailed_classes() == [11]
    assert back.classes() == stats.classes() and back.nbytes() <= stats.nbytes()
    pd.testing.assert_frame_equal(back.indices(), stats.indices())
    for b in WIDE:
        pd.testing.assert_frame_equal(back.frame(b["name"], [0, 11, 299]), stats.frame(b["name"], [0, 11, 299]))
        pd.testing.assert_frame_equal(back.block_frame(b["name"]), stats.block_frame(b["name"]))
    # a loaded file merges on: two copies double every count and histogram, keep the means
    twice = GateStats.load(tmp_path / "s.parquet").merge(back)
    np.testing.assert_array_equal(twice.class_table()["count"], 2 * stats.class_table()["count"])
    np.testing.assert_array_equal(twice.hist("SE_2_1", 11), 2 * stats.hist("SE_2_1", 11))
    np.testing.assert_allclose(twice.class_means("SE_2_1")[2], stats.class_means("SE_2_1")[2], rtol=1e-12)


def test_old_per_channel_files_still_load(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(8)
    gates, labels = rng.uniform(size=(40, 8)), rng.integers(0, 3, 40)
    stats = make()
    stats.update("SE_2_1", gates, labels)
    frame = stats.frame(blocks=["SE_2_1"])
    # the first layout: the tidy frame with an m2 column, sums of |1 - s| in the metadata
    acc = stats.accumulators["SE_2_1"]
    m2 = {-1: acc.m2, **{int(k): acc.m2s[r] for k, r in zip(acc.classes, range(acc.rows), strict=True)}}
    frame["m2"] = np.concatenate([m2[int(k)] for k in frame["class_index"].drop_duplicates()])
    sums = {f"SE_2_1|{k}": float(np.abs(1 - gates[labels == k] if k >= 0 else 1 - gates).sum()) for k in (-1, 0, 1, 2)}
    meta = {"model": "toy", "bins": 50, "class_names": CLASSES, "blocks": [{"name": "SE_2_1", "stage": 2, "order": 0,
                                                                           "channels": 8}], "sum_abs_1m": sums}
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({b"senet_viz_stats": json.dumps(meta).encode()}), tmp_path / "v1.pq")
    old = GateStats.load(tmp_path / "v1.pq")
    assert old.detailed_classes() == [0, 1, 2]
    pd.testing.assert_frame_equal(old.frame(), frame.drop(columns=["m2"]))
    pd.testing.assert_frame_equal(old.indices().drop(columns="mean_abs_1_minus_s"),
                                  stats.indices().iloc[:1].drop(columns="mean_abs_1_minus_s"))


def test_parquet_extract_is_streamed_into_the_same_statistics(tmp_path):
    from types import SimpleNamespace

    from senet_viz.analysis.stats import stats_from_parquet
    from senet_viz.data.store import ExcitationWriter

    gates, labels = many_classes(n=1500)
    blocks = [SimpleNamespace(name=b["name"], path=f"layer{i}", stage=b["stage"], index=i, channels=b["channels"])
              for i, b in enumerate(WIDE)]
    names = [f"c{k}" for k in range(MANY)]
    with ExcitationWriter(tmp_path / "x.parquet", blocks, {"model": "toy", "class_names": names}) as writer:
        for start in range(0, 1500, 400):  # row groups of 400 images
            sl = slice(start, start + 400)
            n = len(labels[sl])
            writer.write(SimpleNamespace(keys=[str(i) for i in range(start, start + n)], names=["x"] * n,
                                         labels=labels[sl], label_names=[None] * n, pred=np.zeros(n, np.int64),
                                         gates={k: v[sl] for k, v in gates.items()}, n=n))
    streamed = stats_from_parquet(tmp_path / "x.parquet", chunk=128)
    one = feed(GateStats.for_blocks("toy", WIDE, names), gates, labels)
    pd.testing.assert_frame_equal(streamed.indices(), one.indices(), rtol=1e-9)
    np.testing.assert_allclose(streamed.class_means("SE_3_1")[2], one.class_means("SE_3_1")[2], rtol=0, atol=1e-12)


@pytest.mark.slow
def test_stats_and_figure_commands_on_many_classes(tmp_path, capsys):
    from senet_viz import cli
    gates, labels = many_classes()
    stats = feed(GateStats.for_blocks("toy", WIDE, [f"c{k}" for k in range(MANY)]), gates, labels)
    stats.save(tmp_path / "s.parquet")
    titles = {}
    for kind in ("fig6", "fig7", "distributions", "depth", "heatmap"):
        out = tmp_path / f"{kind}.html"
        assert cli.main(["figure", "--stats", str(tmp_path / "s.parquet"), "--kind", kind, "--out", str(out),
                         "--json"]) == 0
        titles[kind] = json.loads(capsys.readouterr().out)["title"]
        assert out.stat().st_size > 1_000_000
    # more than 16 classes: the line and distribution figures show the four largest, the heatmap every class
    sizes = pd.Series(labels[labels >= 0]).value_counts()
    largest = sizes.sort_index().sort_values(ascending=False, kind="stable").index[:4]
    for kind in ("fig6", "fig7", "distributions"):
        assert f"c{largest[0]} (n={sizes[largest[0]]})" in titles[kind], titles[kind]
    assert f"+{MANY - 8} more classes" in titles["heatmap"]
    assert cli.main(["figure", "--stats", str(tmp_path / "s.parquet"), "--kind", "fig7", "--classes", "zebra",
                     "--out", str(tmp_path / "x.html")]) == 2
    assert "valid classes" in capsys.readouterr().err
