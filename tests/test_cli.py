"""The command line on the real networks (SE-ResNet-50, MobileNetV3-Small) and the shared ImageNet samples, plus
the full-data integration test on the 900 shared images.

Most commands run in this process through ``cli.main(argv)`` (the entry point of ``python -m senet_viz`` and of the
``senet-viz`` script), which spares an interpreter start (torch, timm) per command; one test per command family
runs them as users do, ``python -m senet_viz ...`` in a subprocess from the repo root: blocks (the commands that
inspect a model) and evaluate (the commands that run images); tests/test_channels.py runs ``channels`` and its user
error (exit code 2) so."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from senet_viz import cli
from senet_viz.models.download import WEIGHTS_DIR_ENV
from senet_viz.models.registry import get_spec

SERESNET50_NAMES = ([f"SE_2_{i}" for i in range(1, 4)] + [f"SE_3_{i}" for i in range(1, 5)]
                    + [f"SE_4_{i}" for i in range(1, 7)] + [f"SE_5_{i}" for i in range(1, 4)])
N_EVAL = 16  # images for the evaluate commands (the first 16 of the shared samples: top-1 11/16 in full)


@dataclass
class Done:
    """A finished command: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def subprocess_cli(*args: str | Path, timeout: int = 300) -> Done:
    """``python -m senet_viz <args>`` in a subprocess from the repo root, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != WEIGHTS_DIR_ENV}
    # one intra-op thread, as a pytest-xdist worker computes (tests/conftest.py): beside the other worker, torch's
    # threads spin-wait for each other (about a quarter more CPU time for the same result)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "senet_viz", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return Done(proc.returncode, proc.stdout, proc.stderr)


def in_process_cli(*args: str | Path) -> Done:
    """The same command through ``cli.main`` in this process (usable in module-scoped fixtures, unlike capsys)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return Done(code, stdout.getvalue(), stderr.getvalue())


def cli_json(*args: str | Path, run=in_process_cli) -> dict | list:
    done = run(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_user_error(done: Done, *fragments: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error:")
    for fragment in fragments:
        assert fragment in done.stderr
    assert done.stdout == ""


# ------------------------------------------------------------------------------------------------- cost


@pytest.fixture(scope="module")
def cost_stage5() -> dict:
    return cli_json("cost", "--model", "legacy_seresnet50", "--ablate", "stage:5", "--device", "cpu")


@pytest.mark.slow
def test_cost_of_seresnet50(cost_stage5):
    assert cost_stage5["params"] == 28_088_024
    assert round(cost_stage5["gmacs"], 2) == 3.86
    assert cost_stage5["input_size"] == [3, 224, 224]


@pytest.mark.slow
def test_cost_without_the_last_stages_se_blocks(cost_stage5):
    assert cost_stage5["removed"] == ["SE_5_1", "SE_5_2", "SE_5_3"]
    assert cost_stage5["params_after"] == 26_508_632
    assert 0.05 < cost_stage5["params_removed_share"] < 0.06  # the paper's "about 6% fewer parameters"
    assert 0 < cost_stage5["gmacs_removed"] < 0.01


@pytest.mark.slow
def test_cost_without_stages_3_to_5_removes_their_se_parameters():
    with torch.device("meta"):  # only the parameter counts are read
        model = get_spec("legacy_seresnet50").build()
    expected = sum(p.numel() for layer in (model.layer2, model.layer3, model.layer4)
                   for block in layer for p in block.se_module.parameters())
    out = cli_json("cost", "--model", "legacy_seresnet50", "--ablate", "stage:3,4,5", "--device", "cpu")
    assert out["params"] == sum(p.numel() for p in model.parameters())
    assert out["params_removed"] == expected
    assert out["params_after"] == out["params"] - expected
    assert out["removed"] == SERESNET50_NAMES[3:]


@pytest.mark.slow
def test_cost_with_another_reduction_ratio(cost_stage5):
    out = cli_json("cost", "--model", "legacy_seresnet50", "--reduction", "8", "--device", "cpu")
    assert out["reduction"] == 8
    # r = 8 doubles the SE bottleneck: 2 C^2 / r weights per block
    assert out["params"] > cost_stage5["params"]
    assert out["se_params"] > 1.9 * cost_stage5["se_params"]
    assert out["params"] - out["se_params"] == cost_stage5["params"] - cost_stage5["se_params"]


# ----------------------------------------------------------------------------------------------- blocks


@pytest.mark.slow
def test_blocks_lists_the_papers_names():
    rows = cli_json("blocks", "--model", "legacy_seresnet50", "--device", "cpu", run=subprocess_cli)
    assert [r["name"] for r in rows] == SERESNET50_NAMES
    assert rows[0]["path"] == "layer1.0.se_module" and rows[0]["gate"] == "layer1.0.se_module.sigmoid"
    assert [r["channels"] for r in rows[-3:]] == [2048] * 3
    assert {r["stage"] for r in rows} == {2, 3, 4, 5}


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_model_exits_2_without_traceback():
    done = in_process_cli("blocks", "--model", "no_such_net")
    assert_user_error(done, "no_such_net", "legacy_seresnet50")


def test_unknown_block_exits_2_without_traceback():
    done = in_process_cli("cost", "--model", "mobilenet_v3_small", "--ablate", "SE_9_9", "--device", "cpu")
    assert_user_error(done, "SE_9_9", "SE_2_1")


def test_unreadable_weights_exit_2_without_traceback(tmp_path: Path):
    bad = tmp_path / "broken.pth"
    bad.write_text("not a checkpoint\n")
    done = in_process_cli("blocks", "--model", "mobilenet_v3_small", "--weights", bad, "--device", "cpu")
    assert_user_error(done, "broken.pth")


# ------------------------------------------------------------------------------------ evaluate, extract


@pytest.mark.slow
def test_evaluate_mobilenetv3_on_16_shared_images(imagenet_samples, tflite_file):
    out = cli_json("evaluate", "--model", "tf_mobilenetv3_small_100", "--images", imagenet_samples,
                   "--limit", str(N_EVAL), "--device", "cpu", run=subprocess_cli)
    assert out["weights"].endswith(".tflite")
    assert out["n_images"] == N_EVAL - out["n_skipped"]
    assert out["n_skipped"] == len(out["skipped"]) == 0
    assert out["top1"] > 0.5 and out["top5"] >= out["top1"]
    assert out["agreement"] == 1.0 and out["kl"] == 0.0
    assert out["top1"] == out["full_top1"] and out["params_removed"] == 0


@pytest.mark.slow
def test_evaluate_without_the_last_block(imagenet_samples, mnv3_tflite):
    last = mnv3_tflite.blocks[-1]
    se_params = sum(p.numel() for p in mnv3_tflite.model.get_submodule(last.path).parameters())
    out = cli_json("evaluate", "--model", "tf_mobilenetv3_small_100", "--images", imagenet_samples,
                   "--limit", str(N_EVAL), "--ablate", "last:1", "--mode", "identity", "--device", "cpu")
    assert out["ablated"] == [last.name] == ["SE_5_3"]
    assert out["params_removed"] == se_params == last.params
    assert out["params_after"] == out["params"] - se_params
    assert out["n_images"] == N_EVAL
    # the last block's gates are far from 1 in this network, so removing them changes predictions
    assert out["agreement"] < 1.0 and out["kl"] > 0
    assert out["top1"] < out["full_top1"]


@pytest.fixture(scope="module")
def two_class_folder(imagenet_samples, tmp_path_factory) -> tuple[Path, set[str]]:
    root = tmp_path_factory.mktemp("two_classes")
    files = sorted(imagenet_samples.glob("*.JPEG"))[:: 75][:12]
    keys = set()
    for i, f in enumerate(files):
        folder = root / ("fish" if i < 6 else "birds")
        folder.mkdir(exist_ok=True)
        shutil.copy(f, folder / f.name)
        keys.add(f"{folder.name}/{f.name}")
    (root / "birds" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return root, keys


@pytest.mark.slow
def test_extract_in_two_shards(two_class_folder, tmp_path: Path, mnv3_tflite):
    from senet_viz.data.store import read_excitations

    root, keys = two_class_folder
    outs = [tmp_path / "part0.parquet", tmp_path / "part1.parquet"]
    summaries = [cli_json("extract", "--model", "tf_mobilenetv3_small_100", "--images", root, "--shard", f"{i}/2",
                          "--out", out, "--device", "cpu") for i, out in enumerate(outs)]
    assert all(out.is_file() for out in outs)
    assert sum(s["n_images"] for s in summaries) == 12
    skipped = [s for summary in summaries for s in summary["skipped"]]
    assert [s["file"].rsplit("/", 1)[-1] for s in skipped] == ["broken.jpg"]
    assert skipped[0]["reason"].strip()
    assert sum(s["n_skipped"] for s in summaries) == 1

    parts = [read_excitations(out) for out in outs]
    assert not set(parts[0].keys) & set(parts[1].keys)
    assert set(parts[0].keys) | set(parts[1].keys) == keys

    both = read_excitations(outs)
    blocks = mnv3_tflite.blocks
    assert sorted(both.keys) == sorted(keys)
    assert list(both.gates) == [b.name for b in blocks]
    for b in blocks:
        g = both.gates[b.name]
        assert g.shape == (12, b.channels) and g.dtype == np.float16
        assert 0.0 <= g.min() and g.max() <= 1.0
    assert set(both.labels.tolist()) == {0, 1}
    assert set(both.label_names) == {"fish", "birds"}
    only_last = read_excitations(outs, blocks=["SE_5_3"])
    assert list(only_last.gates) == ["SE_5_3"]
    np.testing.assert_array_equal(only_last.gates["SE_5_3"], both.gates["SE_5_3"])


# ---------------------------------------------------------------------------------------- full data


@pytest.mark.slow
def test_mobilenetv3_on_all_900_shared_images(imagenet_samples, mnv3_tflite):
    from senet_viz.analysis.ablation import evaluate
    from senet_viz.data.folders import folder_source

    images = folder_source(imagenet_samples, class_names=mnv3_tflite.class_names, wnids=mnv3_tflite.wnids)
    out = evaluate(mnv3_tflite, images, batch_size=64)
    assert out["n_images"] == 900 and out["n_skipped"] == 0
    assert out["top1"] >= 0.74
    assert out["top5"] >= 0.90
    assert out["agreement"] == 1.0


# ---------------------------------------------------------------------------------------------- parser


def test_shared_options_keep_their_names_and_defaults_on_every_command():
    from senet_viz.cli import build_parser

    parser = build_parser()
    need = {"blocks": ["--model", "m"], "cost": ["--model", "m"], "extract": ["--model", "m", "--images", "i",
                                                                              "--out", "o"],
            "evaluate": ["--model", "m", "--images", "i"], "sweep": ["--model", "m", "--images", "i", "--out", "o"],
            "stats": ["--excitations", "e"], "figure": ["--stats", "s", "--kind", "fig6", "--out", "o"],
            "paper": ["--model", "m", "--images", "i", "--out", "o"], "models": [], "train": []}
    for command, required in need.items():
        args = parser.parse_args([command, *required])
        assert (args.device, args.json) == ("auto", False), command
    batch = {"extract": 32, "evaluate": 32, "sweep": 64, "paper": 32}
    for command, default in batch.items():
        args = parser.parse_args([command, *need[command]])
        assert args.batch_size == default, command
        assert args.labels is None and args.devkit_meta is None and args.weights is None
    assert parser.parse_args(["evaluate", *need["evaluate"]]).per_class is None
    assert parser.parse_args(["paper", *need["paper"]]).per_class == 50  # the protocol's own default
    args = parser.parse_args(["evaluate", *need["evaluate"], "--shard", "1/2", "--limit", "5", "--per-class", "3",
                              "--mode", "mean", "--calibrate-on-eval", "--ablate", "last:1", "--json"])
    assert (args.shard, args.limit, args.per_class, args.mode, args.calibrate_on_eval, args.ablate, args.json) == (
        "1/2", 5, 3, "mean", True, "last:1", True)
    for command in ("figure", "paper"):
        args = parser.parse_args([command, *need[command]])
        assert (args.seed, args.channels) == (0, 50)
