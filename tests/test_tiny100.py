"""se_resnet50_tiny100: the network's layout and names, the deterministic held-out split, the training command
(a few steps on a handful of real images, resumed from its checkpoint), the shipped weights and the zoo entry."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, require

TINY_DIR = SHARED / "data" / "tiny-imagenet-100"
ZIP = TINY_DIR / "train.zip"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
FAKE_WNIDS = ("n01443537", "n09246464", "n01882714")  # goldfish, cliff, koala


def _require_zip() -> None:
    require(ZIP.is_file() and (TINY_DIR / "classes.tsv").is_file(), f"{ZIP} (the shared Tiny ImageNet-100 zip)")


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """A zip of 6 real images for each of 3 classes, laid out like the shared one, with its classes.tsv."""
    _require_zip()
    folder = tmp_path_factory.mktemp("tiny")
    lines = [ln for ln in (TINY_DIR / "classes.tsv").read_text().splitlines() if ln.split("\t")[0] in FAKE_WNIDS]
    (folder / "classes.tsv").write_text("\n".join(lines) + "\n")
    with zipfile.ZipFile(ZIP) as src, zipfile.ZipFile(folder / "train.zip", "w", zipfile.ZIP_STORED) as dst:
        for w in FAKE_WNIDS:
            for n in range(6):
                name = f"train/{w}/{w}_{n}.JPEG"
                dst.writestr(name, src.read(name))
    return folder


@pytest.mark.slow
def test_layout_and_block_names() -> None:
    from senet_viz.gates.blocks import find_se_blocks
    from senet_viz.models.tiny100.model import build_model, model_name_for

    model = build_model()
    names = [b.name for b in find_se_blocks(model, (3, 64, 64))]
    assert names == ([f"SE_2_{i}" for i in range(1, 4)] + [f"SE_3_{i}" for i in range(1, 5)]
                     + [f"SE_4_{i}" for i in range(1, 7)] + [f"SE_5_{i}" for i in range(1, 4)])
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert model.fc.in_features == 16 * 8 * 4  # base width 16, expansion 4
    nose5 = [b.name for b in find_se_blocks(build_model((2, 3, 4)), (3, 64, 64))]
    assert nose5 == names[:13]
    assert [b.name for b in find_se_blocks(build_model((3,)), (3, 64, 64))] == [f"SE_3_{i}" for i in range(1, 5)]
    assert model_name_for((2, 3, 4, 5)) == "se_resnet50_tiny100"
    assert model_name_for((2, 3, 4)) == "se_resnet50_tiny100_nose5"
    assert model_name_for((4,)) == "se_resnet50_tiny100_se4"
    with pytest.raises(ValueError):
        build_model((1,))


@pytest.mark.slow
def test_held_out_split_is_deterministic_and_shipped() -> None:
    from senet_viz.models.tiny100.data import SAMPLES_DIR, folder_name, held_out_key, held_out_mask, read_classes

    names = [f"train/n0/n0_{i}.JPEG" for i in range(20)] + [f"train/n1/n1_{i}.JPEG" for i in range(20)]
    labels = np.repeat([0, 1], 20)
    mask = held_out_mask(names, labels, 5)
    assert mask.sum() == 10 and mask[:20].sum() == 5
    assert np.array_equal(mask, held_out_mask(list(reversed(names)), labels[::-1], 5)[::-1])
    _require_zip()
    wnids, class_names = read_classes(TINY_DIR / "classes.tsv")
    assert len(wnids) == 100 and class_names[wnids.index("n01443537")] == "goldfish"
    require(SAMPLES_DIR.is_dir(), "assets/tiny100_samples")
    with zipfile.ZipFile(ZIP) as zf:
        members = zf.namelist()
    for w in ("n01443537", "n09246464"):
        files = sorted(Path(m).name for m in members if m.startswith(f"train/{w}/") and m.endswith(".JPEG"))
        held = sorted(sorted(files, key=held_out_key)[:50])
        shipped = sorted(p.name for p in (SAMPLES_DIR / folder_name(class_names[wnids.index(w)])).iterdir())
        assert shipped == held


@pytest.mark.slow
def test_training_runs_and_resumes(fake_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from senet_viz.models.tiny100.train import Recipe, train

    recipe = Recipe(epochs=2, batch_size=4)
    common = {"recipe": recipe, "seed": 3, "threads": 1, "base_width": 4, "zip_path": fake_data / "train.zip",
              "held_out_per_class": 2, "cache": tmp_path / "cache", "card": False, "log_every": 0}
    full = train(tmp_path / "a" / "m.safetensors", log=lambda s: None, **common)
    assert full["data"]["train_images"] == 12 and full["data"]["test_images"] == 6
    assert [h["epoch"] for h in full["history"]] == [1, 2]

    class Stop(Exception):
        pass

    def stop_after_first(line: str) -> None:
        if line.startswith("epoch 1/2 done"):
            raise Stop

    out_b = tmp_path / "b" / "m.safetensors"
    with pytest.raises(Stop):
        train(out_b, log=stop_after_first, **common)
    assert (tmp_path / "b" / "m.ckpt.pt").is_file() and not out_b.exists()
    lines: list[str] = []
    resumed = train(out_b, resume=True, log=lines.append, **common)
    assert any(ln.startswith("resumed from") for ln in lines)
    a, b = load_file(str(tmp_path / "a" / "m.safetensors")), load_file(str(out_b))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert resumed["test_top1"] == full["test_top1"]


@pytest.mark.slow
def test_train_command(fake_data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from senet_viz import cli

    monkeypatch.setenv("SENET_VIZ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "m" / "se_resnet50_tiny100.safetensors"
    code = cli.main(["train", "--dataset", "tiny-imagenet-100", "--data", str(fake_data), "--out", str(out),
                     "--epochs", "1", "--batch-size", "4", "--max-steps", "2", "--held-out-per-class", "2",
                     "--samples", str(tmp_path / "none"), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    metrics = json.loads(captured.out)
    assert metrics["model"] == "se_resnet50_tiny100" and metrics["recipe"]["epochs"] == 1
    assert metrics["classes"]["wnids"] == sorted(FAKE_WNIDS)
    assert out.is_file() and out.with_suffix(".json").is_file()
    card = out.with_suffix(".md").read_text()
    assert "se_resnet50_tiny100" in card and "held-out test set" in card


def _shipped(name: str = "se_resnet50_tiny100") -> dict:
    path = ASSETS / f"{name}.json"
    require(path.is_file() and (ASSETS / f"{name}.safetensors").is_file(), f"assets/{name}.safetensors and .json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_zoo_entry() -> None:
    from senet_viz.analysis.paper import paper_class_names
    from senet_viz.models.registry import get_spec
    from senet_viz.models.zoo import load_model

    _shipped()
    spec = get_spec("se_resnet50_tiny100")
    assert spec.input_size == (3, 64, 64) and len(spec.class_names) == 100
    assert paper_class_names(spec.class_wnids, spec.class_names) == ["goldfish", "cliff"]
    assert spec.retrained_twin is not None and get_spec(spec.retrained_twin.name).name.endswith("_nose5")
    assert spec.samples_dir is not None
    loaded = load_model("se_resnet50_tiny100", device="cpu", download=False)
    assert len(loaded.blocks) == 16 and loaded.blocks[-1].name == "SE_5_3"


@pytest.mark.slow
def test_shipped_weights_reach_reported_accuracy() -> None:
    from senet_viz.analysis.ablation import evaluate
    from senet_viz.data.folders import folder_source
    from senet_viz.models.tiny100.data import SAMPLES_DIR
    from senet_viz.models.zoo import load_model

    metrics = _shipped()
    loaded = load_model("se_resnet50_tiny100", device="cpu", download=False)
    images = folder_source(SAMPLES_DIR, class_names=loaded.class_names, wnids=loaded.wnids)
    res = evaluate(loaded, images)
    assert res.n_images == metrics["sample_images"] == 600
    assert abs(res.top1 - metrics["sample_top1"]) <= 0.01
    assert abs(res.top5 - metrics["sample_top5"]) <= 0.01
    assert metrics["test_top1"] > 0.05  # far above chance (1%) on the 5,000 held-out images


def test_card_renders_from_shipped_metrics() -> None:
    from senet_viz.models.tiny100.card import render_card

    metrics = _shipped()
    card = render_card(metrics)
    assert f"{100 * metrics['test_top1']:.2f}%" in card and "narrow" in card
