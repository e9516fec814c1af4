"""The verdict against the paper's "role of excitation" claims, on constructed gate statistics (and one real net)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from senet_viz.analysis.paper import pick_classes
from senet_viz.analysis.stats import GateStats
from senet_viz.analysis.verdict import AGNOSTIC_SPREAD, GLOSSARY, INERT_STD, paper_verdict
from senet_viz.data.sources import ImageItem, ImageSet

NAMES = ["SE_2_1", "SE_3_1", "SE_4_1", "SE_5_1", "SE_5_2", "SE_5_3"]
BLOCKS = [{"name": n, "stage": int(n.split("_")[1]), "channels": 16} for n in NAMES]
CLASSES = ["a", "b", "c"]
N = 30  # images per class


def make(blocks=BLOCKS) -> GateStats:
    return GateStats.for_blocks("toy", blocks, CLASSES)


def fill(stats: GateStats, block: str, centres: list[np.ndarray] | list[float], noise: float = 0.02,
         n: int = N, seed: int = 0) -> None:
    """``n`` images per class: class k's gates are ``centres[k]`` (scalar or per channel) plus noise."""
    rng = np.random.default_rng(seed)
    channels = next(b.channels for b in stats.blocks if b.name == block)
    for k, c in enumerate(centres):
        gates = np.clip(np.broadcast_to(c, (n, channels)) + rng.normal(0, noise, (n, channels)), 0, 1)
        stats.update(block, gates, np.full(n, k))


def apart(delta: float, base: float = 0.5) -> list[float]:
    """Three class centres ``delta`` apart around ``base``."""
    return [base - delta, base, base + delta]


def claim(verdict, key: str):
    return next(c for c in verdict.claims if c.key == key)


def filled(deltas: dict[str, float] | None = None, **overrides) -> GateStats:
    """Every block filled: class separation from ``deltas`` (default small), or explicit centres in overrides."""
    stats = make()
    for i, name in enumerate(NAMES):
        if name in overrides:
            overrides[name](stats, name)
        else:
            fill(stats, name, apart((deltas or {}).get(name, 0.0)), seed=i)
    return stats


# ------------------------------------------------------------------------------------------------ inert blocks


def test_constant_gate_block_is_inert_not_class_agnostic():
    ones = lambda s, b: s.update(b, np.ones((3 * N, 16)), np.repeat(np.arange(3), N))  # noqa: E731
    stats = filled({"SE_3_1": 0.2}, SE_2_1=ones)
    v = paper_verdict(stats)
    assert [b.block for b in v.inert] == ["SE_2_1"]
    assert v.inert[0].text == "SE_2_1: every gate = 1: the block is switched off"
    early = claim(v, "early_agnostic")
    # An all-ones block has spread 0, but it is judged switched off: the earliest *active* block decides.
    assert early.blocks == ("SE_3_1",)
    assert early.status == "not shown"
    assert "SE_2_1" in early.detail and "switched off" in early.detail
    assert "Switched off (constant gate): SE_2_1" in v.summary
    assert "SE_2_1" not in claim(v, "rising").blocks


def test_constant_gate_other_than_one_names_its_value():
    half = lambda s, b: s.update(b, np.full((3 * N, 16), 0.5), np.repeat(np.arange(3), N))  # noqa: E731
    v = paper_verdict(filled(SE_2_1=half))
    assert v.inert[0].text == "SE_2_1: every gate = 0.500: the block is switched off"


def test_identical_class_distributions_with_varying_gates_are_class_agnostic():
    def same(stats, block):
        rng = np.random.default_rng(7)
        gates = rng.uniform(0.2, 0.8, size=(N, 16))  # gates vary a lot from image to image ...
        for k in range(3):
            stats.update(block, gates, np.full(N, k))  # ... but every class sees the same ones

    v = paper_verdict(filled(SE_2_1=same))
    assert v.inert == []
    early = claim(v, "early_agnostic")
    assert early.blocks == ("SE_2_1",) and early.status == "shown"
    assert "class-agnostic" in early.detail
    # and a block with classes far apart is not
    assert claim(paper_verdict(filled({"SE_2_1": 0.2})), "early_agnostic").status == "not shown"


# ------------------------------------------------------------------------------------------------ saturation


def test_saturation_is_judged_at_se_5_2_not_the_last_block():
    high = lambda s, b: fill(s, b, [0.97, 0.97, 0.97], noise=0.01)  # noqa: E731
    low = lambda s, b: fill(s, b, [0.3, 0.3, 0.3])  # noqa: E731
    v = paper_verdict(filled(SE_5_2=high, SE_5_3=low))
    sat = claim(v, "saturation")
    assert sat.blocks == ("SE_5_2",) and sat.status == "shown"
    assert "100% of channels" in sat.detail
    v = paper_verdict(filled(SE_5_2=low, SE_5_3=high))
    sat = claim(v, "saturation")
    assert sat.blocks == ("SE_5_2",) and sat.status == "not shown"
    assert "0% of channels" in sat.detail


def test_without_se_5_2_the_middle_block_of_the_last_stage_is_used():
    names = ["SE_2_1", "SE_4_1", "SE_4_2", "SE_4_3"]
    stats = make([{"name": n, "stage": int(n.split("_")[1]), "channels": 16} for n in names])
    for i, name in enumerate(names):
        fill(stats, name, [0.95, 0.95, 0.95] if name == "SE_4_2" else apart(0.1), noise=0.01, seed=i)
    sat = claim(paper_verdict(stats), "saturation")
    assert sat.blocks == ("SE_4_2",) and sat.status == "shown"
    assert "no SE_5_2" in sat.detail
    assert claim(paper_verdict(stats), "last_similar").blocks == ("SE_4_3",)


def test_last_block_similar_up_to_scale():
    pattern = np.linspace(0.1, 0.6, 16)
    scaled = lambda s, b: fill(s, b, [pattern, 1.3 * pattern, 1.6 * pattern], noise=0.005)  # noqa: E731
    rng = np.random.default_rng(3)
    shuffled = lambda s, b: fill(s, b, [rng.permutation(pattern) for _ in range(3)], noise=0.005)  # noqa: E731
    assert claim(paper_verdict(filled(SE_5_3=scaled)), "last_similar").status == "shown"
    last = claim(paper_verdict(filled(SE_5_3=shuffled)), "last_similar")
    assert last.status == "not shown" and last.blocks == ("SE_5_3",)


# ------------------------------------------------------------------------------------------------ trend


def test_rising_spread_with_depth_is_rising_and_falling_is_not():
    rising = {name: 0.02 * i for i, name in enumerate(NAMES)}
    v = paper_verdict(filled(rising))
    trend = claim(v, "rising")
    assert trend.status == "shown"
    assert "rho 1.00" in trend.detail
    falling = {name: 0.02 * (len(NAMES) - 1 - i) for i, name in enumerate(NAMES)}
    trend = claim(paper_verdict(filled(falling)), "rising")
    assert trend.status == "not shown"
    assert "rho -1.00" in trend.detail


def test_summary_counts_the_claims_shown():
    rising = {name: 0.02 * i for i, name in enumerate(NAMES)}  # SE_2_1 has spread 0: class-agnostic
    v = paper_verdict(filled(rising))
    shown = [c.key for c in v.claims if c.status == "shown"]
    assert {"early_agnostic", "rising"} <= set(shown)
    assert v.summary.startswith(f"toy shows {len(shown)} of 4 testable parts of the paper's pattern")
    assert claim(v, "early_agnostic").detail.count(f"< {AGNOSTIC_SPREAD}") == 1


# ------------------------------------------------------------------------------------------------ class sizes


def test_one_image_per_class_is_flagged():
    stats = make()
    rng = np.random.default_rng(0)
    for name in NAMES:
        stats.update(name, rng.uniform(size=(3, 16)), np.arange(3))
    v = paper_verdict(stats)
    assert v.one_image_per_class
    assert any("eta² cannot be computed" in n and "±1 std" in n and "percentiles" in n for n in v.notes)
    # with two or more images per class, nothing to flag
    full = paper_verdict(filled())
    assert not full.one_image_per_class and full.notes == []


def test_some_single_image_classes_are_flagged_apart():
    stats = filled()
    stats.class_names = [*CLASSES, "d"]
    for name in NAMES:
        stats.update(name, np.full((1, 16), 0.5), np.array([3]))
    v = paper_verdict(stats)
    assert not v.one_image_per_class and v.single_image_classes
    assert any("single image" in n for n in v.notes)


# ------------------------------------------------------------------------------------------------ paper preset


def test_paper_preset_picks_the_classes_with_most_images():
    names = [f"c{i}" for i in range(8)]
    counts = {0: 1, 1: 1, 2: 5, 3: 3, 4: 5, 5: 2, 6: 1, 7: 4}
    items = [ImageItem(key=f"{k}_{j}", name=f"{k}_{j}.png", label=k, label_name=names[k])
             for k, n in counts.items() for j in range(n)]
    images = ImageSet(items, [], names)
    assert pick_classes(images, None, None) == [2, 4, 7, 3]  # most images, ties by class index
    wnids = [f"n{i:08d}" for i in range(8)]
    wnids[4] = "n02110958"  # pug: a paper class wins the tie with class 2
    assert pick_classes(images, None, wnids) == [4, 2, 7, 3]


# ------------------------------------------------------------------------------------------------ a real network


def test_mobilenetv3_small_se_2_1_is_inert(mnv3_tflite, imagenet_samples):
    from senet_viz.data.folders import folder_source
    from senet_viz.inference.run import RunOptions, run_model

    images = folder_source(imagenet_samples, class_names=mnv3_tflite.class_names, wnids=mnv3_tflite.wnids)
    images = replace(images, items=images.items[:8])
    stats = GateStats.for_blocks(mnv3_tflite.name, mnv3_tflite.blocks, images.class_names)
    run_model(mnv3_tflite, images,
              options=RunOptions(keep_gates=False, keep_logits=False, on_gates=stats.update, batch_size=8))
    v = paper_verdict(stats)
    # Its hard-sigmoid clips at 1 for every image: switched off, not "class-agnostic".
    assert [b.block for b in v.inert] == ["SE_2_1"]
    assert v.inert[0].text == "SE_2_1: every gate = 1: the block is switched off"
    assert claim(v, "early_agnostic").blocks != ("SE_2_1",)
    assert v.one_image_per_class  # one sample per ImageNet class


def test_several_models_need_a_name():
    a, b = filled().indices(), filled().indices().assign(model="other")
    with pytest.raises(ValueError, match="model="):
        paper_verdict(pd.concat([a, b]))
    assert paper_verdict(pd.concat([a, b]), model="other").model == "other"


def test_the_verdict_carries_its_threshold_and_the_texts_the_depth_page_shows():
    ones = lambda s, b: s.update(b, np.ones((3 * N, 16)), np.repeat(np.arange(3), N))  # noqa: E731
    stats = filled(SE_2_1=ones)
    judged = paper_verdict(stats.indices(threshold=0.8))
    assert judged.threshold == 0.8
    assert "mean gate ≥ 0.8" in judged.how_to_read and judged.how_to_read.startswith(GLOSSARY)
    assert "SE_2_1: every gate = 1" in judged.inert_markdown and f"std < {INERT_STD:g}" in judged.inert_markdown
    assert paper_verdict(filled()).inert_markdown == ""
    assert paper_verdict(stats).threshold == 0.9  # the indices' default
