"""Every command of ``python -m senet_viz`` on the embedded model ``se_resnet_fmnist`` and a handful of its samples
(2 per class, 20 images): what each writes and prints, checked against the library (the model's own blocks and
parameters, the Parquet it wrote). In-process through ``cli.main(argv)`` (the entry point of ``python -m senet_viz``
and of the ``senet-viz`` script) to spare an interpreter start per command; tests/test_cli.py runs subprocesses.
"""

from __future__ import annotations

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import EMBEDDED_MISSING, REPO_ROOT, embedded_model_ready, requires
from PIL import Image

from senet_viz import cli, plots
from senet_viz.analysis.stats import GateStats
from senet_viz.data.store import read_excitations
from senet_viz.models import registry, zoo

MODEL = "se_resnet_fmnist"
SAMPLES = REPO_ROOT / "assets" / "fmnist_samples"
PER_CLASS = 2
N = 10 * PER_CLASS
IMAGES = ("--images", str(SAMPLES), "--per-class", str(PER_CLASS))
COMMON = ("--model", MODEL, "--device", "cpu")

pytestmark = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


def run(capsys, *args: str | Path) -> dict | list:
    """``senet_viz <args> --json`` in-process: exit code 0 and one JSON document on stdout."""
    code = cli.main([str(a) for a in args] + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out)


@pytest.fixture(scope="module")
def loaded():
    return zoo.load_model(MODEL, device="cpu")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def extracted(workdir) -> Path:
    """`extract` of the 20 images, for the commands that read it (extract itself is checked in its own test)."""
    out = workdir / "gates.parquet"
    assert cli.main(["extract", *COMMON, *IMAGES, "--out", str(out), "--batch-size", "8"]) == 0
    return out


# ------------------------------------------------------------------------------------------- models, blocks, cost


def test_models_lists_the_embedded_model_with_its_shipped_weights(capsys):
    rows = run(capsys, "models")
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(registry.REGISTRY)
    assert all(set(r) == {"name", "source", "family", "paper_name", "weights"} for r in rows)
    # found in assets/ although the tests run with an empty HOME and cache (tests/conftest.py)
    assert by_name[MODEL]["weights"] == "file" and by_name[MODEL]["source"] == "senet_viz"
    assert by_name[MODEL]["family"] == "SE-ResNet"
    # the plain listing: one line per model, its name first
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [r["name"] for r in rows]


def test_blocks_of_the_embedded_model_are_its_se_modules(capsys, loaded):
    rows = run(capsys, "blocks", *COMMON)
    assert [r["name"] for r in rows] == [b.name for b in loaded.blocks]
    assert [r["name"] for r in rows] == ["SE_2_1", "SE_3_1", "SE_4_1", "SE_5_1", "SE_5_2"]
    for row, block in zip(rows, loaded.blocks, strict=True):
        module = loaded.model.get_submodule(row["path"])
        assert row["params"] == sum(p.numel() for p in module.parameters()) > 0
        assert row["channels"] == block.channels and row["stage"] == int(row["name"].split("_")[1])
        assert row["gate"].startswith(row["path"] + ".")


def test_cost_without_stage_5_removes_exactly_its_se_parameters(capsys, loaded):
    out = run(capsys, "cost", *COMMON, "--ablate", "stage:5")
    params = sum(p.numel() for p in loaded.model.parameters())
    stage5 = [b for b in loaded.blocks if b.stage == 5]
    assert out["params"] == params
    assert out["removed"] == [b.name for b in stage5]
    assert out["params_removed"] == sum(b.params for b in stage5)
    assert out["params_after"] == params - out["params_removed"]
    assert out["se_params"] == sum(b.params for b in loaded.blocks)
    assert out["input_size"] == [1, 28, 28]
    assert 0 < out["gmacs_removed"] < out["gmacs"] < 1  # a small network at 28 x 28


# -------------------------------------------------------------------------------------- extract, stats, figure


@pytest.mark.slow
def test_extract_writes_every_gate_of_the_20_images(capsys, loaded, workdir):
    out = workdir / "extract-test.parquet"
    summary = run(capsys, "extract", *COMMON, *IMAGES, "--out", out, "--batch-size", "8")
    assert summary["out"] == str(out) and out.is_file() and summary["bytes"] == out.stat().st_size
    assert summary["n_images"] == N and summary["n_skipped"] == 0 and summary["skipped"] == []
    assert summary["blocks"] == [b.name for b in loaded.blocks]
    gates = read_excitations(out)
    assert len(gates.keys) == N and set(gates.label_names) == set(loaded.class_names)
    assert [loaded.class_names[k] for k in gates.labels] == list(gates.label_names)
    assert np.bincount(gates.labels, minlength=10).tolist() == [PER_CLASS] * 10
    for block in loaded.blocks:
        g = gates.gates[block.name]
        assert g.shape == (N, block.channels) and g.dtype == np.float16
        assert 0.0 <= g.min() and g.max() <= 1.0 and g.std() > 0


def test_stats_from_the_extract_match_the_gates_and_write_a_bundle(capsys, loaded, extracted, workdir):
    parquet = extracted
    out, bundle = workdir / "stats.parquet", workdir / "analysis.senetviz.zip"
    rows = run(capsys, "stats", "--excitations", parquet, "--out", out, "--bundle", bundle)
    assert out.is_file() and bundle.is_file()
    assert [r["block"] for r in rows] == [b.name for b in loaded.blocks]
    gates = read_excitations(parquet)
    for r in rows:
        assert r["n_images"] == N and r["n_classes"] == 10
        assert 0.0 <= r["specificity"] <= 1.0 and 0.0 <= r["saturation"] <= 1.0
        g = gates.gates[r["block"]].astype(np.float64)
        assert r["mean_gate"] == pytest.approx(g.mean(), abs=1e-6)
        assert r["gate_min"] == pytest.approx(g.min()) and r["gate_max"] == pytest.approx(g.max())
    saved = GateStats.load(out)
    assert saved.model == MODEL and saved.n_images() == N
    assert saved.indices()["block"].tolist() == [r["block"] for r in rows]


@pytest.fixture(scope="module")
def stats_file(extracted, workdir) -> Path:
    out = workdir / "stats-for-figures.parquet"
    assert cli.main(["stats", "--excitations", str(extracted), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("kind", ["fig6", "fig7", "distributions", "depth", "heatmap"])
def test_figure_writes_each_kind_as_a_standalone_html(capsys, stats_file, workdir, kind):
    out = workdir / f"{kind}.html"
    result = run(capsys, "figure", "--stats", stats_file, "--kind", kind, "--out", out)
    assert result == {"out": str(out), "kind": kind, "title": result["title"]}
    assert result["title"].strip()
    html = out.read_text(encoding="utf-8")
    assert "<html>" in html[:100].lower() and "plotly" in html.lower()
    assert out.stat().st_size > 1_000_000  # plotly.js is embedded: opens offline
    if kind in ("fig6", "heatmap"):
        assert MODEL in result["title"]


@pytest.mark.slow
@requires(plots.find_chromium(), "Chromium for PNG export (apt-get install chromium)")
def test_figure_writes_a_png(capsys, stats_file, workdir):
    out = workdir / "fig6.png"
    run(capsys, "figure", "--stats", stats_file, "--kind", "fig6", "--out", out)
    image = Image.open(out)
    assert image.format == "PNG" and image.width >= 1000 and image.height >= 500


def test_figure_with_an_unknown_class_exits_2(capsys, stats_file, workdir):
    assert cli.main(["figure", "--stats", str(stats_file), "--kind", "fig7", "--classes", "zebra",
                     "--out", str(workdir / "x.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "zebra" in err and "Traceback" not in err
    assert not (workdir / "x.html").exists()


# ------------------------------------------------------------------------------------------ evaluate, sweep, paper


def test_evaluate_without_the_last_block_scores_the_20_images(capsys, loaded):
    out = run(capsys, "evaluate", *COMMON, *IMAGES, "--ablate", "last:1")
    last = loaded.blocks[-1]
    assert out["ablated"] == [last.name] and out["mode"] == "identity"
    assert out["n_images"] == out["n_scored"] == N and out["n_skipped"] == 0
    assert 0.7 <= out["full_top1"] <= 1.0  # the model's card: 92% on the test set
    assert out["full_top1"] <= out["full_top5"] <= 1.0 and 0.0 <= out["top1"] <= out["top5"] <= 1.0
    assert 0.0 <= out["agreement"] <= 1.0 and out["kl"] >= 0.0
    assert out["params_removed"] == last.params and out["params_after"] == out["params"] - last.params


@pytest.mark.slow
def test_precision_is_chosen_on_the_command_line_and_reported(capsys):
    """--precision reaches the passes (fp16 autocast runs on the CPU too) and the JSON says what ran."""
    exact = run(capsys, "evaluate", *COMMON, *IMAGES, "--ablate", "last:1", "--precision", "fp32")
    half = run(capsys, "evaluate", *COMMON, *IMAGES, "--ablate", "last:1", "--precision", "fp16")
    default = run(capsys, "evaluate", *COMMON, *IMAGES, "--ablate", "last:1")
    assert exact["precision"] == default["precision"] == "fp32"  # auto is fp32 on the CPU
    assert half["precision"] == "fp16" and half["fp32_fallback_batches"] == 0
    assert half["kl"] != exact["kl"], "fp16 ran in fp32"
    assert abs(half["full_top1"] - exact["full_top1"]) <= 0.1
    with pytest.raises(SystemExit) as exc:  # argparse refuses an unknown precision
        cli.main(["evaluate", *COMMON, *IMAGES, "--precision", "fp8"])
    assert exc.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_sweep_writes_one_row_per_stage_and_mode_and_the_figure(capsys, loaded, workdir):
    out, figure = workdir / "sweep.csv", workdir / "sweep.html"
    result = run(capsys, "sweep", *COMMON, *IMAGES, "--modes", "identity,mean", "--kinds", "stage", "--out", out,
                 "--figure", figure)
    assert result["out"] == str(out) and out.is_file() and figure.is_file()
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    stages = sorted({b.stage for b in loaded.blocks})
    assert len(rows) == len(result["rows"]) == 2 * len(stages)
    assert [r["config"] for r in rows] == [r["config"] for r in result["rows"]]
    assert sorted((r["config"], r["mode"]) for r in result["rows"]) == [
        (f"stage {s}", mode) for s in stages for mode in ("identity", "mean")]
    full = {r["full_top1"] for r in result["rows"]}
    assert len(full) == 1  # every configuration is scored against the same full network on the same images
    for row in result["rows"]:
        stage = [b for b in loaded.blocks if b.stage == int(row["config"].split()[-1])]
        assert row["kind"] == "stage" and row["blocks"] == ",".join(b.name for b in stage)
        assert row["params_removed"] == sum(b.params for b in stage)
        assert 0.0 <= row["top1"] <= 1.0 and 0.0 <= row["agreement"] <= 1.0 and row["kl"] >= 0.0
        assert row["d_top1"] == pytest.approx(100 * (row["top1"] - row["full_top1"]))
        # "mean" among the modes: every row is scored outside the calibration split, which is never scored
        assert row["n_calibration"] > 0 and row["n_images"] + row["n_calibration"] == N


def test_paper_preset_on_two_classes_writes_stats_bundle_and_figures(capsys, loaded, workdir):
    out = workdir / "paper"
    result = run(capsys, "paper", *COMMON, "--images", SAMPLES, "--classes", "Bag,Sneaker", "--per-class", "3",
                 "--out", out)
    assert result["model"] == MODEL and result["classes"] == {"Bag": 3, "Sneaker": 3}
    assert result["n_images"] == 10 * 3 and result["n_skipped"] == 0  # the all-class curve: 3 of every class
    files = result["files"]
    assert set(files) == {"stats", "bundle", "fig6", "fig7 Bag", "fig7 Sneaker", "chance_csv", "chance_json"}
    assert [r["block"] for r in result["chance"]] == [b.name for b in loaded.blocks]
    assert {r["n_images"] for r in result["chance"]} == {6}  # the chosen classes' images
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in files.values())
    assert [r["block"] for r in result["indices"]] == [b.name for b in loaded.blocks]
    stats = GateStats.load(files["stats"])
    assert sorted(stats.class_label(k) for k in stats.classes()) == ["Bag", "Sneaker"]
    assert stats.n_images() == 30


# ------------------------------------------------------------------------------------------------------ train


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(">u1").tobytes()


@pytest.mark.slow
def test_train_one_epoch_on_the_samples_writes_weights_metrics_and_card(capsys, loaded, tmp_path):
    # a tiny Fashion-MNIST in IDX files: PER_CLASS of the embedded samples of each class as both splits
    classes = sorted(d for d in SAMPLES.iterdir() if d.is_dir())
    files = [f for cls in classes for f in sorted(cls.glob("*.png"))[:PER_CLASS]]
    assert len(files) == N
    names = {name.replace(" ", "_").replace("/", "_"): i for i, name in enumerate(loaded.class_names)}
    images = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    labels = np.array([names[f.parent.name] for f in files])
    data = tmp_path / "data"
    data.mkdir()
    for prefix in ("train", "t10k"):
        (data / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (data / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    weights = tmp_path / "model" / "tiny.safetensors"
    metrics = run(capsys, "train", "--data", data, "--no-download", "--epochs", "1", "--batch-size", "32",
                  "--threads", "1", "--out", weights, "--samples", SAMPLES)
    assert weights.is_file() and weights.with_suffix(".json").is_file() and weights.with_suffix(".md").is_file()
    assert json.loads(weights.with_suffix(".json").read_text()) == metrics
    assert metrics["model"] == MODEL and metrics["weights"] == weights.name
    assert metrics["data"]["train_images"] == metrics["data"]["test_images"] == len(files) == N
    assert metrics["sample_images"] == 300 and len(metrics["history"]) >= 1
    assert 0.0 <= metrics["test_top1"] <= 1.0 and metrics["test_errors"] == round((1 - metrics["test_top1"]) * N)
    assert metrics["architecture"]["se_blocks"] == [b.name for b in loaded.blocks]
    assert metrics["architecture"]["params"] == sum(p.numel() for p in loaded.model.parameters())
    assert weights.name in weights.with_suffix(".md").read_text()
    # the written weights load and score the samples as the metrics say
    out = run(capsys, "evaluate", *COMMON, "--weights", weights, "--images", SAMPLES)
    assert out["weights"].endswith(weights.name) and out["n_images"] == 300
    assert out["full_top1"] == pytest.approx(metrics["sample_top1"], abs=1e-9)
