"""Chance levels and bootstrap intervals (senet_viz.analysis.chance) and the exact Spearman p (correlation)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from senet_viz.analysis import channels
from senet_viz.analysis.chance import INDICES, ChanceOptions, chance_table, class_mean_intervals, exact_chance
from senet_viz.analysis.chance_null import bootstrap_sums, permutation_sums, prepare_block, replicate_indices
from senet_viz.analysis.correlation import spearman
from senet_viz.analysis.stats import GateStats

CLASS_INDICES = ("eta2", "spread", "cross_class_corr", "selectivity_median")


def _gates(rng: np.random.Generator, labels: np.ndarray, widths: list[int], effect: float = 0.0) -> dict:
    """Random gates in [0, 1] per block; ``effect`` > 0 adds a class-dependent offset per channel."""
    out = {}
    for i, c in enumerate(widths):
        tuning = rng.normal(0, 1, (labels.max() + 1, c))
        out[f"SE_{i}"] = np.clip(0.5 + 0.15 * rng.normal(0, 1, (len(labels), c)) + effect * tuning[labels], 0, 1)
    return out


def _stats(gates: dict, labels: np.ndarray) -> GateStats:
    blocks = [{"name": n, "stage": 2, "channels": g.shape[1]} for n, g in gates.items()]
    stats = GateStats.for_blocks("toy", blocks, [f"c{k}" for k in range(labels.max() + 1)])
    stats.update_all(gates, labels)
    return stats


def test_observed_values_equal_the_statistics_indices_and_block_summary():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(6), [2, 3, 4, 4, 5, 7]))  # unequal class sizes
    gates = _gates(rng, labels, [5, 8, 12], effect=0.1)
    gates["SE_1"] = gates["SE_1"].astype(np.float16)  # any float dtype
    table = chance_table(gates, labels, options=ChanceOptions(permutations=19, bootstrap=10))
    stats = _stats({k: v.astype(np.float64) for k, v in gates.items()}, labels)
    ind, summary = stats.indices(), channels.block_summary(stats)
    assert table["block"].tolist() == list(gates)
    for x in ("eta2", "spread", "cross_class_corr", "saturation"):
        np.testing.assert_allclose(table[x], ind[x], rtol=0, atol=1e-9)
    np.testing.assert_allclose(table["selectivity_median"], summary["selectivity_median"], rtol=0, atol=1e-9)
    assert (table["n_images"] == 25).all() and (table["min_class_count"] == 2).all()
    assert (table["max_class_count"] == 7).all() and (table["cannot_tell"] == "").all()
    # The replicate formulas on the identity permutation and on unit weights give the observed values.
    data = prepare_block(gates["SE_2"], np.arange(len(labels)), labels, 0.9)
    same = replicate_indices(*permutation_sums(data, np.arange(len(labels))[None]), data.mean, True, 0.9)
    ones = replicate_indices(*bootstrap_sums(data, np.ones((1, len(labels)), np.float32)), data.mean, True, 0.9)
    for x in INDICES:
        assert same[x][0] == pytest.approx(data.observed[x], rel=1e-5, abs=1e-7)
        assert ones[x][0] == pytest.approx(data.observed[x], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("n_blocks", [3, 5, 8])
def test_no_class_effect_stays_within_the_null_band(n_blocks):
    rng = np.random.default_rng(n_blocks)
    labels = np.repeat(np.arange(8), 5)
    gates = _gates(rng, labels, [6 + 2 * i for i in range(n_blocks)])
    options = ChanceOptions(permutations=199, bootstrap=50, seed=1)
    table = chance_table(gates, labels, options=options)
    assert (table["cannot_tell"] == "").all() and (table["n_permutations"] == 199).all()
    inside = [(table[f"{x}_null_lo"] <= table[x]) & (table[x] <= table[f"{x}_null_hi"]) for x in CLASS_INDICES]
    share = float(np.mean(np.concatenate(inside)))
    assert share >= 0.85  # this seed's outcome (a 95% band: about 5% outside by chance)
    assert table[[f"{x}_above_chance" for x in CLASS_INDICES]].to_numpy().sum() <= max(1, n_blocks * 4 // 10)
    # Always true: the null mean of eta2 is its exact expectation (K - 1) / (N - 1), within 6 Monte Carlo
    # standard errors (the null's sd taken from its 95% band).
    np.testing.assert_allclose(table["eta2_chance_exact"], 7 / 39)
    sd = (table["eta2_null_hi"] - table["eta2_null_lo"]) / 3.92
    assert ((table["eta2_chance"] - table["eta2_chance_exact"]).abs() <= 6 * sd / np.sqrt(199)).all()
    assert ((table[[f"{x}_p" for x in CLASS_INDICES]] >= 1 / 200).all()).all()
    for x in INDICES:  # every interval holds a value and is ordered
        assert (table[f"{x}_ci_lo"] <= table[f"{x}_ci_hi"]).all()
    assert table["saturation_p"].isna().all() and not table["saturation_above_chance"].any()


@pytest.mark.parametrize("n_blocks", [3, 5])
def test_one_image_per_class_cannot_tell(n_blocks):
    rng = np.random.default_rng(3)
    labels = np.arange(12)
    table = chance_table(_gates(rng, labels, [6] * n_blocks), labels, options=ChanceOptions(bootstrap=20))
    assert (table["cannot_tell"] == "one image per class").all()
    assert table["eta2"].isna().all() and table["eta2_chance_exact"].isna().all()
    assert table["spread"].notna().all() and table["spread_p"].isna().all()
    assert not table[[f"{x}_above_chance" for x in INDICES]].to_numpy().any()
    assert (table["n_permutations"] == 0).all()


def test_planted_class_effect_is_found():
    rng = np.random.default_rng(4)
    labels = rng.permutation(np.repeat(np.arange(6), 6))
    table = chance_table(_gates(rng, labels, [10, 16], effect=0.3), labels,
                         options=ChanceOptions(permutations=99, bootstrap=100))
    for x in ("eta2", "spread", "selectivity_median"):
        np.testing.assert_allclose(table[f"{x}_p"], 1 / 100)
        assert table[f"{x}_above_chance"].all()
        assert (table[f"{x}_ci_lo"] > table[f"{x}_null_hi"]).all()  # the interval lies above chance
    # Class patterns differ: the cross-class correlation falls below its null band.
    assert (table["cross_class_corr"] < table["cross_class_corr_null_lo"]).all()


def test_constant_block_is_nan_not_an_error():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), 3)
    gates = {"SE_a": np.full((12, 5), 0.5, np.float32), "SE_b": rng.random((12, 5)),
             "SE_c": np.ones((12, 4))}
    table = chance_table(gates, labels, options=ChanceOptions(permutations=19, bootstrap=10)).set_index("block")
    for name in ("SE_a", "SE_c"):
        assert table.loc[name, "cannot_tell"] == "constant block"
        assert all(np.isnan(table.loc[name, x]) and not table.loc[name, f"{x}_above_chance"]
                   for x in CLASS_INDICES)
    assert table.loc["SE_a", "saturation"] == 0 and table.loc["SE_c", "saturation"] == 1
    assert table.loc["SE_c", "saturation_ci_lo"] == 1
    assert table.loc["SE_b", "cannot_tell"] == "" and np.isfinite(table.loc["SE_b", "eta2_p"])


def test_data_without_classes_to_compare():
    rng = np.random.default_rng(6)
    gates = {"SE_a": rng.random((6, 3))}
    none = chance_table(gates, np.full(6, -1))
    assert none["cannot_tell"].tolist() == ["no labelled images"] and none["n_images"].tolist() == [0]
    one = chance_table(gates, np.r_[0, 0, 0, -1, -1, 0])
    assert one["cannot_tell"].tolist() == ["fewer than 2 classes"] and np.isnan(one["eta2"].iloc[0])
    assert one["n_images"].tolist() == [4]
    few = chance_table(gates, np.r_[0, 0, 0, 1, 2, 3], options=ChanceOptions(permutations=9, bootstrap=5))
    assert few["cannot_tell"].tolist() == ["fewer than 2 classes with 2+ images"]


def test_seeded_and_subsampled():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(10), 4)
    gates = _gates(rng, labels, [6, 9])
    options = ChanceOptions(permutations=49, bootstrap=30, seed=3)
    a, b = chance_table(gates, labels, options=options), chance_table(gates, labels, options=options)
    pd.testing.assert_frame_equal(a, b)
    other = chance_table(gates, labels, options=ChanceOptions(permutations=49, bootstrap=30, seed=4))
    assert not np.allclose(a["eta2_chance"], other["eta2_chance"])
    sub = chance_table(gates, labels, options=ChanceOptions(permutations=49, bootstrap=30, max_images=22))
    assert (sub["n_images"] == 20).all() and (sub["n_classes"] == 5).all()  # whole classes of 4
    assert (sub["min_class_count"] == 4).all()
    only = chance_table(gates, labels, blocks=["SE_1"])
    assert only["block"].tolist() == ["SE_1"]


def test_exact_chance_from_the_statistics():
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(30), 4)
    gates = _gates(rng, labels, [12, 20])
    exact = exact_chance(_stats(gates, labels))
    table = chance_table(gates, labels, options=ChanceOptions(permutations=199, bootstrap=0))
    assert exact["block"].tolist() == list(gates)
    np.testing.assert_allclose(exact["eta2_chance_exact"], table["eta2_chance_exact"])
    # sqrt of the expected square: at or just above the permutation mean of the spread.
    ratio = exact["spread_chance"] / table["spread_chance"]
    assert ((ratio > 0.98) & (ratio < 1.05)).all()
    assert table["eta2_ci_lo"].isna().all() and (table["n_bootstrap"] == 0).all()
    single = exact_chance(_stats({"SE_0": rng.random((5, 3))}, np.arange(5)))
    assert np.isnan(single["eta2_chance_exact"].iloc[0]) and np.isfinite(single["spread_chance"].iloc[0])


def test_class_mean_intervals():
    rng = np.random.default_rng(9)
    labels = np.r_[np.repeat([0, 1], 20), 2, -1]
    gates = rng.random((len(labels), 4))
    lo, hi = class_mean_intervals(gates, labels, [1, 2, 0], ChanceOptions(bootstrap=200))
    assert lo.shape == hi.shape == (3, 4)
    assert np.isnan(lo[1]).all() and np.isnan(hi[1]).all()  # one image
    for row, cls in ((0, 1), (2, 0)):
        mean = gates[labels == cls].mean(axis=0)
        assert (lo[row] < mean).all() and (mean < hi[row]).all()
    lo2, _ = class_mean_intervals(gates, labels, [1, 2, 0], ChanceOptions(bootstrap=200))
    np.testing.assert_array_equal(lo, lo2)


# ------------------------------------------------------------------------------------------ spearman


def test_three_pairs_can_never_show_a_trend():
    for y in itertools.product(range(3), repeat=3):  # every order, ties included
        rho, p = spearman([0, 1, 2], y)
        assert np.isnan(rho) or p >= 1 / 6
    assert spearman([0, 1, 2], [1, 2, 3])[1] == pytest.approx(1 / 3)


@pytest.mark.parametrize(("x", "y"), [([1, 2, 2, 3, 5, 5], [2, 1, 1, 4, 3, 3]), ([0, 1, 2, 3, 4], [0, 2, 1, 4, 3]),
                                      ([3, 1, 2, 2, 5, 4, 0], [1, 1, 1, 2, 2, 3, 0])])
def test_exact_p_equals_a_brute_force_count(x, y):
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    obs = np.corrcoef(rx, ry)[0, 1]
    shuffled = ry[np.array(list(itertools.permutations(range(len(x)))))]  # every order, one per row
    cx, cy = rx - rx.mean(), shuffled - shuffled.mean(axis=1, keepdims=True)
    null = cy @ cx / np.sqrt((cx @ cx) * (cy * cy).sum(axis=1))
    count = int((np.abs(null) >= abs(obs) - 1e-12).sum())
    rho, p = spearman(x, y)
    assert rho == pytest.approx(obs) and p == pytest.approx(count / len(null))


def test_monte_carlo_p_is_never_zero():
    x = np.arange(15)
    rho, p = spearman(x, x, permutations=999, exact_max=10)
    assert rho == pytest.approx(1) and p == pytest.approx(1 / 1000)
    assert np.isnan(spearman(x, np.ones(15))[0]) and np.isnan(spearman(x, x, permutations=0)[1])


def test_the_caption_names_the_permutations_of_a_permuted_block_when_the_first_block_is_constant():
    from senet_viz.plots.depth import chance_caption

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 3)
    gates = {"SE_2_1": np.full((6, 4), 0.5), "SE_3_1": rng.random((6, 4))}
    table = chance_table(gates, labels, options=ChanceOptions(permutations=9, bootstrap=5))
    assert list(table["n_permutations"]) == [0, 9] and table["cannot_tell"].iloc[0] == "constant block"
    assert "of 9 label permutations" in chance_caption(table)
    assert "no chance band (constant block)" in chance_caption(table.iloc[:1])
