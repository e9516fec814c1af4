"""Ablation sweeps, the calibration split and the sweep figure, on the embedded Fashion-MNIST SE-ResNet."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires

from senet_viz import plots
from senet_viz.analysis import ablation, paper
from senet_viz.data.folders import folder_source
from senet_viz.gates.blocks import select_blocks
from senet_viz.models import registry, zoo

MODEL = "se_resnet_fmnist"
PER_CLASS = 5

pytestmark = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


@pytest.fixture(scope="module")
def loaded():
    return zoo.load_model(MODEL, device="cpu")


@pytest.fixture(scope="module")
def all_images(loaded):
    """The 300 embedded samples (30 per class)."""
    folder = registry.get_spec(MODEL).samples_dir
    return folder_source(folder, loaded.class_names)


@pytest.fixture(scope="module")
def images(all_images):
    """The first PER_CLASS samples of each class: every claim below holds on any labelled set, and each pass over
    the images costs in proportion to their number."""
    taken: Counter = Counter()
    items = []
    for it in all_images.items:
        taken[it.label] += 1
        if taken[it.label] <= PER_CLASS:
            items.append(it)
    return replace(all_images, items=items)


def test_calibration_split_is_disjoint_complete_and_deterministic(all_images):
    images = all_images
    calib, rest = ablation.split_calibration(images)
    keys_c, keys_r = {it.key for it in calib.items}, {it.key for it in rest.items}
    assert not keys_c & keys_r
    assert keys_c | keys_r == {it.key for it in images.items}
    assert 0.1 < len(keys_c) / len(images.items) < 0.3  # ~20 %
    again, _ = ablation.split_calibration(images)
    assert [it.key for it in again.items] == [it.key for it in calib.items]


@pytest.fixture(scope="module")
def last_stage_sweep(loaded, images):
    """One identity sweep of SE_5_2 and stage 5, with its progress, forward counter and pixel cache."""
    from senet_viz.inference.pipeline import PixelCache
    from senet_viz.inference.precision import ForwardCounter

    configs = [c for c in ablation.sweep_configs(loaded.blocks) if c[1] in ("SE_5_2", "stage 5")]
    seen = []
    counter, pixels = ForwardCounter(), PixelCache()
    frame = ablation.sweep(loaded, images, ("identity",), configs, progress=lambda d, t: seen.append((d, t)),
                           counter=counter, pixel_cache=pixels)
    return configs, frame, seen, counter, pixels


@pytest.fixture(scope="module")
def last_block(loaded, images):
    """evaluate() of the last block, once with a forward counter and a pixel cache and once without."""
    from senet_viz.inference.pipeline import PixelCache
    from senet_viz.inference.precision import ForwardCounter

    counter, pixels = ForwardCounter(), PixelCache()
    blocks = select_blocks(loaded.blocks, "last:1")
    cached = ablation.evaluate(loaded, images, blocks, counter=counter, pixel_cache=pixels)
    return cached, counter, pixels, ablation.evaluate(loaded, images, blocks)


def test_identity_sweep_rows_equal_single_evaluations(loaded, images, last_stage_sweep):
    configs, frame, *_ = last_stage_sweep
    assert list(frame["config"]) == ["SE_5_2", "stage 5"]
    for (_, _label, blocks), row in zip(configs, frame.itertuples(index=False), strict=True):
        single = ablation.evaluate(loaded, images, blocks, mode="identity")
        assert row.top1 == pytest.approx(single["top1"])
        assert row.agreement == pytest.approx(single["agreement"])
        assert row.params_removed == sum(b.params for b in blocks) == single["params_removed"]
        assert row.params_saved_pct == pytest.approx(100 * single["params_removed"] / single["params"])
        assert row.n_images == single["n_images"] == len(images.items)
    # Removing a whole stage removes at least what one of its blocks does.
    assert frame["params_removed"].iloc[1] > frame["params_removed"].iloc[0]


@pytest.fixture(scope="module")
def stage5_mean(loaded, images):
    """evaluate() of stage 5 in mean mode: fitted on the calibration split, scored on the rest."""
    return ablation.evaluate(loaded, images, select_blocks(loaded.blocks, "stage:5"), mode="mean")


def test_mean_mode_is_scored_on_images_it_was_not_fitted_on(loaded, images, stage5_mean):
    blocks = select_blocks(loaded.blocks, "stage:5")
    out = stage5_mean
    calib, rest = ablation.split_calibration(images)
    assert out["n_calibration"] == len(calib.items)
    assert out["n_images"] == len(rest.items)
    frame = ablation.sweep(loaded, images, ("identity", "mean"), [("stage", "stage 5", blocks)])
    mean_row = frame[frame["mode"] == "mean"].iloc[0]
    assert mean_row["top1"] == pytest.approx(out["top1"])
    assert mean_row["n_calibration"] == out["n_calibration"]
    # Both modes of one sweep are scored on the same images.
    assert frame["n_images"].nunique() == 1


@pytest.fixture(scope="module")
def block_and_stage_sweep(loaded, images):
    """Every single-block and stage ablation, in both modes (one sweep)."""
    configs = [c for c in ablation.sweep_configs(loaded.blocks) if c[0] in ("block", "stage")]
    return configs, ablation.sweep(loaded, images, ("identity", "mean"), configs)


@pytest.mark.slow
def test_pareto_front_and_sweep_figure(block_and_stage_sweep):
    configs, frame = block_and_stage_sweep
    assert len(frame) == 2 * len(configs)
    front = ablation.pareto_front(frame)
    # No row of the front is dominated: more parameters saved never comes with a smaller accuracy loss.
    saved, change = front["params_saved_pct"].to_numpy(), front["d_top1"].to_numpy()
    assert np.all(np.diff(saved) >= 0) and np.all(np.diff(change) <= 1e-12)
    for _, r in frame.iterrows():
        better = (frame["params_saved_pct"] > r["params_saved_pct"]) & (frame["d_top1"] > r["d_top1"])
        if r.name in front.index:
            assert not better.any()
    fig = plots.sweep_figure(frame, reference=paper.PAPER_LAST_STAGE_CLAIM)
    kinds = {(t.meta or {}).get("kind") for t in fig.data}
    assert {"block", "stage", "pareto", "reference"} <= kinds
    assert MODEL in fig.layout.title.text
    star = next(t for t in fig.data if (t.meta or {}).get("kind") == "reference")
    assert star.x[0] == pytest.approx(100 * paper.PAPER_LAST_STAGE_CLAIM["params_saved_share"])


def test_unknown_mode_is_refused(loaded, images):
    with pytest.raises(ValueError, match="unknown ablation mode"):
        ablation.sweep(loaded, images, ("zero",))


# ------------------------------------------------------------------------------------------- AblationResult


def test_evaluate_and_sweep_give_the_same_ablation_result(loaded, images, stage5_mean):
    """One AblationResult type: a sweep's result for a configuration is evaluate()'s for the same blocks."""
    stage5 = select_blocks(loaded.blocks, "stage:5")
    results, fallback = ablation.sweep_results(loaded, images, ("identity", "mean"),
                                               [("stage", "stage 5", stage5)], batch_size=32)
    assert fallback == 0 and [(r.kind, r.config, r.mode) for r in results] == [
        ("stage", "stage 5", "identity"), ("stage", "stage 5", "mean")]
    for swept in results:
        calib, rest = ablation.split_calibration(images)
        if swept.mode == "identity":
            # identity alone needs no calibration split: score on the same (evaluation) images as the sweep, whose
            # rows all name the split's calibration images
            single = ablation.evaluate(loaded, rest, stage5, mode="identity")
            assert single.n_calibration == 0 and swept.n_calibration == len(calib.items)
        else:
            single = stage5_mean
            assert swept.n_calibration == single.n_calibration == len(calib.items)
        assert isinstance(single, ablation.AblationResult)
        for name in ("model", "weights", "mode", "ablated", "params", "params_removed", "macs", "macs_removed",
                     "n_images", "n_scored", "skipped", "precision"):
            assert getattr(swept, name) == getattr(single, name), name
        for name in ("top1", "top5", "full_top1", "full_top5", "agreement", "kl"):
            assert getattr(swept, name) == pytest.approx(getattr(single, name), abs=1e-9), name
        assert swept.per_class_top1_change.keys() == single.per_class_top1_change.keys()
        assert swept.per_class_top1_change == pytest.approx(single.per_class_top1_change, abs=1e-9)
        # the sweep frame's row is derived from the same result
        row = swept.row()
        assert row["d_top1"] == pytest.approx((single.top1 - single.full_top1) * 100)
        assert row["params_saved_pct"] == pytest.approx(100 * single.params_removed / single.params)
        assert row["gmacs_removed"] == single.macs_removed / 1e9 and row["blocks"] == "SE_5_1,SE_5_2"


def test_ablation_result_is_the_clis_json_document(loaded, images, last_block):
    out = last_block[3]
    doc = out.to_dict()
    assert list(doc) == ["model", "weights", "mode", "ablated", "top1", "top5", "full_top1", "full_top5",
                         "agreement", "kl", "params", "params_removed", "params_after", "gmacs", "gmacs_removed",
                         "n_images", "n_scored", "n_calibration", "n_skipped", "skipped", "per_class_top1_change",
                         "precision", "fp32_fallback_batches", "outputs", "replay"]
    assert doc["ablated"] == ["SE_5_2"] and doc["mode"] == "identity" and doc["outputs"] == "logits"
    assert doc["params_after"] == out.params - out.params_removed == out.params_after
    assert doc["gmacs"] == round(out.macs / 1e9, 4) and doc["gmacs_removed"] == round(out.macs_removed / 1e9, 6)
    assert out["top1"] == out.top1 and out["n_skipped"] == out.n_skipped == 0  # dict-style reads still work
    json.dumps(doc)  # JSON-ready
    full = ablation.evaluate(loaded, images)
    assert full.mode is None and full.ablated == () and full.kl == 0.0 and full.agreement == 1.0
    assert full.top1 == full.full_top1 and full.per_class_top1_change == {}


def test_sweep_progress_follows_its_one_pass_and_counts_every_forward(images, last_stage_sweep):
    configs, frame, seen, counter, pixels = last_stage_sweep
    n = len(images.items)
    total = n * (1 + len(configs))  # progress counts image forwards: the full network's and each configuration's
    assert seen and seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the images are forwarded once by the full network and once per configuration, decoded once
    assert counter.count == n * (1 + len(configs)) and pixels.misses == n and pixels.hits == 0
    assert len(frame) == len(configs)


# ------------------------------------------------------------------------------------------- Pareto front


def test_pareto_front_on_a_small_frame():
    frame = pd.DataFrame({
        "config": ["a", "b", "c", "d", "e", "f", "g"],
        "params_saved_pct": [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "d_top1": [-0.1, -0.5, -0.2, -0.2, -1.0, np.nan, -0.05],
        "kl": [0.01, 0.2, 0.05, 0.03, 0.5, 0.1, 0.2],
    })
    front = ablation.pareto_front(frame)
    # g saves the most and loses the least: it dominates every other row; f has no top-1 and is left out
    assert list(front["config"]) == ["g"]
    front = ablation.pareto_front(frame[frame["config"] != "g"])
    assert list(front["config"]) == ["a", "d", "e"]  # b and c lose to d (more saved, no larger loss); tie c/d: d
    assert list(front.index) == [0, 3, 4] and front["params_saved_pct"].is_monotonic_increasing
    # lower is better for KL
    front = ablation.pareto_front(frame, y="kl", higher_is_better=False)
    assert list(front["config"]) == ["a", "d", "f", "g"]
    assert ablation.pareto_front(frame.iloc[:0]).empty


@pytest.mark.slow
def test_the_sweep_figure_draws_the_librarys_pareto_front(block_and_stage_sweep):
    _, swept = block_and_stage_sweep
    frame = swept[(swept["kind"] == "block") & (swept["mode"] == "identity")]
    assert len(frame) > 1
    fig = plots.sweep_figure(frame)
    line = next(t for t in fig.data if (t.meta or {}).get("kind") == "pareto")
    front = ablation.pareto_front(frame)
    np.testing.assert_allclose(line.x, front["params_saved_pct"])
    np.testing.assert_allclose(line.y, front["d_top1"])


def test_evaluate_reuses_decoded_pixels_and_counts_its_forwards(images, last_block):
    out, counter, pixels, plain = last_block
    n = len(images.items)
    assert counter.count == 2 * n  # the full and the ablated pass (its tail: tail replay shares the batches)
    assert pixels.misses == n and pixels.hits == 0  # each image decoded once, for both passes
    assert out.to_dict() == plain.to_dict()
