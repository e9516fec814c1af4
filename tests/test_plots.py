"""Tests of senet_viz.plots on synthetic stats frames (no model, no torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from conftest import requires

from senet_viz import plots

BINS = 20
MODEL = "toy-se"
# (block, stage, channels) in depth order: 2 stages, 5 blocks
BLOCKS = [("SE_2_1", 2, 64), ("SE_2_2", 2, 64), ("SE_3_1", 3, 128), ("SE_3_2", 3, 128), ("SE_3_3", 3, 128)]
CLASSES = {"tench": (0, 30), "goldfish": (1, 20), "airliner": (404, 25)}  # name -> (class_index, images)
PRESET = ["SE_2_2", "SE_3_1", "SE_3_2", "SE_3_3"]


def _rows(model, block, stage, order, cls, cls_index, gates):
    """Rows of the channels frame for one (block, class) from raw gates (images x channels)."""
    n, c = gates.shape
    hist = [np.histogram(gates[:, j], bins=BINS, range=(0.0, 1.0))[0].astype(np.int64) for j in range(c)]
    return pd.DataFrame(
        {
            "model": model,
            "block": block,
            "stage": stage,
            "order": order,
            "class": cls,
            "class_index": cls_index,
            "channel": np.arange(c),
            "count": n,
            "mean": gates.mean(axis=0),
            "std": gates.std(axis=0),
            "min": gates.min(axis=0),
            "max": gates.max(axis=0),
            "hist": hist,
        }
    )


def make_channels(model=MODEL, blocks=BLOCKS, seed=0):
    """Synthetic channels frame plus the raw gates it was built from: {(block, class): images x channels}."""
    rng = np.random.default_rng(seed)
    frames, raw = [], {}
    for order, (block, stage, c) in enumerate(blocks):
        per_class = []
        for k, (cls, (idx, n)) in enumerate(CLASSES.items()):
            # class-specific channel means, more distinct and closer to 1 in later blocks
            centre = 0.35 + 0.1 * order + 0.15 * k * (order / len(blocks))
            means = np.clip(centre + 0.1 * rng.standard_normal(c), 0.05, 0.95)
            gates = np.clip(means + 0.08 * rng.standard_normal((n, c)), 0.0, 1.0)
            raw[(block, cls)] = gates
            per_class.append(gates)
            frames.append(_rows(model, block, stage, order, cls, idx, gates))
        pooled = np.concatenate(per_class)
        raw[(block, "all")] = pooled
        frames.append(_rows(model, block, stage, order, "all", -1, pooled))
    return pd.concat(frames, ignore_index=True), raw


def make_indices(model=MODEL, blocks=BLOCKS):
    n = len(blocks)
    return pd.DataFrame(
        {
            "model": model,
            "block": [b for b, _, _ in blocks],
            "stage": [s for _, s, _ in blocks],
            "order": np.arange(n),
            "channels": [c for _, _, c in blocks],
            "n_images": 75,
            "n_classes": 3,
            "specificity": np.linspace(0.05, 0.8, n),
            "specificity_method": "eta2",
            "saturation": np.linspace(0.0, 0.6, n),
            "threshold": 0.9,
            "mean_abs_1_minus_s": np.linspace(0.5, 0.1, n),
            "share_near_0": 0.01,
            "mean_gate": np.linspace(0.5, 0.9, n),
            "cross_class_corr": np.linspace(0.99, 0.4, n),
        }
    )


@pytest.fixture(scope="module")
def data():
    return make_channels()


@pytest.fixture(scope="module")
def channels(data):
    return data[0]


def _mean_at(channels, block, cls, picked):
    rows = channels[(channels["block"] == block) & (channels["class"] == cls)].set_index("channel")
    return rows["mean"].reindex(picked).to_numpy()


def _by_axis(fig):
    groups = {}
    for tr in fig.data:
        groups.setdefault(tr.xaxis, []).append(tr)
    return groups


# ------------------------------------------------------------------------------------------------ presets, colours


def test_paper_preset_blocks_toy_and_resnet50(channels):
    assert plots.paper_preset_blocks(channels) == PRESET
    assert plots.paper_preset_blocks(make_indices()) == PRESET
    r50 = [(f"SE_{s}_{i}", s, 64) for s, n in ((2, 3), (3, 4), (4, 6), (5, 3)) for i in range(1, n + 1)]
    assert plots.paper_preset_blocks(make_indices(blocks=r50)) == [
        "SE_2_3", "SE_3_4", "SE_4_6", "SE_5_1", "SE_5_2", "SE_5_3",
    ]


def test_class_colors_deterministic_and_all_grey():
    a = plots.class_colors(["tench", "goldfish", "airliner", "all"])
    b = plots.class_colors(["airliner", "goldfish", "tench"])
    assert a == b
    assert a["all"] == plots.ALL_COLOR
    assert len({a[c] for c in CLASSES}) == 3
    assert plots.ALL_COLOR not in {a[c] for c in CLASSES}


def test_same_colour_for_a_class_across_figures(channels):
    colors = plots.class_colors(channels["class"].unique())
    f6 = plots.fig6(channels, classes=["goldfish"])
    f7 = plots.fig7(channels, "SE_3_2", "goldfish")
    line6 = next(t for t in f6.data if t.meta["class"] == "goldfish")
    line7 = next(t for t in f7.data if t.meta == "mean")
    assert line6.line.color == line7.line.color == colors["goldfish"]
    ref = next(t for t in f6.data if t.meta["class"] == "all")
    assert ref.line.dash == "dash" and ref.line.color == plots.ALL_COLOR


# ------------------------------------------------------------------------------------------------ Fig. 6


def test_fig6_one_panel_per_preset_block_and_lines(channels):
    fig = plots.fig6(channels)
    groups = _by_axis(fig)
    assert len(groups) == len(PRESET)
    for traces in groups.values():
        assert len(traces) == len(CLASSES) + 1
        blocks = {t.meta["block"] for t in traces}
        assert len(blocks) == 1
        block = blocks.pop()
        xs = [np.asarray(t.x) for t in traces]
        assert all(x.size == 50 for x in xs)
        assert all(np.array_equal(x, xs[0]) for x in xs)
        assert np.all(np.diff(xs[0]) > 0)  # sorted, no repeats
        for t in traces:
            np.testing.assert_allclose(t.y, _mean_at(channels, block, t.meta["class"], np.asarray(t.x)))
    assert [t.meta["block"] for t in fig.data[:: len(CLASSES) + 1]] == PRESET
    assert tuple(fig.layout.yaxis.range) == (-0.02, 1.02)
    assert "channel index" in fig.layout.xaxis4.title.text or "channel index" in fig.layout.xaxis.title.text


@pytest.mark.slow
def test_fig6_sampling_is_seeded(channels):
    def xs(fig):
        return [tuple(t.x) for t in fig.data]

    assert xs(plots.fig6(channels, seed=0)) == xs(plots.fig6(channels, seed=0))
    assert xs(plots.fig6(channels, seed=0)) != xs(plots.fig6(channels, seed=1))
    # a block keeps its channels whatever else is shown
    alone = plots.fig6(channels, blocks=["SE_3_1"], seed=3).data[0].x
    among = next(t for t in plots.fig6(channels, seed=3).data if t.meta["block"] == "SE_3_1").x
    assert tuple(alone) == tuple(among)


def test_fig6_all_channels_and_explicit_blocks(channels):
    fig = plots.fig6(channels, blocks=["SE_3_3", "SE_2_1"], classes=["goldfish"], all_channels=True)
    assert [t.meta["block"] for t in fig.data] == ["SE_2_1", "SE_2_1", "SE_3_3", "SE_3_3"]  # depth order
    assert [t.meta["class"] for t in fig.data] == ["goldfish", "all"] * 2
    assert list(fig.data[0].x) == list(range(64))
    assert list(fig.data[2].x) == list(range(128))
    few = plots.fig6(channels, blocks=["SE_2_1"], n_channels=10)
    assert len(few.data[0].x) == 10


def test_fig6_title_names_model_blocks_classes(channels):
    fig = plots.fig6(channels)
    title = fig.layout.title.text
    assert MODEL in title
    for b in PRESET:
        assert b in title
    for cls, (_, n) in CLASSES.items():
        assert f"{cls} (n={n})" in title
    assert "all (n=75)" in title
    assert "Fig. 6" in fig.layout.title.subtitle.text


# ------------------------------------------------------------------------------------------------ Fig. 7


def test_fig7_band_is_mean_plus_minus_std(channels):
    fig = plots.fig7(channels, "SE_3_2", "goldfish", seed=5)
    parts = {t.meta: t for t in fig.data}
    assert set(parts) == {"upper", "lower", "mean", "all"}
    x = np.asarray(parts["mean"].x)
    assert x.size == 50
    rows = channels[(channels["block"] == "SE_3_2") & (channels["class"] == "goldfish")].set_index("channel")
    mean, std = rows["mean"].reindex(x).to_numpy(), rows["std"].reindex(x).to_numpy()
    np.testing.assert_allclose(parts["mean"].y, mean)
    np.testing.assert_allclose(parts["upper"].y, mean + std)
    np.testing.assert_allclose(parts["lower"].y, mean - std)
    assert parts["lower"].fill == "tonexty"
    assert fig.data.index(parts["upper"]) + 1 == fig.data.index(parts["lower"])  # band fills up to the upper line
    np.testing.assert_allclose(parts["all"].y, _mean_at(channels, "SE_3_2", "all", x))
    assert parts["all"].line.dash == "dash"
    title = fig.layout.title.text
    assert MODEL in title and "SE_3_2" in title and "goldfish (n=20)" in title
    assert "Fig. 7" in fig.layout.title.subtitle.text
    assert len(plots.fig7(channels, "SE_2_1", "tench", all_channels=True).data[0].x) == 64


# ------------------------------------------------------------------------------------------------ distributions


def test_distributions_box_quartiles_match_raw_data(data):
    channels, raw = data
    fig = plots.distributions(channels, stage=3)
    assert all(isinstance(t, go.Box) for t in fig.data)
    assert [t.meta["class"] for t in fig.data] == ["tench", "goldfish", "airliner", "all"]
    assert fig.layout.boxmode == "group"
    for t in fig.data:
        assert list(t.x) == ["SE_3_1", "SE_3_2", "SE_3_3"]
        for i, block in enumerate(t.x):
            values = raw[(block, t.meta["class"])].ravel()
            q1, med, q3 = np.quantile(values, [0.25, 0.5, 0.75])
            assert abs(t.q1[i] - q1) <= 1 / BINS
            assert abs(t.median[i] - med) <= 1 / BINS
            assert abs(t.q3[i] - q3) <= 1 / BINS
            assert t.mean[i] == pytest.approx(values.mean())
            assert values.min() <= t.lowerfence[i] <= t.q1[i] <= t.median[i] <= t.q3[i] <= t.upperfence[i]
            assert t.upperfence[i] <= values.max()
    assert tuple(fig.layout.yaxis.range) == (0, 1)
    assert MODEL in fig.layout.title.text and "stage 3" in fig.layout.title.text
    assert "goldfish (n=20)" in fig.layout.title.text
    assert "histogram" in fig.layout.title.subtitle.text


def test_distributions_violin_from_histograms(data):
    channels, raw = data
    fig = plots.distributions(channels, blocks=["SE_2_1", "SE_2_2"], classes=["tench", "airliner"], kind="violin")
    dens = [t for t in fig.data if t.meta["part"] == "density"]
    meds = [t for t in fig.data if t.meta["part"] == "median"]
    assert [t.meta["class"] for t in dens] == ["tench", "airliner"]
    assert len(meds) == 2
    for t in dens:
        assert t.fill == "toself"
        ys = np.array([y for y in t.y if y is not None], dtype=float)
        assert ys.min() >= 0 and ys.max() <= 1
        assert "histogram" in next(s for s in t.text if s)
    for t in meds:
        for i, block in enumerate(["SE_2_1", "SE_2_2"]):
            assert abs(t.y[i] - np.median(raw[(block, t.meta["class"])])) <= 1 / BINS
    assert list(fig.layout.xaxis.ticktext) == ["SE_2_1", "SE_2_2"]


def test_distributions_bad_arguments(channels):
    with pytest.raises(ValueError, match="valid stages"):
        plots.distributions(channels, stage=7)
    with pytest.raises(ValueError, match="not in stage 2"):
        plots.distributions(channels, stage=2, blocks=["SE_3_1"])
    with pytest.raises(ValueError, match="kind"):
        plots.distributions(channels, kind="bar")


# ------------------------------------------------------------------------------------------------ depth profile


def test_depth_profile_one_model():
    indices = make_indices()
    fig = plots.depth_profile(indices)
    assert [t.meta["metric"] for t in fig.data] == ["specificity", "saturation"]
    spec = fig.data[0]
    np.testing.assert_array_equal(spec.x, indices["order"])
    np.testing.assert_allclose(spec.y, indices["specificity"])
    assert list(fig.layout.xaxis.ticktext) == [b for b, _, _ in BLOCKS]
    assert "relative" not in fig.layout.xaxis.title.text
    assert MODEL in fig.layout.title.text and "SE_2_1" in fig.layout.title.text
    assert len(fig.layout.shapes) == 2  # one shaded band per stage
    assert "0.9" in fig.layout.title.subtitle.text


@pytest.mark.slow
def test_depth_profile_two_models_relative_depth():
    a = make_indices()
    other = [(f"SE_{s}_{i}", s, 32) for s, n in ((2, 2), (3, 2), (4, 3)) for i in range(1, n + 1)]
    b = make_indices(model="other-se", blocks=other)
    fig = plots.depth_profile(a, b)
    models = {t.meta["model"] for t in fig.data}
    assert models == {MODEL, "other-se"}
    assert len(fig.data) == 4
    for t in fig.data:
        assert min(t.x) == 0 and max(t.x) == pytest.approx(1)
        assert t.line.dash == ("dash" if t.meta["model"] == "other-se" else "solid")
    assert "relative depth" in fig.layout.xaxis.title.text
    assert MODEL in fig.layout.title.text and "other-se" in fig.layout.title.text
    # the second model given by name inside one frame
    both = pd.concat([a, b], ignore_index=True)
    by_name = plots.depth_profile(both, "other-se", model=MODEL)
    assert {t.meta["model"] for t in by_name.data} == models


def test_depth_profile_two_models_same_depth_keeps_order():
    fig = plots.depth_profile(make_indices(), make_indices(model="twin"), metrics=["specificity"])
    assert len(fig.data) == 2
    assert "relative" not in fig.layout.xaxis.title.text
    np.testing.assert_array_equal(fig.data[1].x, np.arange(len(BLOCKS)))


def test_depth_profile_errors():
    with pytest.raises(ValueError, match="valid metrics"):
        plots.depth_profile(make_indices(), metrics=["nope"])
    both = pd.concat([make_indices(), make_indices(model="twin")])
    with pytest.raises(ValueError, match="model="):
        plots.depth_profile(both)
    with pytest.raises(ValueError, match="valid models"):
        plots.depth_profile(both, "missing", model=MODEL)


# ------------------------------------------------------------------------------------------------ heatmap


def test_heatmap_shape_and_scale(channels):
    fig = plots.heatmap(channels, "SE_3_1")
    (hm,) = fig.data
    z = np.asarray(hm.z)
    assert z.shape == (3, 128)
    assert (hm.zmin, hm.zmax) == (0, 1)
    assert hm.colorbar.title.text == "mean gate s"
    assert list(hm.y) == ["tench", "goldfish", "airliner"]  # class_index order
    np.testing.assert_allclose(z[1], _mean_at(channels, "SE_3_1", "goldfish", np.arange(128)))
    assert MODEL in fig.layout.title.text and "SE_3_1" in fig.layout.title.text
    assert "airliner (n=25)" in fig.layout.title.text


def test_heatmap_max_channels_keeps_most_varying(channels):
    fig = plots.heatmap(channels, "SE_3_1", classes=["goldfish", "tench"], max_channels=10)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (2, 10)
    full = channels[(channels["block"] == "SE_3_1") & channels["class"].isin(["goldfish", "tench"])]
    var = full.pivot(index="class", columns="channel", values="mean").var(axis=0, ddof=0)
    expected = sorted(var.sort_values(ascending=False).index[:10])
    assert [int(c) for c in fig.data[0].x] == expected
    assert "10 of 128" in fig.layout.xaxis.title.text


# ------------------------------------------------------------------------------------------------ percentiles


def test_channel_percentiles_basic():
    hist = np.zeros((4, 10), dtype=np.int64)
    hist[:, 4] = 50  # all mass in [0.4, 0.5)
    hist[:, 5] = 50  # and [0.5, 0.6): median 0.5
    pct = plots.channel_percentiles(hist, np.array([0.1, 0.95, 0.5, 0.45]))
    assert pct[0] == 0
    assert pct[1] == 100
    assert pct[2] == pytest.approx(50)
    assert pct[3] == pytest.approx(25)
    assert plots.channel_percentiles(hist[:1], np.array([1.5]))[0] == 100
    assert plots.channel_percentiles(hist[:1], np.array([-0.5]))[0] == 0
    empty = plots.channel_percentiles(np.zeros((1, 10)), np.array([0.5]))
    assert np.isnan(empty[0])
    with pytest.raises(ValueError):
        plots.channel_percentiles(hist, np.array([0.5]))


def test_channel_percentiles_matches_empirical_cdf(data):
    _, raw = data
    gates = raw[("SE_2_2", "tench")]
    hist = np.stack([np.histogram(gates[:, j], bins=BINS, range=(0, 1))[0] for j in range(gates.shape[1])])
    probe = np.median(gates, axis=0)
    pct = plots.channel_percentiles(hist, probe)
    assert np.all(np.abs(pct - 50) < 25)  # within the bin around the median
    np.testing.assert_allclose(np.median(pct), 50, atol=8)


def test_image_percentiles(data):
    channels, raw = data
    image = raw[("SE_3_3", "goldfish")][0]
    fig = plots.image_percentiles(channels, "SE_3_3", "goldfish", image, "n01443537_goldfish_0001.JPEG")
    parts = {t.meta: t for t in fig.data}
    assert {"percentile", "class mean", "image", "all"} <= set(parts)
    rows = channels[(channels["block"] == "SE_3_3") & (channels["class"] == "goldfish")].sort_values("channel")
    expected = plots.channel_percentiles(np.stack(rows["hist"].to_numpy()), image)
    np.testing.assert_allclose(parts["percentile"].y, expected)
    assert np.all((expected >= 0) & (expected <= 100))
    np.testing.assert_allclose(parts["class mean"].y, rows["mean"])
    np.testing.assert_allclose(parts["image"].y, image)
    title = fig.layout.title.text
    assert "n01443537_goldfish_0001.JPEG" in title and MODEL in title and "SE_3_3" in title
    assert "goldfish (n=20)" in title
    with pytest.raises(ValueError, match="one value per channel"):
        plots.image_percentiles(channels, "SE_3_3", "goldfish", image[:5], "x")


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "call",
    [
        lambda ch: plots.fig6(ch, blocks=["SE_9_9"]),
        lambda ch: plots.fig7(ch, "SE_9_9", "goldfish"),
        lambda ch: plots.heatmap(ch, "nope"),
        lambda ch: plots.distributions(ch, blocks=["SE_2_1", "bogus"]),
        lambda ch: plots.image_percentiles(ch, "SE_0", "goldfish", np.zeros(64), "x"),
    ],
)
def test_unknown_block_lists_valid_ones(channels, call):
    with pytest.raises(ValueError, match="valid blocks") as info:
        call(channels)
    for block, _, _ in BLOCKS:
        assert block in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda ch: plots.fig6(ch, classes=["zebra"]),
        lambda ch: plots.fig7(ch, "SE_2_1", "zebra"),
        lambda ch: plots.heatmap(ch, "SE_2_1", classes=["goldfish", "zebra"]),
        lambda ch: plots.distributions(ch, classes=["zebra"]),
        lambda ch: plots.image_percentiles(ch, "SE_2_1", "zebra", np.zeros(64), "x"),
    ],
)
def test_unknown_class_lists_valid_ones(channels, call):
    with pytest.raises(ValueError, match="valid classes") as info:
        call(channels)
    for cls in CLASSES:
        assert cls in str(info.value)
    assert "zebra" in str(info.value)


def test_several_models_need_model_argument(channels):
    other, _ = make_channels(model="other-se", blocks=BLOCKS[:2], seed=1)
    both = pd.concat([channels, other], ignore_index=True)
    with pytest.raises(ValueError, match="model="):
        plots.fig6(both)
    fig = plots.fig6(both, model="other-se")
    assert "other-se" in fig.layout.title.text
    # other-se has one stage: the preset is every block of that (last) stage
    assert [t.meta["block"] for t in fig.data[::4]] == ["SE_2_1", "SE_2_2"]
    with pytest.raises(ValueError, match="valid models"):
        plots.heatmap(both, "SE_2_1", model="missing")


def test_missing_columns_are_reported(channels):
    with pytest.raises(ValueError, match="mean"):
        plots.fig6(channels.drop(columns=["mean"]))
    with pytest.raises(ValueError, match="hist"):
        plots.image_percentiles(channels.drop(columns=["hist"]), "SE_2_1", "goldfish", np.zeros(64), "x")
    with pytest.raises(ValueError, match="hist"):
        plots.distributions(channels.drop(columns=["hist"]))


@pytest.mark.slow
def test_no_torch_or_streamlit_import():
    """Neither the figures nor the statistics, bundles and extract readers they are drawn from import torch."""
    code = (
        "import sys, senet_viz.plots, senet_viz.plots.channels, senet_viz.analysis.stats, senet_viz.analysis.bundle, "
        "senet_viz.analysis.channels, senet_viz.analysis.exemplars, senet_viz.analysis.verdict; "
        "bad = [m for m in ('torch', 'streamlit') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout


# ------------------------------------------------------------------------------------------------ export


def test_save_figure_html_embeds_plotlyjs(channels, tmp_path):
    out = plots.save_figure(plots.heatmap(channels, "SE_2_1"), tmp_path / "sub" / "heat.html")
    text = out.read_text(encoding="utf-8")
    assert out.stat().st_size > 1_000_000  # plotly.js itself is inside
    assert 'src="https://cdn.plot.ly' not in text  # no external script: opens offline
    assert "Plotly.newPlot" in text and "plotly.js v" in text.lower()
    assert "SE_2_1" in text


def test_save_figure_rejects_unknown_suffix(channels, tmp_path):
    with pytest.raises(ValueError, match=".png"):
        plots.save_figure(go.Figure(), tmp_path / "x.bmp")


def test_save_figure_without_chromium_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(plots.export, "find_chromium", lambda: None)
    with pytest.raises(RuntimeError, match="apt-get install chromium") as info:
        plots.save_figure(go.Figure(), tmp_path / "x.png")
    assert "HTML" in str(info.value)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
@requires(os.path.exists("/usr/bin/chromium"), "/usr/bin/chromium for PNG export (apt-get install chromium)")
def test_save_figure_png_leaves_the_environment_unchanged(channels, tmp_path, monkeypatch):
    """A real export (kaleido starts Chromium: one export for both claims): a PNG of the figure, and the
    environment as it was."""
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    before = dict(os.environ)
    out = plots.save_figure(plots.fig7(channels, "SE_2_1", "goldfish"), tmp_path / "fig7.png", width=600, height=400)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    assert dict(os.environ) == before and "BROWSER_PATH" not in os.environ


# ------------------------------------------------------------------------------------------------ from statistics
# Bounded inputs of GateStats: the figures of a run over many classes never see a class x channel x bin frame.

N_MANY = 300
WIDE = [("SE_2_1", 2, 32), ("SE_3_1", 3, 48), ("SE_3_2", 3, 48)]


@pytest.fixture(scope="module")
def many():
    """Statistics of 300 classes (per-channel histograms not kept, auto policy) and the raw gates."""
    from senet_viz.analysis.stats import GateStats

    rng = np.random.default_rng(11)
    n = 4000
    labels = rng.integers(0, N_MANY, n)
    names = [f"class{k:03d}" for k in range(N_MANY)]
    stats = GateStats.for_blocks(MODEL, [{"name": b, "stage": s, "channels": c} for b, s, c in WIDE], names,
                                 bins=BINS)
    raw = {}
    for block, _, c in WIDE:
        centres = rng.uniform(0.2, 0.8, (N_MANY, c))
        raw[block] = np.clip(centres[labels] + rng.normal(0, 0.1, (n, c)), 0, 1)
        for start in range(0, n, 256):
            stats.update(block, raw[block][start:start + 256], labels[start:start + 256])
    return stats, raw, labels, names


def test_many_classes_fig6_and_fig7_from_means_and_m2(many):
    stats, raw, labels, names = many
    assert stats.detailed_classes() == []
    shown = [names[k] for k in (0, 50, 120, 299)]
    frame = stats.frame(["SE_3_1", "SE_3_2"], shown, hist=False)
    assert "hist" not in frame.columns and len(frame) == 2 * 5 * 48  # 2 blocks x (4 classes + all), not 300
    fig = plots.fig6(frame, classes=shown, all_classes=names, all_channels=True)
    lines = [t for t in fig.data if t.meta["block"] == "SE_3_2"]
    assert [t.meta["class"] for t in lines] == [*shown, "all"]
    np.testing.assert_allclose(lines[1].y, raw["SE_3_2"][labels == 50].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(lines[-1].y, raw["SE_3_2"].mean(axis=0), rtol=1e-12)
    # colours come from every class of the statistics, not from the four in the frame
    assert lines[1].line.color == plots.class_colors(names)[names[50]]
    assert plots.class_colors(shown)[names[50]] != plots.class_colors(names)[names[50]]

    f7 = plots.fig7(stats.frame(["SE_2_1"], [names[2]], hist=False), "SE_2_1", names[2], all_channels=True)
    parts = {t.meta: t for t in f7.data}
    g = raw["SE_2_1"][labels == 2]
    np.testing.assert_allclose(parts["upper"].y, g.mean(axis=0) + g.std(axis=0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(parts["lower"].y, g.mean(axis=0) - g.std(axis=0, ddof=1), rtol=1e-9)
    assert "mean ± 1 std" in f7.layout.title.subtitle.text


def test_many_classes_distributions_from_the_pooled_sketch(many):
    stats, raw, labels, names = many
    shown = [names[0], names[5], "all"]
    blocks = stats.block_frame(["SE_3_1", "SE_3_2"], shown)
    assert "channel" not in blocks.columns and len(blocks) == 2 * 3
    fig = plots.distributions(blocks, stage=3, classes=shown, all_classes=names)
    assert [t.meta["class"] for t in fig.data] == shown
    for t in fig.data:
        for i, block in enumerate(t.x):
            k = names.index(t.meta["class"]) if t.meta["class"] != "all" else None
            values = (raw[block] if k is None else raw[block][labels == k]).ravel()
            q1, med, q3 = np.quantile(values, [0.25, 0.5, 0.75])
            assert abs(t.median[i] - med) <= 1 / BINS and abs(t.q1[i] - q1) <= 1 / BINS
            assert abs(t.q3[i] - q3) <= 1 / BINS
            assert t.mean[i] == pytest.approx(values.mean())
            assert values.min() <= t.lowerfence[i] and t.upperfence[i] <= values.max()
    violin = plots.distributions(blocks, blocks=["SE_3_2"], classes=shown, kind="violin")
    assert "histogram" in violin.layout.title.subtitle.text
    # the per-channel frame has no histogram for these classes: a clear error that names the way out
    with pytest.raises(ValueError, match="not kept.*block_frame"):
        plots.distributions(stats.frame(["SE_3_1"], [names[0]]), stage=3, classes=[names[0]])


def test_many_classes_heatmap_from_a_means_matrix(many):
    stats, raw, labels, names = many
    labels_, counts, means = stats.class_means("SE_3_2")
    fig = plots.heatmap_matrix(means, labels_, counts, model=MODEL, block="SE_3_2")
    (hm,) = fig.data
    assert np.asarray(hm.z).shape == (N_MANY, 48)
    np.testing.assert_allclose(np.asarray(hm.z)[7], raw["SE_3_2"][labels == 7].mean(axis=0), rtol=1e-12)
    assert fig.layout.yaxis.showticklabels is False and "names on hover" in fig.layout.yaxis.title.text
    assert fig.layout.height <= 40 * 60 + 200  # a 300-row figure does not grow to 12,000 px
    assert f"+{N_MANY - 8} more classes" in fig.layout.title.text
    top = plots.heatmap_matrix(means, labels_, counts, model=MODEL, block="SE_3_2", max_channels=5)
    assert np.asarray(top.data[0].z).shape == (N_MANY, 5)
    with pytest.raises(ValueError, match="one row per class"):
        plots.heatmap_matrix(means[:3], labels_, counts, model=MODEL, block="SE_3_2")


def test_heatmap_of_a_frame_equals_the_matrix_form(channels):
    fig = plots.heatmap(channels, "SE_3_1", classes=["goldfish", "tench"])
    rows = channels[channels["block"] == "SE_3_1"]
    means = np.stack([rows[rows["class"] == c].sort_values("channel")["mean"] for c in ("goldfish", "tench")])
    direct = plots.heatmap_matrix(means, ["goldfish", "tench"], [20, 30], model=MODEL, block="SE_3_1",
                                  all_classes=channels["class"].unique())
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), np.asarray(direct.data[0].z))
    assert fig.layout.title.text == direct.layout.title.text
    assert list(fig.layout.yaxis.ticktext) == list(direct.layout.yaxis.ticktext)


def test_many_classes_image_percentiles_say_the_class_histogram_is_not_kept(many):
    stats, raw, labels, names = many
    image = raw["SE_3_1"][np.flatnonzero(labels == 9)[0]]
    frame = stats.frame(["SE_3_1"], [names[9]])
    fig = plots.image_percentiles(frame, "SE_3_1", names[9], image, "img.png", all_classes=names)
    parts = {t.meta: t for t in fig.data}
    expected = plots.channel_percentiles(stats.hist("SE_3_1", "all"), image)
    np.testing.assert_allclose(parts["percentile"].y, expected)  # ranked among all images
    np.testing.assert_allclose(parts["class mean"].y, raw["SE_3_1"][labels == 9].mean(axis=0), rtol=1e-12)
    assert "not kept for this class" in fig.layout.title.subtitle.text
    assert "among all 4000 images" in fig.layout.annotations[0].text
    with pytest.raises(ValueError, match="not kept"):
        plots.image_percentiles(stats.frame(["SE_3_1"], [names[9]], include_all=False), "SE_3_1", names[9], image,
                                "img.png")


@pytest.mark.slow
def test_bounded_frames_of_small_statistics_draw_what_the_full_frame_draws():
    """The pages now pass bounded frames; for a small run the figures are those of the full frame."""
    from senet_viz.analysis.stats import GateStats

    rng = np.random.default_rng(12)
    stats = GateStats.for_blocks(MODEL, [{"name": b, "stage": s, "channels": c} for b, s, c in BLOCKS], list(CLASSES),
                                 bins=BINS)
    labels = rng.integers(0, 3, 90)
    for block, _, c in BLOCKS:
        stats.update(block, rng.uniform(size=(90, c)), labels)
    full = stats.frame()
    names = list(CLASSES)
    chosen = ["goldfish", "tench"]
    a = plots.fig6(full, classes=chosen)
    b = plots.fig6(stats.frame(PRESET, chosen, hist=False), blocks=PRESET, classes=chosen, all_classes=names)
    assert [(t.name, t.line.color, tuple(t.y)) for t in a.data] == [(t.name, t.line.color, tuple(t.y)) for t in b.data]
    assert a.layout.title.text == b.layout.title.text
    # Fig. 6 from the class means themselves, no frame in between: the same figure, number for number.
    for kw in ({}, {"all_channels": True}, {"n_channels": 5, "seed": 3}):
        means = {blk: stats.class_means(blk, chosen, include_all=True) for blk in PRESET}
        c = plots.fig6_matrix(means, model=MODEL, all_classes=names, **kw)
        assert c.to_json() == plots.fig6(full, blocks=PRESET, classes=chosen, all_classes=names, **kw).to_json()
    with pytest.raises(ValueError, match="one row and one count per class"):
        plots.fig6_matrix({"SE_3_1": (["a", "b"], [1, 2], np.zeros((3, 4)))}, model=MODEL)
    d1 = plots.distributions(full, stage=3, classes=chosen)
    d2 = plots.distributions(stats.block_frame(["SE_3_1", "SE_3_2", "SE_3_3"], chosen), stage=3, classes=chosen,
                             all_classes=names)
    for t1, t2 in zip(d1.data, d2.data, strict=True):
        for key in ("q1", "median", "q3", "lowerfence", "upperfence"):
            np.testing.assert_allclose(getattr(t1, key), getattr(t2, key), rtol=1e-12)
        np.testing.assert_allclose(t1.mean, t2.mean, rtol=1e-12)
        assert t1.marker.color == t2.marker.color
    p1 = plots.image_percentiles(full, "SE_3_3", "goldfish", np.full(128, 0.5), "x")
    p2 = plots.image_percentiles(stats.frame(["SE_3_3"], ["goldfish"]), "SE_3_3", "goldfish", np.full(128, 0.5), "x",
                                 all_classes=names)
    np.testing.assert_array_equal(p1.data[0].y, p2.data[0].y)
    assert "not kept" not in p2.layout.title.subtitle.text


def test_save_figure_hands_the_browser_to_kaleido_without_touching_the_environment(tmp_path, monkeypatch):
    import kaleido

    calls = []

    def fake_calc_fig_sync(fig_dict, opts=None, *, topojson=None, kopts=None):
        calls.append({"fig": fig_dict, "opts": opts, "kopts": dict(kopts or {})})
        return b"\x89PNG\r\n\x1a\n fake"

    monkeypatch.setattr(kaleido, "calc_fig_sync", fake_calc_fig_sync)
    monkeypatch.setattr(plots.export, "find_chromium", lambda: "/opt/some/chromium")
    monkeypatch.setenv("BROWSER_PATH", "/somewhere/else")
    before = dict(os.environ)
    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    out = plots.save_figure(fig, tmp_path / "a.png")
    plots.save_figure(fig, tmp_path / "b.svg", width=500)
    assert dict(os.environ) == before  # BROWSER_PATH and every other variable as they were
    assert out.read_bytes().startswith(b"\x89PNG")
    assert [c["kopts"]["path"] for c in calls] == ["/opt/some/chromium"] * 2
    assert calls[0]["opts"] == {"format": "png", "width": plots.EXPORT_WIDTH, "height": plots.EXPORT_HEIGHT,
                                "scale": plots.EXPORT_SCALE}
    assert calls[1]["opts"] == {"format": "svg", "width": 500, "height": plots.EXPORT_HEIGHT, "scale": 1}
    with pytest.raises(TypeError, match="engine"):
        plots.save_figure(fig, tmp_path / "c.png", engine="orca")


