"""Ablation sweeps, the calibration split and the sweep figure, on the embedded Fashion-MNIST SE-ResNet."""

from __future__ import annotations

import numpy as np
import pytest

from senet_viz import ablation, paper, plots, zoo
from senet_viz.blocks import select_blocks
from senet_viz.data import folder_source

MODEL = "se_resnet_fmnist"

pytestmark = pytest.mark.skipif(zoo.weights_status(MODEL) != "file", reason="assets/se_resnet_fmnist.* missing")


@pytest.fixture(scope="module")
def loaded():
    return zoo.load_model(MODEL, device="cpu")


@pytest.fixture(scope="module")
def images(loaded):
    folder = zoo.get_spec(MODEL).samples_dir
    return folder_source(folder, loaded.class_names)


def test_calibration_split_is_disjoint_complete_and_deterministic(images):
    calib, rest = ablation.split_calibration(images)
    keys_c, keys_r = {it.key for it in calib.items}, {it.key for it in rest.items}
    assert not keys_c & keys_r
    assert keys_c | keys_r == {it.key for it in images.items}
    assert 0.1 < len(keys_c) / len(images.items) < 0.3  # ~20 %
    again, _ = ablation.split_calibration(images)
    assert [it.key for it in again.items] == [it.key for it in calib.items]


def test_identity_sweep_rows_equal_single_evaluations(loaded, images):
    configs = [c for c in ablation.sweep_configs(loaded.blocks) if c[1] in ("SE_5_2", "stage 5")]
    frame = ablation.sweep(loaded, images, ("identity",), configs)
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


def test_mean_mode_is_scored_on_images_it_was_not_fitted_on(loaded, images):
    blocks = select_blocks(loaded.blocks, "stage:5")
    out = ablation.evaluate(loaded, images, blocks, mode="mean")
    calib, rest = ablation.split_calibration(images)
    assert out["n_calibration"] == len(calib.items)
    assert out["n_images"] == len(rest.items)
    frame = ablation.sweep(loaded, images, ("identity", "mean"), [("stage", "stage 5", blocks)])
    mean_row = frame[frame["mode"] == "mean"].iloc[0]
    assert mean_row["top1"] == pytest.approx(out["top1"])
    assert mean_row["n_calibration"] == out["n_calibration"]
    # Both modes of one sweep are scored on the same images.
    assert frame["n_images"].nunique() == 1


def test_pareto_front_and_sweep_figure(loaded, images):
    configs = [c for c in ablation.sweep_configs(loaded.blocks) if c[0] in ("block", "stage")]
    frame = ablation.sweep(loaded, images, ("identity", "mean"), configs)
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
