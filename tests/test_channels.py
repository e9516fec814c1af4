"""Single SE channels (issue 14): class selectivity from the statistics, exemplar search in memory and streamed from
extract files, the SE-input maps, the ``channels`` command, and the Channels page (AppTest)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import EMBEDDED_MISSING, REPO_ROOT, embedded_model_ready, requires
from PIL import Image

from senet_viz.analysis import channels, exemplars
from senet_viz.analysis.correlation import spearman
from senet_viz.analysis.stats import GateStats
from senet_viz.data.store import ExcitationWriter, read_excitations
from senet_viz.gates.capture import hook_count
from senet_viz.gates.kinds import SEBlock
from senet_viz.inference.run import Result

CLASSES = [f"c{i}" for i in range(5)]


def _stats(gates: np.ndarray, labels: np.ndarray, name: str = "SE_5_1") -> GateStats:
    stats = GateStats.for_blocks("toy", [{"name": name, "stage": 5, "channels": gates.shape[1]}], CLASSES)
    stats.update(name, gates, labels)
    return stats


def _constructed(rng: np.random.Generator, per_class: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Channel 0: open (about 0.9) only for class 2, shut (about 0.01) for every other class. Channel 1: about 0.5
    for every class. Channel 2: uniform noise."""
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    n = len(labels)
    gates = np.empty((n, 3))
    gates[:, 0] = np.where(labels == 2, 0.9, 0.01) + rng.normal(0, 0.005, n)
    gates[:, 1] = 0.5 + rng.normal(0, 0.02, n)
    gates[:, 2] = rng.random(n)
    return np.clip(gates, 0, 1), labels


# ------------------------------------------------------------------------------------------ selectivity


def test_a_channel_open_for_one_class_only_is_selective_for_that_class():
    gates, labels = _constructed(np.random.default_rng(0))
    table = channels.channel_table(_stats(gates, labels), "SE_5_1")
    one = table.iloc[0]
    assert one["selectivity"] > 0.95
    assert one["preferred_class"] == "c2" and one["preferred_index"] == 2 and one["preferred_count"] == 40
    assert one["eta2"] > 0.99  # nearly all of its variance lies between the classes
    assert one["mu_max"] == pytest.approx(0.9, abs=0.01) and one["mu_rest"] == pytest.approx(0.01, abs=0.01)


def test_a_channel_equal_for_all_classes_has_selectivity_near_0():
    gates, labels = _constructed(np.random.default_rng(1))
    table = channels.channel_table(_stats(gates, labels), "SE_5_1")
    assert table.iloc[1]["selectivity"] < 0.03
    assert table.iloc[1]["eta2"] < 0.1
    assert channels.most_selective(table, 2)["channel"].tolist() == [0, 2]


def test_selectivity_index_edge_cases():
    si, pref = channels.selectivity_index(np.array([[0.0, 0.2, 1.0], [0.0, 0.2, 0.0]]))
    assert si.tolist() == [0.0, 0.0, 1.0] and pref.tolist() == [0, 0, 0]  # all shut: 0, not NaN
    assert np.isnan(channels.selectivity_index(np.ones((1, 4)))[0]).all()  # one class: nothing to compare
    # Morcos et al.: (mu_max - mu_rest) / (mu_max + mu_rest), mu_rest = mean of the other classes' means
    si, pref = channels.selectivity_index(np.array([[0.2], [0.8], [0.4]]))
    assert si[0] == pytest.approx((0.8 - 0.3) / (0.8 + 0.3)) and pref[0] == 1


def test_eta2_matches_a_direct_computation_and_needs_two_images_in_a_class():
    rng = np.random.default_rng(2)
    gates, labels = rng.random((60, 4)), rng.integers(0, 5, 60)
    table = channels.channel_table(_stats(gates, labels), "SE_5_1")
    grand = gates.mean(axis=0)
    between = sum(((labels == k).sum() * (gates[labels == k].mean(axis=0) - grand) ** 2) for k in np.unique(labels))
    total = ((gates - grand) ** 2).sum(axis=0)
    np.testing.assert_allclose(table["eta2"], between / total, rtol=1e-9)
    single = channels.channel_table(_stats(gates[:5], np.arange(5)), "SE_5_1")
    assert single["eta2"].isna().all()


def test_block_summary_and_the_depth_trend():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(5), 20)
    blocks = [{"name": f"SE_{i}", "stage": i, "channels": 8} for i in range(2, 7)]
    stats = GateStats.for_blocks("toy", blocks, CLASSES)
    for depth, b in enumerate(blocks):  # deeper blocks: more of the gate depends on the class
        tuned = np.where(labels[:, None] == np.arange(8)[None, :] % 5, 0.9, 0.5 - 0.1 * depth)
        stats.update(b["name"], np.clip(tuned + rng.normal(0, 0.01, (100, 8)), 0, 1), labels)
    summary = channels.block_summary(stats)
    assert summary["block"].tolist() == [b["name"] for b in blocks]
    assert (np.diff(summary["selectivity_median"]) > 0).all()
    assert (summary["selectivity_q25"] <= summary["selectivity_median"]).all()
    assert (summary["class_means_from"] == "classes").all()
    trend = channels.depth_trend(summary)
    assert trend["rho"] == pytest.approx(1.0) and trend["verdict"] == "rises with depth"
    assert trend["p_value"] == pytest.approx(2 / 120)  # exact: 2 of the 5! orders are as extreme
    one_each = GateStats.for_blocks("toy", blocks[:1], CLASSES)
    one_each.update("SE_2", rng.random((5, 8)), np.arange(5))
    assert channels.block_summary(one_each)["class_means_from"].tolist() == ["single images"]


def test_spearman_against_a_reference():
    x = np.arange(12)
    y = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], float)
    rho, p = spearman(x, y, permutations=20_000)
    ranks = pd.Series(y).rank().to_numpy()
    assert rho == pytest.approx(np.corrcoef(x, ranks)[0, 1])
    assert 0 < p < 1
    assert np.isnan(spearman([1, 2], [3, 4])[0])


# ------------------------------------------------------------------------------------------ exemplars


def _blocks() -> list[SEBlock]:
    return [SEBlock(name=n, path=f"m.{n}", gate_path=f"m.{n}.gate", stage=s, index=1, order=i, channels=c, params=0,
                    kind="timm", gate_fn="Sigmoid") for i, (n, s, c) in enumerate([("SE_4_1", 4, 6), ("SE_5_1", 5, 9)])]


def _result(gates: dict[str, np.ndarray], first: int, labels: np.ndarray) -> Result:
    n = len(labels)
    keys = [f"img_{first + i:04d}.png" for i in range(n)]
    return Result(model="toy", keys=keys, names=keys, labels=labels, label_names=[CLASSES[k] for k in labels],
                  pred=(labels + 1) % len(CLASSES), top5=np.zeros((n, 5), np.int64),
                  top5_prob=np.zeros((n, 5), np.float32), gates=gates)


def _write_extract(path, rng, n: int = 500, chunk: int = 64, ties: bool = True):
    """An extract written with the project's writer, ``chunk`` images per row group; returns the float16 gates."""
    blocks = _blocks()
    gates = {b.name: rng.random((n, b.channels)).astype(np.float16) for b in blocks}
    if ties:  # equal values across row groups: the order must still be the one answer (lower row first)
        gates["SE_5_1"][::7, 3] = 1.0
        gates["SE_5_1"][::11, 4] = 0.0
    labels = rng.integers(0, len(CLASSES), n)
    with ExcitationWriter(path, blocks, {"model": "toy", "class_names": CLASSES}) as writer:
        for s in range(0, n, chunk):
            writer.write(_result({k: v[s:s + chunk] for k, v in gates.items()}, s, labels[s:s + chunk]))
    return gates, labels


def _reference(gates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top / bottom k rows per channel over the whole array: by value, then the lower row."""
    rows = np.arange(len(gates))
    values = gates.astype(np.float32)
    top = np.stack([np.lexsort((rows, -values[:, c]))[:k] for c in range(values.shape[1])], axis=1)
    bottom = np.stack([np.lexsort((rows, values[:, c]))[:k] for c in range(values.shape[1])], axis=1)
    return top, bottom


def test_top_k_over_a_streamed_extract_equals_top_k_over_the_whole_array(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "gates.parquet"
    gates, labels = _write_extract(path, np.random.default_rng(4))
    assert pq.ParquetFile(path).num_row_groups == 8  # several row groups, the last one short
    for block, k, batch_rows in (("SE_5_1", 16, 1024), ("SE_5_1", 5, 10), ("SE_4_1", 3, 64)):
        found = exemplars.exemplars_from_extract(path, block, k, batch_rows=batch_rows)
        top, bottom = _reference(gates[block], k)
        np.testing.assert_array_equal(found.top_rows, top)
        np.testing.assert_array_equal(found.bottom_rows, bottom)
        np.testing.assert_array_equal(found.top_values, np.take_along_axis(gates[block], top, 0).astype(np.float32))
        np.testing.assert_array_equal(found.bottom_values,
                                      np.take_along_axis(gates[block], bottom, 0).astype(np.float32))
        assert found.n_images == 500
    # the metadata of the kept rows only, read back by row
    frame = found.frame(channel=2, class_names=CLASSES)
    assert len(frame) == 6 and set(frame["end"]) == {"highest", "lowest"}
    assert frame["key"].tolist() == [f"img_{r:04d}.png" for r in frame["row"]]
    assert frame["label"].tolist() == labels[frame["row"]].tolist()
    assert frame["pred_name"].tolist() == [CLASSES[(k + 1) % 5] for k in labels[frame["row"]]]


def test_streamed_shards_channel_subsets_and_memory_give_the_same_exemplars(tmp_path):
    rng = np.random.default_rng(5)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    gates_a, labels_a = _write_extract(a, rng, n=130, chunk=50)
    gates_b, labels_b = _write_extract(b, rng, n=90, chunk=40)
    whole = np.concatenate([gates_a["SE_5_1"], gates_b["SE_5_1"]])
    found = exemplars.exemplars_from_extract([a, b], "SE_5_1", 7, channels=[8, 3])
    top, bottom = _reference(whole[:, [8, 3]], 7)
    np.testing.assert_array_equal(found.top_rows, top)
    np.testing.assert_array_equal(found.bottom_rows, bottom)
    assert found.frame(3)["channel"].unique().tolist() == [3]
    with pytest.raises(KeyError, match="not searched"):
        found.frame(4)
    # in memory, from a run's kept gates: the same rows
    read = read_excitations([a, b])
    result = _result(read.gates, 0, read.labels)
    result.keys = read.keys
    memory = exemplars.exemplars_from_result(result, "SE_5_1", 7, [8, 3])
    np.testing.assert_array_equal(memory.top_rows, found.top_rows)
    np.testing.assert_array_equal(memory.bottom_rows, found.bottom_rows)
    assert memory.frame(8)["key"].tolist() == found.frame(8)["key"].tolist()
    # one channel's values, streamed
    values = exemplars.channel_values_from_extract([a, b], "SE_5_1", 8, batch_rows=33)
    np.testing.assert_array_equal(values["gate"].to_numpy(), whole[:, 8].astype(np.float64))
    np.testing.assert_array_equal(values["label"].to_numpy(), np.concatenate([labels_a, labels_b]))
    with pytest.raises(ValueError, match="out of range"):
        exemplars.exemplars_from_extract(a, "SE_5_1", 3, channels=[9])
    with pytest.raises(ValueError, match="not in"):
        exemplars.exemplars_from_extract(a, "SE_9_9", 3)


def test_stats_for_extract_groups_by_label_or_prediction(tmp_path):
    path = tmp_path / "gates.parquet"
    gates, labels = _write_extract(path, np.random.default_rng(6), n=200, chunk=64)
    by_label = channels.stats_for_extract(path, ["SE_5_1"], batch_rows=50)
    expected = GateStats.for_blocks("toy", [{"name": "SE_5_1", "stage": 5, "channels": 9}], CLASSES)
    expected.update("SE_5_1", gates["SE_5_1"], labels)
    np.testing.assert_allclose(by_label.class_means("SE_5_1")[2], expected.class_means("SE_5_1")[2], rtol=1e-12)
    assert [b.name for b in by_label.blocks] == ["SE_5_1"]
    by_pred = channels.stats_for_extract(path, by="prediction")
    counts = by_pred.class_table("SE_4_1").set_index("class")["count"]
    assert counts["c1"] == int((labels == 0).sum())  # pred = label + 1 in these files


# ------------------------------------------------------------------------------------------ SE-input maps


def test_pregate_maps_read_the_se_input_and_leave_no_hook(tiny_seresnet, tiny_input):
    from senet_viz.analysis.channel_maps import display_image, pregate_maps

    block = tiny_seresnet.blocks[-1]
    module = tiny_seresnet.model.get_submodule(block.path)
    seen = {}
    handle = module.register_forward_pre_hook(lambda _m, inputs: seen.setdefault("x", inputs[0].detach().clone()))
    try:
        with torch.inference_mode():
            tiny_seresnet.model(tiny_input)
    finally:
        handle.remove()
    before = {k: v.clone() for k, v in tiny_seresnet.model.state_dict().items()}
    maps, squeezed = pregate_maps(tiny_seresnet, tiny_input, block, 5)
    assert maps.shape == (4, 64, 64) and maps.dtype == np.float32
    np.testing.assert_allclose(squeezed, seen["x"][:, 5].mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-6)
    assert hook_count(tiny_seresnet.model) == 0
    assert all(torch.equal(v, tiny_seresnet.model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="out of range"):
        pregate_maps(tiny_seresnet, tiny_input, block, block.channels)
    crop = display_image(tiny_seresnet, Image.new("RGB", (100, 80), "red"))
    assert crop.shape == (64, 64, 3)


# ------------------------------------------------------------------------------------------ the command


@pytest.mark.slow
def test_the_channels_command_writes_tables_and_contact_sheets(tmp_path):
    path = tmp_path / "gates.parquet"
    gates, labels = _write_extract(path, np.random.default_rng(7), n=120, chunk=32)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(120):
        Image.new("RGB", (40, 30), (i * 2, 100, 200 - i)).save(folder / f"img_{i:04d}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "senet_viz", "channels", "--excitations", str(path), "--block", "SE_5_1",
           "--top", "4", "--sheets", "2", "--images", str(folder), "--out", str(out), "--json"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["blocks"] == ["SE_5_1"] and report["n_images"] == 120 and report["images_not_found"] == 0
    assert len(report["sheets"]) == 2
    for sheet in report["sheets"]:
        with Image.open(sheet) as image:
            assert image.width == 4 * 128 and image.height > 2 * 128
    table = pd.read_csv(out / "channels_SE_5_1.csv")
    assert len(table) == 9 and {"selectivity", "preferred_class", "eta2"} <= set(table.columns)
    ex = pd.read_csv(out / "exemplars_SE_5_1.csv")
    top, _ = _reference(gates["SE_5_1"], 4)
    assert ex[(ex["channel"] == 3) & (ex["end"] == "highest")]["row"].tolist() == top[:, 3].tolist()
    assert (out / "top_channels_SE_5_1.csv").is_file() and (out / "selectivity_by_block.csv").is_file()
    assert (out / "selectivity_depth.html").is_file()
    bad = subprocess.run([*cmd[:6], "--block", "SE_9_9", "--out", str(out)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "unknown block" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------------------ MobileNetV3-Small


@pytest.mark.slow
def test_selectivity_by_depth_on_the_900_shared_images(mnv3_tflite, imagenet_samples):
    """What benchmarks/channel_selectivity.py measures, in-process: one image per class, so class means are single
    images (the summary says so); values are indices in [0, 1] for each of the 9 SE blocks."""
    from senet_viz.data.folders import folder_source
    from senet_viz.inference.run import RunOptions, run_model

    images = folder_source(imagenet_samples, class_names=mnv3_tflite.class_names, wnids=mnv3_tflite.wnids)
    result = run_model(mnv3_tflite, images, options=RunOptions(keep_logits=False))
    stats = GateStats.from_result(result, mnv3_tflite.blocks, images.class_names, detail_classes=[])
    summary = channels.block_summary(stats)
    assert len(summary) == 9 and (summary["class_means_from"] == "single images").all()
    assert summary["selectivity_median"].between(0, 1).all() and summary["eta2_median"].isna().all()
    trend = channels.depth_trend(summary)
    print(summary[["block", "selectivity_median"]].to_string(index=False), trend)
    assert -1 <= trend["rho"] <= 1


# ------------------------------------------------------------------------------------------ the page (AppTest)


@pytest.mark.slow
@requires(embedded_model_ready("se_resnet_fmnist"), EMBEDDED_MISSING)
def test_the_channels_page_renders_exemplars_and_follows_query_params():
    from apptest_helpers import assert_ok, open_page
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=240)
    at.run()
    at.selectbox(key="model_name").set_value("se_resnet_fmnist")
    at.run()
    assert_ok(at)
    open_page(at, "channels", "Channels")
    block_key, channel_key = "channels_block@se_resnet_fmnist", "channels_channel@se_resnet_fmnist"
    assert at.selectbox(key=block_key).value == "SE_5_2"  # the last block first
    area = [b for b in at.main.children.values() if getattr(b, "key", None) == "channel_exemplars"]
    assert len(area) == 1
    shown = [img for element in area[0].children.values() if element.type == "image" for img in element.proto.imgs]
    assert len(shown) == 2 * 8  # 8 highest + 8 lowest of the 300 embedded samples
    assert all(img.caption.startswith("s=") for img in shown)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 3  # depth, per-class distribution, SE-input maps
    assert charts[0]["data"][0]["meta"] == {"metric": "selectivity", "part": "q75"}
    assert {t["type"] for t in charts[2]["data"]} == {"image", "heatmap"}
    first = at.number_input(key=channel_key).value
    top = at.dataframe[0].value
    assert first == int(top["channel"].iloc[0])  # first visit: the most class-specific channel
    # a click-through from Compare classes arrives as ?block=..&channel=..
    at.query_params["block"] = "SE_4_1"
    at.query_params["channel"] = "3"
    at.run()
    assert_ok(at)
    assert at.selectbox(key=block_key).value == "SE_4_1" and at.number_input(key=channel_key).value == 3
    assert "block" not in at.query_params  # applied once, then dropped
    assert any("SE_4_1 · channel 3" in m.value for m in at.markdown)
    at.number_input(key=channel_key).set_value(5).run()
    assert_ok(at)
    assert any("SE_4_1 · channel 5" in m.value for m in at.markdown)
    open_page(at, "export", "Export")  # the tables and figures are offered for export
    listed = " ".join(m.value for m in at.markdown)
    for name in ("Most class-specific channels", "Channel exemplars", "Channel selectivity by depth",
                 "Channel gate per class", "Channel input maps"):
        assert f"**{name}**" in listed, name


@pytest.mark.slow
@requires(embedded_model_ready("se_resnet_fmnist"), EMBEDDED_MISSING)
def test_the_channels_page_reads_an_extract_file(tmp_path, monkeypatch):
    from apptest_helpers import assert_ok, open_page
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))  # the typed paths lie inside the server's roots
    path = tmp_path / "gates.parquet"
    _write_extract(path, np.random.default_rng(8), n=150, chunk=40)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(150):
        Image.new("RGB", (32, 32), (i, 80, 160)).save(folder / f"img_{i:04d}.png")
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=240)
    at.run()
    open_page(at, "channels", "Channels")
    at.radio(key="channels_source").set_value("An extract file (Parquet on the server)").run()
    at.text_input(key="channels_extract").input(str(path)).run()
    at.text_input(key="channels_images").input(str(folder)).run()
    assert_ok(at)
    assert at.selectbox(key="channels_block@toy").value == "SE_5_1"
    at.number_input(key="channels_channel@toy").set_value(3).run()
    assert_ok(at)
    area = [b for b in at.main.children.values() if getattr(b, "key", None) == "channel_exemplars"]
    shown = [img for element in area[0].children.values() if element.type == "image" for img in element.proto.imgs]
    assert len(shown) == 16
    expected = exemplars.exemplars_from_extract(path, "SE_5_1", 8, [3]).frame(3)
    assert [img.caption.split(" · ")[0] for img in shown] == [f"s={g:.3f}" for g in expected["gate"]]
    assert any("choose toy in the sidebar" in i.value for i in at.info)  # no network for the maps
    at.radio(key="channels_extract_by").set_value("prediction").run()
    assert_ok(at)
    assert "grouped by predicted class" in " ".join(c.value for c in at.caption)


@pytest.mark.slow
@requires(embedded_model_ready("se_resnet_fmnist"), EMBEDDED_MISSING)
def test_a_run_without_per_image_gates_still_ranks_its_channels(monkeypatch):
    from apptest_helpers import open_page
    from streamlit.testing.v1 import AppTest

    from ui import engine, results

    monkeypatch.setattr(results, "KEEP_GATES_LIMIT", 10)  # the 300 embedded samples count as a large run
    engine.engine().results.clear()
    try:
        at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=240)
        at.run()
        open_page(at, "channels", "Channels")
        assert any("per-image gates are kept for at most 10" in i.value for i in at.info)
        assert len(at.dataframe) == 1 and len(at.get("plotly_chart")) == 1  # the table and the depth chart
        assert not [b for b in at.main.children.values() if getattr(b, "key", None) == "channel_exemplars"]
    finally:
        engine.engine().results.clear()  # no gate-less run left for the other tests
