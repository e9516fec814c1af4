"""``python -m senet_viz slim``: the files, the parameter count of the cost table, and the round trip through
``evaluate --weights`` (the JSON beside the weights rebuilds the slim network)."""

from __future__ import annotations

import json

import pytest
from conftest import EMBEDDED_MISSING, REPO_ROOT, embedded_model_ready, requires

from senet_viz.cli import main

pytestmark = requires(embedded_model_ready(), EMBEDDED_MISSING)
SAMPLES = str(REPO_ROOT / "assets" / "fmnist_samples")


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_slim_identity_round_trip_through_evaluate(tmp_path, capsys):
    out = run_json(capsys, "slim", "--model", "se_resnet_fmnist", "--remove", "stage:5", "--out", str(tmp_path))
    assert [r["block"] for r in out["removed"]] == ["SE_5_1", "SE_5_2"]
    assert {r["how"] for r in out["removed"]} == {"identity"}
    assert out["params_after"] == out["cost_table_params_after"] < out["params_before"]
    assert out["check_max_abs_logit_diff"] == 0.0
    weights = tmp_path / "se_resnet_fmnist_slim.safetensors"
    assert out["files"] == {"safetensors": str(weights), "json": str(weights.with_suffix(".json"))}
    hooked = run_json(capsys, "evaluate", "--model", "se_resnet_fmnist", "--images", SAMPLES, "--ablate", "stage:5",
                      "--precision", "fp32")
    slim = run_json(capsys, "evaluate", "--model", "se_resnet_fmnist", "--weights", str(weights), "--images", SAMPLES,
                    "--precision", "fp32")
    assert slim["n_images"] == hooked["n_images"] == 300
    assert slim["top1"] == hooked["top1"] and slim["top5"] == hooked["top5"]
    assert slim["params"] == hooked["params_after"] == out["params_after"]


@pytest.mark.slow
def test_slim_mean_folds_and_reports(tmp_path, capsys):
    out = run_json(capsys, "slim", "--model", "se_resnet_fmnist", "--remove", "SE_4_1,SE_5_2", "--mode", "mean",
                   "--images", SAMPLES, "--format", "safetensors,torchscript", "--out", str(tmp_path))
    assert [r["how"] for r in out["removed"]] == ["folded into layer3.0.bn2", "folded into layer4.1.bn2"]
    assert out["calibration_images"] == 54  # the calibration split of the 300 samples, as evaluate fits it
    assert out["params_after"] == out["cost_table_params_after"]
    assert out["check_max_abs_logit_diff"] < 1e-5
    doc = json.loads((tmp_path / "se_resnet_fmnist_slim.json").read_text())
    assert doc["format"] == "senet_viz.slim" and doc["mode"] == "mean" and doc["calibration_images"] == 54
    assert doc["base_weights"]["sha256"] == json.loads((REPO_ROOT / "assets" / "se_resnet_fmnist.json").read_text())[
        "weights_sha256"]
    assert (tmp_path / "se_resnet_fmnist_slim.pt").is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["--remove", "stage:5", "--mode", "mean"], "--mode mean fits the gates on calibration images"),
    (["--remove", "stage:5", "--format", "safetensors,tflite"], "unknown --format 'tflite'"),
    (["--remove", "SE_9_1"], "unknown SE block 'SE_9_1'"),
    (["--remove", ","], "selects no SE block"),
])
def test_slim_usage_errors(argv, message, tmp_path, capsys):
    assert main(["slim", "--model", "se_resnet_fmnist", "--device", "cpu", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
