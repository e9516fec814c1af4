"""The verdict against the paper's "role of excitation" claims, on constructed gate statistics (and one real net):
the rules with hand-made chance tables, then constructed per-image gates (no class effect; a planted one) with the
real label-permutation chance table."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from senet_viz.analysis.chance import ChanceOptions, chance_table
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


def chance_for(stats: GateStats, half: float = 0.005, spread_chance: float = 0.01, corr_chance: float = 0.2,
               above: bool = True, per_block: dict | None = None) -> pd.DataFrame:
    """A hand-made chance table in the contract's columns: the observed indices, intervals ``±half`` around them,
    the given chance levels; ``per_block={block: {column: value}}`` overrides single cells."""
    idx = stats.indices()
    rows = []
    for _, r in idx.iterrows():
        row = {"block": r["block"], "n_images": r["n_images"], "level": 0.95, "cannot_tell": "",
               "eta2_chance_exact": (r["n_classes"] - 1) / (r["n_images"] - 1), "spread_chance": spread_chance,
               "cross_class_corr_chance": corr_chance, "eta2_above_chance": above, "spread_above_chance": above}
        for index in ("eta2", "spread", "cross_class_corr", "saturation"):
            row.update({index: r[index], f"{index}_ci_lo": r[index] - half, f"{index}_ci_hi": r[index] + half})
        row.update((per_block or {}).get(r["block"], {}))
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ constant blocks


def test_all_ones_block_is_switched_off_not_class_agnostic():
    ones = lambda s, b: s.update(b, np.ones((3 * N, 16)), np.repeat(np.arange(3), N))  # noqa: E731
    stats = filled({"SE_3_1": 0.2}, SE_2_1=ones)
    v = paper_verdict(stats, chance=chance_for(stats))
    assert [b.block for b in v.switched_off] == ["SE_2_1"] and v.constant == []
    assert v.inert[0].text == "SE_2_1: every gate = 1: the block is switched off"
    early = claim(v, "early_agnostic")
    # An all-ones block has spread 0, but it is switched off: the earliest stage with an active block decides.
    assert early.blocks == ("SE_3_1",)
    assert early.status == "not shown"
    assert "last block of stage 3" in early.detail and "earlier constant blocks: SE_2_1" in early.detail
    assert "Switched off (every gate = 1): SE_2_1" in v.summary
    assert "SE_2_1" not in claim(v, "rising").blocks


def test_a_constant_half_gate_is_constant_not_switched_off():
    half = lambda s, b: s.update(b, np.full((3 * N, 16), 0.5), np.repeat(np.arange(3), N))  # noqa: E731
    v = paper_verdict(filled(SE_2_1=half))
    assert v.switched_off == [] and [b.block for b in v.constant] == ["SE_2_1"]
    assert v.inert[0].text == "SE_2_1: every gate = 0.500: constant (scales channels by s=0.500)"
    assert "switched off" not in v.inert[0].text and "switched off" not in v.summary
    assert "Constant gate: SE_2_1 (s=0.500)" in v.summary
    assert "SE_2_1" not in claim(v, "rising").blocks and claim(v, "early_agnostic").blocks == ("SE_3_1",)


def test_identical_class_distributions_with_varying_gates_are_class_agnostic():
    def same(stats, block):
        rng = np.random.default_rng(7)
        gates = rng.uniform(0.2, 0.8, size=(N, 16))  # gates vary a lot from image to image ...
        for k in range(3):
            stats.update(block, gates, np.full(N, k))  # ... but every class sees the same ones

    stats = filled(SE_2_1=same)
    v = paper_verdict(stats, chance=chance_for(stats, spread_chance=0.0))
    assert v.inert == []
    early = claim(v, "early_agnostic")
    assert early.blocks == ("SE_2_1",) and early.status == "shown"
    assert "class-agnostic" in early.detail and "95% interval" in early.detail
    # and a block with classes far apart is not
    far = filled({"SE_2_1": 0.2})
    assert claim(paper_verdict(far, chance=chance_for(far)), "early_agnostic").status == "not shown"


def test_early_claim_needs_a_chance_table_an_interval_clear_of_the_threshold_and_a_class_effect():
    stats = filled({"SE_2_1": 0.01})
    spread = float(stats.indices().set_index("block").at["SE_2_1", "spread"])
    early = claim(paper_verdict(stats), "early_agnostic")
    assert early.status == "cannot tell" and "no chance table" in early.detail
    # the corrected interval [spread - chance ± 0.03] spans AGNOSTIC_SPREAD
    wide = chance_for(stats, half=0.03, spread_chance=spread - AGNOSTIC_SPREAD)
    early = claim(paper_verdict(stats, chance=wide), "early_agnostic")
    assert early.status == "cannot tell" and f"spans {AGNOSTIC_SPREAD}" in early.detail
    # no class effect beyond chance at the deepest active block: nothing to contrast the early block with
    flat = chance_for(stats, above=False)
    early = claim(paper_verdict(stats, chance=flat), "early_agnostic")
    assert early.status == "cannot tell" and "SE_5_3 shows no class effect beyond chance" in early.detail


# ------------------------------------------------------------------------------------------------ saturation


def test_saturation_is_judged_at_the_middle_block_of_the_last_stage():
    high = lambda s, b: fill(s, b, [0.97, 0.97, 0.97], noise=0.01)  # noqa: E731
    low = lambda s, b: fill(s, b, [0.3, 0.3, 0.3])  # noqa: E731
    v = paper_verdict(filled(SE_5_2=high, SE_5_3=low))
    sat = claim(v, "saturation")
    assert sat.blocks == ("SE_5_2",) and sat.status == "shown"
    assert "100% of channels" in sat.detail and "middle block of the last stage 5" in sat.detail
    assert "no interval: judged on the point value" in sat.detail
    stats = filled(SE_5_2=low, SE_5_3=high)
    sat = claim(paper_verdict(stats, chance=chance_for(stats)), "saturation")
    assert sat.blocks == ("SE_5_2",) and sat.status == "not shown"
    assert "0% of channels" in sat.detail and "95% interval" in sat.detail
    # an interval that spans the threshold: cannot tell
    span = chance_for(stats, per_block={"SE_5_2": {"saturation_ci_lo": 0.4, "saturation_ci_hi": 0.6}})
    assert claim(paper_verdict(stats, chance=span), "saturation").status == "cannot tell"


def test_an_all_ones_middle_block_of_the_last_stage_is_saturation_in_its_extreme_form():
    ones = lambda s, b: s.update(b, np.ones((3 * N, 16)), np.repeat(np.arange(3), N))  # noqa: E731
    for n_per_class in (N, 1):  # one image per class does not block this claim
        stats = make()
        for i, name in enumerate(NAMES):
            if name == "SE_5_2":
                stats.update(name, np.ones((3 * n_per_class, 16)), np.repeat(np.arange(3), n_per_class))
            else:
                fill(stats, name, apart(0.0), n=n_per_class, seed=i)
        v = paper_verdict(stats)
        sat = claim(v, "saturation")
        assert sat.blocks == ("SE_5_2",) and sat.status == "shown", sat.detail
        assert "extreme form" in sat.detail
    assert claim(paper_verdict(filled(SE_5_2=ones)), "saturation").status == "shown"


def test_roles_in_a_network_without_se_5_x_and_with_two_or_one_last_stage_blocks():
    names = ["SE_2_1", "SE_4_1", "SE_4_2", "SE_4_3"]
    stats = make([{"name": n, "stage": int(n.split("_")[1]), "channels": 16} for n in names])
    for i, name in enumerate(names):
        fill(stats, name, [0.95, 0.95, 0.95] if name == "SE_4_2" else apart(0.1), noise=0.01, seed=i)
    v = paper_verdict(stats)
    assert claim(v, "saturation").blocks == ("SE_4_2",) and claim(v, "saturation").status == "shown"
    assert "SE_5_2's role" in claim(v, "saturation").detail
    assert claim(v, "last_similar").blocks == ("SE_4_3",)
    # two blocks in the last stage (the embedded model): claims 3 and 4 do not judge the same block
    two = make([{"name": n, "stage": int(n.split("_")[1]), "channels": 16} for n in NAMES[:5]])
    for i, name in enumerate(NAMES[:5]):
        fill(two, name, apart(0.1), seed=i)
    v = paper_verdict(two)
    assert claim(v, "saturation").blocks == ("SE_5_1",) and claim(v, "last_similar").blocks == ("SE_5_2",)
    assert "two SE blocks: the saturation claim uses the first, the similarity claim the last" in \
        claim(v, "saturation").detail
    one = make([{"name": n, "stage": int(n.split("_")[1]), "channels": 16} for n in NAMES[:4]])
    for i, name in enumerate(NAMES[:4]):
        fill(one, name, apart(0.1), seed=i)
    v = paper_verdict(one)
    assert claim(v, "saturation").blocks == claim(v, "last_similar").blocks == ("SE_5_1",)
    assert "one SE block, so the saturation and similarity claims both use it" in claim(v, "last_similar").detail


# ------------------------------------------------------------------------------------------------ similarity


def test_last_block_similar_up_to_scale():
    pattern = np.linspace(0.1, 0.6, 16)
    scaled = lambda s, b: fill(s, b, [pattern, 1.3 * pattern, 1.6 * pattern], noise=0.005)  # noqa: E731
    rng = np.random.default_rng(3)
    shuffled = lambda s, b: fill(s, b, [rng.permutation(pattern) for _ in range(3)], noise=0.005)  # noqa: E731
    stats = filled(SE_5_3=scaled)
    last = claim(paper_verdict(stats, chance=chance_for(stats)), "last_similar")
    assert last.status == "shown" and "chance 0.20" in last.detail
    assert claim(paper_verdict(stats), "last_similar").status == "cannot tell"  # no chance level
    # classes that do not differ beyond chance: "similar" would only mean no class effect
    flat = chance_for(stats, per_block={"SE_5_3": {"eta2_above_chance": False}})
    assert claim(paper_verdict(stats, chance=flat), "last_similar").status == "cannot tell"
    stats = filled(SE_5_3=shuffled)
    last = claim(paper_verdict(stats, chance=chance_for(stats)), "last_similar")
    assert last.status == "not shown" and last.blocks == ("SE_5_3",)


# ------------------------------------------------------------------------------------------------ trend


def test_rising_eta2_with_depth_is_rising_and_falling_is_not():
    rising = {name: 0.02 * i for i, name in enumerate(NAMES)}
    stats = filled(rising)
    trend = claim(paper_verdict(stats, chance=chance_for(stats)), "rising")
    assert trend.status == "shown", trend.detail
    assert "rho of eta² vs block order 1.00" in trend.detail and "p 0.00278" in trend.detail  # 2 / 6!
    assert "6 of 6 blocks above chance" in trend.detail
    assert "chance is unknown" in claim(paper_verdict(stats), "rising").detail  # still judged from indices
    assert claim(paper_verdict(stats), "rising").status == "shown"
    # a rank trend with no block above chance is not a rise of class specificity
    assert claim(paper_verdict(stats, chance=chance_for(stats, above=False)), "rising").status == "not shown"
    falling = {name: 0.02 * (len(NAMES) - 1 - i) for i, name in enumerate(NAMES)}
    trend = claim(paper_verdict(filled(falling)), "rising")
    assert trend.status == "not shown"
    assert "rho of eta² vs block order -1.00" in trend.detail


def test_three_or_four_active_blocks_cannot_show_the_trend():
    for n in (3, 4):
        blocks = [{"name": f"SE_{i + 2}_1", "stage": i + 2, "channels": 8} for i in range(n)]
        stats = make(blocks)
        for i, b in enumerate(blocks):
            fill(stats, b["name"], apart(0.05 * (i + 1)), seed=i)
        trend = claim(paper_verdict(stats, chance=chance_for(stats)), "rising")
        assert trend.status == "cannot tell" and f"needs 5+ active blocks, {n} here" in trend.detail


def test_the_summary_never_states_more_than_its_parts():
    rising = {name: 0.02 * i for i, name in enumerate(NAMES)}  # SE_2_1 has spread 0: class-agnostic
    stats = filled(rising)
    v = paper_verdict(stats, chance=chance_for(stats, spread_chance=0.0))
    shown = [c.key for c in v.claims if c.status == "shown"]
    testable = [c for c in v.claims if c.status != "cannot tell"]
    assert {"early_agnostic", "rising"} <= set(shown)
    assert v.summary.startswith(f"toy shows {len(shown)} of {len(testable)} testable parts of the paper's pattern")
    bare = paper_verdict(stats)  # no chance table: claims 1 and 4 cannot be told
    assert bare.summary.startswith("toy shows 1 of 2 testable parts") and "Cannot tell: " in bare.summary
    assert any("No chance table" in n for n in bare.notes)


# ------------------------------------------------------------------------------------------------ per-image gates


def per_image(n_blocks: int, per_class: int, effect: float = 0.0, classes: int = 6, seed: int = 0
              ) -> tuple[GateStats, pd.DataFrame]:
    """``n_blocks`` blocks (stages 2..5, the rest in stage 5) of 12 channels with a fixed channel pattern, noise that
    grows with depth (0.02 * depth), and a class effect ``effect * depth²`` that outgrows it (0: labels carry
    nothing); statistics and the chance table of the same gates."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    names = [f"SE_{min(2 + i, 5)}_{max(1, i - 2)}" for i in range(n_blocks)]
    blocks = [{"name": n, "stage": int(n.split("_")[1]), "channels": 12} for n in names]
    stats = GateStats.for_blocks("toy", blocks, [f"k{k}" for k in range(classes)])
    pattern = np.linspace(0.3, 0.7, 12)
    tuning = rng.normal(0, 1, (classes, 12))  # each class's direction, scaled by the block's effect
    gates = {}
    for i, name in enumerate(names):
        centre = pattern + effect * (i + 1) ** 2 * tuning[labels]
        gates[name] = np.clip(centre + rng.normal(0, 0.02 * (i + 1), centre.shape), 0, 1)
        stats.update(name, gates[name], labels)
    return stats, chance_table(gates, labels, options=ChanceOptions(permutations=99, bootstrap=100))


@pytest.mark.parametrize("n_blocks", [3, 5, 8])
@pytest.mark.parametrize("per_class", [1, 5])
def test_no_class_effect_shows_no_claim(n_blocks, per_class):
    stats, chance = per_image(n_blocks, per_class, seed=n_blocks)
    v = paper_verdict(stats, chance=chance)
    for c in v.claims:
        assert c.status in ("cannot tell", "not shown"), (c.key, c.detail)
    assert v.summary.startswith(f"toy shows 0 of {len(v.testable)} testable parts")
    if per_class == 1:
        assert all(claim(v, k).status == "cannot tell" for k in ("early_agnostic", "rising", "last_similar"))
    if n_blocks < 5:
        assert "needs 5+ active blocks" in claim(v, "rising").detail


def test_noise_growing_with_depth_is_not_a_rise_but_a_planted_class_effect_is():
    stats, chance = per_image(6, 5)
    spread = stats.indices()["spread"].to_numpy()
    assert (np.diff(spread) > 0).all()  # the old spread-based test said "rises with depth (rho 1.00)"
    assert claim(paper_verdict(stats, chance=chance), "rising").status != "shown"
    stats, chance = per_image(6, 5, effect=0.004)
    trend = claim(paper_verdict(stats, chance=chance), "rising")
    assert trend.status == "shown", trend.detail
    p = float(trend.detail.split("exact permutation p ")[1].split(" ")[0])
    assert p < 0.05


# ------------------------------------------------------------------------------------------------ class sizes


def test_one_image_per_class_makes_claims_1_2_and_4_cannot_tell():
    stats = make()
    rng = np.random.default_rng(0)
    for name in NAMES:
        stats.update(name, rng.uniform(size=(3, 16)), np.arange(3))
    table = chance_for(stats).assign(cannot_tell="one image per class")
    v = paper_verdict(stats, chance=table)
    assert v.one_image_per_class
    assert any("one image" in n and "±1 std" in n and "percentiles" in n for n in v.notes)
    for key in ("early_agnostic", "rising", "last_similar"):
        assert claim(v, key).status == "cannot tell", claim(v, key).detail
    assert "one image per class" in claim(v, "early_agnostic").detail
    full = paper_verdict(filled(), chance=chance_for(filled()))
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


def test_mobilenetv3_small_se_2_1_is_switched_off(mnv3_tflite, imagenet_samples):
    from senet_viz.data.folders import folder_source
    from senet_viz.inference.run import RunOptions, run_model

    images = folder_source(imagenet_samples, class_names=mnv3_tflite.class_names, wnids=mnv3_tflite.wnids)
    images = replace(images, items=images.items[:8])
    stats = GateStats.for_blocks(mnv3_tflite.name, mnv3_tflite.blocks, images.class_names)
    run_model(mnv3_tflite, images,
              options=RunOptions(keep_gates=False, keep_logits=False, on_gates=stats.update, batch_size=8))
    v = paper_verdict(stats)
    # Its hard-sigmoid clips at 1 for every image: switched off, not "class-agnostic".
    assert [b.block for b in v.switched_off] == ["SE_2_1"]
    assert v.inert[0].text == "SE_2_1: every gate = 1: the block is switched off"
    assert claim(v, "early_agnostic").blocks != ("SE_2_1",)
    assert v.one_image_per_class  # one sample per ImageNet class
    assert all(claim(v, k).status == "cannot tell" for k in ("early_agnostic", "rising", "last_similar"))


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
    assert "Chance level" in judged.how_to_read and "Cannot tell" in judged.how_to_read
    assert "Blocks by role" in judged.how_to_read
    assert "SE_2_1: every gate = 1" in judged.inert_markdown and f"std < {INERT_STD:g}" in judged.inert_markdown
    assert paper_verdict(filled()).inert_markdown == ""
    assert paper_verdict(stats).threshold == 0.9  # the indices' default
