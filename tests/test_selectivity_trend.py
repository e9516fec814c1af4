"""The selectivity depth trend: constant blocks left out (and named), exact p up to 10 blocks, chance levels per
block, and no preferred class for a channel whose class means tie."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from senet_viz.analysis import channels
from senet_viz.analysis.stats import GateStats
from senet_viz.plots.channels import selectivity_depth

CLASSES = [f"c{k}" for k in range(5)]
LABELS = np.repeat(np.arange(5), 12)


def tuned_stats(n_blocks: int, constant: dict[int, float] | None = None, seed: int = 0) -> GateStats:
    """``n_blocks`` blocks of 8 channels, channel c tuned to class c % 5 more strongly with depth; block i in
    ``constant`` has every gate equal to its value instead."""
    rng = np.random.default_rng(seed)
    blocks = [{"name": f"SE_{i + 1}_1", "stage": i + 1, "channels": 8} for i in range(n_blocks)]
    stats = GateStats.for_blocks("toy", blocks, CLASSES)
    for i, b in enumerate(blocks):
        if i in (constant or {}):
            gates = np.full((len(LABELS), 8), constant[i])
        else:
            tuned = np.where(LABELS[:, None] == np.arange(8)[None, :] % 5, 0.5 + 0.04 * (i + 1), 0.5)
            gates = np.clip(tuned + rng.normal(0, 0.01, tuned.shape), 0, 1)
        stats.update(b["name"], gates, LABELS)
    return stats


def test_switched_off_and_constant_blocks_are_left_out_and_named():
    # block 0 all ones (high selectivity 0 would flatter a rise), block 6 constant 0.5
    stats = tuned_stats(7, constant={0: 1.0, 6: 0.5})
    summary = channels.block_summary(stats)
    assert {"all_std_max", "gate_min", "gate_max"} <= set(summary.columns)
    trend = channels.depth_trend(summary)
    assert trend["left_out"] == [{"block": "SE_1_1", "reason": "switched off (every gate = 1)"},
                                 {"block": "SE_7_1", "reason": "constant (scales channels by s=0.500)"}]
    assert trend["n_blocks"] == 5 and trend["rho"] == pytest.approx(1.0)
    assert trend["p_value"] == pytest.approx(2 / 120) and trend["verdict"] == "rises with depth"
    assert "chance" not in trend  # keys unchanged without a chance table
    assert channels.left_out_text(trend) == ("left out (gate never changes): SE_1_1 switched off (every gate = 1), "
                                             "SE_7_1 constant (scales channels by s=0.500)")
    subtitle = selectivity_depth(summary, trend).layout.title.subtitle.text
    assert "left out of ρ: SE_1_1, SE_7_1 (constant gate)" in subtitle
    # a summary without the constancy columns (older tables): nothing can be left out
    old = channels.depth_trend(summary.drop(columns=["all_std_max", "gate_min", "gate_max"]))
    assert old["left_out"] == [] and old["n_blocks"] == 7


def test_three_blocks_never_reach_significance_and_nine_blocks_get_the_exact_p():
    three = channels.depth_trend(channels.block_summary(tuned_stats(3)))
    assert three["rho"] == pytest.approx(1.0) and three["p_value"] == pytest.approx(2 / 6)
    assert three["verdict"] == "no significant trend with depth"
    assert channels.EXACT_MAX == 10  # exact up to 10 blocks; 9 here keeps the test fast (9! orders)
    summary = pd.DataFrame({"block": [f"b{i}" for i in range(9)], "order": range(9),
                            "selectivity_median": np.linspace(0.1, 0.5, 9)})
    nine = channels.depth_trend(summary)
    assert nine["p_value"] == pytest.approx(2 / 362880, rel=1e-9)  # 2 of the 9! orders are as extreme, never 0


def test_a_chance_table_gives_each_block_its_chance_level_and_the_trend_beyond_it():
    summary = pd.DataFrame({"block": [f"b{i}" for i in range(6)], "order": range(6),
                            "selectivity_median": [0.10, 0.20, 0.30, 0.40, 0.50, 0.60]})
    # the chance level rises as fast as the observed values: the rise is the gate distribution, not tuning
    chance = pd.DataFrame({"block": summary["block"],
                           "selectivity_median_chance": [0.05, 0.16, 0.27, 0.38, 0.49, 0.60],
                           "selectivity_median_above_chance": [True, False, False, False, False, False]})
    trend = channels.depth_trend(summary, chance=chance)
    assert trend["verdict"] == "rises with depth"
    assert trend["chance"]["b0"] == pytest.approx(0.05) and trend["above_chance"]["b0"] is True
    assert trend["n_above_chance"] == 1
    assert trend["excess_rho"] == pytest.approx(-1.0) and trend["excess_verdict"] == "falls with depth"


def test_no_preferred_class_when_the_class_means_tie():
    rng = np.random.default_rng(1)
    stats = GateStats.for_blocks("toy", [{"name": "SE_1_1", "stage": 1, "channels": 3}], CLASSES)
    gates = np.column_stack([np.full(len(LABELS), 0.5),  # constant: every class mean ties
                             np.where(LABELS == 2, 0.9, 0.3) + rng.normal(0, 0.01, len(LABELS)),
                             np.where(LABELS < 2, 0.9, 0.3)])  # classes 0 and 1 tie at the top
    stats.update("SE_1_1", gates, LABELS)
    table = channels.channel_table(stats, "SE_1_1")
    assert table["preferred_class"].isna().tolist() == [True, False, True] and table.at[1, "preferred_class"] == "c2"
    assert [channels.preferred_text(v) for v in table["preferred_class"]][0] == "none (class means tie)"
    assert table["preferred_index"].tolist() == [-1, 2, -1] and table["preferred_count"].tolist() == [0, 12, 0]
    assert channels.block_summary(stats)["preferred_classes"].tolist() == [1]
