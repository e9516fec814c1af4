"""Measured latency with and without SE (issue 22, part 2): the settings planned (CPU threads and batches, CUDA when
present), the variants and the table's structure on the tiny SE-ResNet, the CLI's JSON, and the paper's figures.
Few, tiny measurements and no assertion on a time: only structure and deterministic counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from senet_viz import cli
from senet_viz.analysis import latency
from senet_viz.analysis.cost import model_cost
from senet_viz.analysis.latency import (
    VARIANTS,
    Setting,
    build_variants,
    last_stage,
    latency_report,
    paper_table2,
    plan_settings,
)

TINY = dict(settings=[Setting("cpu", 1, 2)], rounds=2, block_s=1e-4, warmup=1)
COLUMNS = {"setting", "device", "threads", "batch", "dtype", "variant", "label", "ms_per_image", "iqr_ms", "q1_ms",
           "q3_ms", "rounds", "forwards_per_round", "macs", "time_vs_full", "time_saved_share", "mac_saved_share",
           "time_share_per_mac_share"}


def test_cpu_settings_are_one_and_all_threads_at_batch_1_and_32(monkeypatch):
    monkeypatch.setattr(latency, "cpu_count", lambda: 8)
    assert plan_settings(cuda=False) == [Setting("cpu", 1, 1), Setting("cpu", 1, 32), Setting("cpu", 8, 1),
                                         Setting("cpu", 8, 32)]
    monkeypatch.setattr(latency, "cpu_count", lambda: 1)
    assert plan_settings(cuda=False) == [Setting("cpu", 1, 1), Setting("cpu", 1, 32)]  # one core: one count


def test_cuda_settings_come_only_with_a_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert all(s.device == "cpu" for s in plan_settings())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = [s for s in plan_settings() if s.device == "cuda"]
    assert sorted((s.batch, s.dtype) for s in cuda) == [(1, "bf16"), (1, "fp32"), (256, "bf16"), (256, "fp32")]
    assert [s.device for s in plan_settings(cpu=False, cuda=True)] == ["cuda"] * 4
    assert plan_settings(cuda=True)[-1].label == "CUDA, batch 256, bf16"
    with pytest.raises(ValueError, match="fp32 and bf16"):
        plan_settings(cuda=True, cuda_dtypes=("fp16",))
    with pytest.raises(ValueError, match="positive"):
        plan_settings(cuda=False, batches=(0,))


@pytest.mark.slow
def test_variants_are_copies_and_slim_ones_lack_the_se_modules(tiny_seresnet):
    removed = last_stage(tiny_seresnet.blocks)
    assert [b.name for b in removed] == ["SE_5_1", "SE_5_2"]
    variants, notes = build_variants(tiny_seresnet, removed)
    assert [v.key for v in variants] == list(VARIANTS) and not notes
    by_key = {v.key: v for v in variants}
    assert all(v.model is not tiny_seresnet.model for v in variants)
    assert by_key["hooked_all"].model is by_key["full"].model  # hooks on our copy, only while a block runs
    slim = dict(by_key["slim_removed"].model.named_modules())
    assert all(type(slim[b.path]).__name__ == "Identity" for b in removed)


@pytest.mark.slow
def test_removing_every_block_has_no_separate_removed_variants(tiny_seresnet):
    variants, notes = build_variants(tiny_seresnet, tiny_seresnet.blocks)
    assert [v.key for v in variants] == ["full", "hooked_all", "slim_all"]
    variants, notes = build_variants(tiny_seresnet, [])
    assert [v.key for v in variants] == ["full", "hooked_all", "slim_all"]
    assert any("no removed set" in n for n in notes)
    with pytest.raises(ValueError, match="unknown latency variant"):
        build_variants(tiny_seresnet, [], keys=("fastest",))


@pytest.mark.slow
def test_the_table_has_every_variant_and_its_macs_and_leaves_the_model_alone(tiny_seresnet):
    before = {k: v.clone() for k, v in tiny_seresnet.model.state_dict().items()}
    report = latency_report(tiny_seresnet, **TINY)
    table = report.table
    assert set(table.columns) == COLUMNS
    assert list(table["variant"]) == list(VARIANTS)
    assert (table["ms_per_image"] > 0).all() and (table["iqr_ms"] >= 0).all() and (table["rounds"] == 2).all()
    full = table.set_index("variant").loc["full"]
    assert full["time_vs_full"] == 1.0 and full["mac_saved_share"] == 0.0
    cost = model_cost(tiny_seresnet.model, tiny_seresnet.blocks, last_stage(tiny_seresnet.blocks), (3, 64, 64))
    macs = table.set_index("variant")["macs"]
    assert macs["hooked_all"] == macs["hooked_removed"] == cost.macs  # a hook saves no MAC
    assert macs["slim_all"] == cost.macs - cost.se_macs
    assert macs["slim_removed"] == cost.macs_after
    params = {v["key"]: v["params"] for v in report.variants}
    assert params["slim_removed"] == cost.params_after and params["full"] == cost.params
    hooked = table[table["variant"].str.startswith("hooked")]
    assert hooked["time_share_per_mac_share"].isna().all()  # no MAC saved: no ratio
    slim = table.set_index("variant").loc["slim_all"]
    assert np.isclose(slim["time_share_per_mac_share"], slim["time_saved_share"] / slim["mac_saved_share"])
    assert report.removed == ["SE_5_1", "SE_5_2"] and any("hook-ablated" in n for n in report.notes)
    assert set(report.conditions) >= {"torch", "cpu_count", "load_average_before", "load_average_after"}
    after = tiny_seresnet.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks for m in tiny_seresnet.model.modules())
    json.dumps(report.to_dict(), default=str)  # JSON-ready


def test_paper_table2_shares():
    table = paper_table2().set_index("measure")
    cpu = table.iloc[0]
    assert (cpu["ResNet-50"], cpu["SE-ResNet-50"]) == (164.0, 167.0)
    assert np.isclose(cpu["time_saved_share"], 3 / 167) and np.isclose(cpu["mac_saved_share"], 0.01 / 3.87)
    assert np.isclose(table.iloc[1]["time_saved_share"], 19 / 209)


@pytest.mark.slow
def test_cli_json(capsys):
    code = cli.main(["latency", "--model", "se_resnet_fmnist", "--device", "cpu", "--threads", "1", "--batch", "2",
                     "--rounds", "1", "--block-seconds", "0.0001", "--variants", "full,slim_removed", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "se_resnet_fmnist" and out["removed"]
    assert [r["variant"] for r in out["table"]] == ["full", "slim_removed"]
    assert {r["setting"] for r in out["table"]} == {"CPU 1 thread, batch 2, fp32"}
    assert out["table"][1]["macs"] < out["table"][0]["macs"]
    assert len(out["paper"]) == 2 and "load_average_before" in out["conditions"]


def test_cli_refuses_cuda_without_a_device_and_bad_numbers(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["latency", "--model", "se_resnet_fmnist", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert cli.main(["latency", "--model", "se_resnet_fmnist", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert cli.main(["latency", "--model", "se_resnet_fmnist", "--variants", "fast"]) == 2


@pytest.mark.slow
def test_the_cost_page_measures_on_a_button_press_and_shows_the_table():
    from apptest_helpers import app_session, assert_ok, open_page

    at = open_page(app_session(), "cost", "Cost")
    assert not any("ms / image (median)" in str(d.value.columns.tolist()) for d in at.dataframe)  # not before
    assert at.button(key="latency_measure").label == "Measure on the CPU"
    at.multiselect(key="latency_threads").set_value([1])
    at.multiselect(key="latency_batches").set_value([1])
    at.number_input(key="latency_rounds").set_value(3)
    at.run()
    at.button(key="latency_measure").click()
    at.run()
    assert_ok(at)
    tables = [d.value for d in at.dataframe if "ms / image (median)" in d.value.columns]
    assert len(tables) == 1
    table = tables[0]
    assert list(table["network"]) == ["full network", "all SE gates hooked to 1", "no SE modules",
                                      "removed set hooked to 1", "slim export (removed set gone)"]
    assert set(table["setting"]) == {"CPU 1 thread, batch 1, fp32"}
    assert any("SE-ResNet-50" in d.value.columns for d in at.dataframe)  # the paper's timings beside
