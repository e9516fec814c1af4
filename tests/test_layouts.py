"""ImageNet's real layouts, built in tmp_path from the shared ImageNet samples: wnid class folders, the official
flat validation folder labelled by Kaggle's LOC_val_solution.csv or by the devkit's ground truth (with its class
table), ``--per-class K``, and the errors for images without a label or with a wnid the model does not know."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import pytest
from conftest import IMAGENET_SAMPLES, TFLITE_FILE, require

from senet_viz import cli
from senet_viz.data.folders import folder_source
from senet_viz.data.imagenet import labels_file_source, read_labels_file, take_per_class, val_image_id
from senet_viz.data.labels import imagenet_wnids
from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.data.store import read_excitations
from senet_viz.models.download import WEIGHTS_DIR_ENV

PER_WNID = 3  # copies of each sample image, under different validation ids


@pytest.fixture(scope="module")
def samples() -> list[Path]:
    """Three real shared images of three classes (names ``<wnid>_<class>.JPEG``)."""
    files = sorted(IMAGENET_SAMPLES.glob("n*.JPEG")) if IMAGENET_SAMPLES.is_dir() else []
    require(len(files) >= 3, f"needs the shared ImageNet samples in {IMAGENET_SAMPLES}")
    return [files[0], files[len(files) // 2], files[-1]]


def wnid(path: Path) -> str:
    return path.name.split("_")[0]


@pytest.fixture
def flat_val(tmp_path: Path, samples: list[Path]) -> tuple[Path, dict[str, str]]:
    """``val/ILSVRC2012_val_0000000k.JPEG`` for k = 1..9, classes interleaved (k = 1, 4, 7 are the first class),
    and Kaggle's ``LOC_val_solution.csv`` for them, rows shuffled, some with several boxes."""
    folder = tmp_path / "val"
    folder.mkdir()
    truth: dict[str, str] = {}
    for k in range(1, PER_WNID * len(samples) + 1):
        src = samples[(k - 1) % len(samples)]
        shutil.copyfile(src, folder / f"{val_image_id(k)}.JPEG")
        truth[val_image_id(k)] = wnid(src)
    rows = [f"{image_id},{w} 10 20 200 180" + (f" {w} 5 5 50 50" if i % 2 else "")
            for i, (image_id, w) in enumerate(truth.items())]
    random.Random(0).shuffle(rows)
    # The Kaggle file also lists ids of images that are not in this folder: fine.
    rows.append(f"{val_image_id(49999)},n01440764 1 2 3 4")
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return folder, truth


@pytest.fixture
def cli_run(monkeypatch, capsys):
    """The CLI in this process: (exit code, stdout, stderr)."""
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    for var in ("RANK", "WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)

    def run(*args: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="module")
def mnv3() -> str:
    require(TFLITE_FILE.is_file(), f"needs the shared MobileNetV3-Small at {TFLITE_FILE}")
    return "tf_mobilenetv3_small_100"


# --------------------------------------------------------------------------------------------------- library


def test_wnid_class_folders_are_labelled_by_the_full_1000_class_index(tmp_path: Path, samples: list[Path]):
    for k, src in enumerate(samples, start=1):  # ImageFolder layout: val/<wnid>/<ILSVRC id>.JPEG
        (tmp_path / "val" / wnid(src)).mkdir(parents=True)
        shutil.copyfile(src, tmp_path / "val" / wnid(src) / f"{val_image_id(k)}.JPEG")
    images = folder_source(tmp_path / "val")
    wnids = imagenet_wnids()
    assert len(images.class_names) == 1000
    assert [it.label for it in images.items] == [wnids.index(wnid(s)) for s in samples]
    assert [it.key for it in images.items] == [f"{wnid(s)}/{val_image_id(k)}.JPEG" for k, s in enumerate(samples, 1)]
    assert all(it.label_name == images.class_names[it.label] for it in images.items)


def test_loc_val_solution_labels_the_flat_folder(flat_val, tmp_path: Path):
    folder, truth = flat_val
    wnids = imagenet_wnids()
    names = [f"class {i}" for i in range(1000)]
    images = labels_file_source(folder, tmp_path / "LOC_val_solution.csv", names, wnids)
    assert [it.key for it in images.items] == [f"{val_image_id(k)}.JPEG" for k in range(1, 10)]
    assert [it.label for it in images.items] == [wnids.index(truth[val_image_id(k)]) for k in range(1, 10)]
    assert [it.label_name for it in images.items] == [names[it.label] for it in images.items]
    assert images.class_names == names and images.skipped == []


def test_devkit_ground_truth_needs_the_devkits_class_table(flat_val, tmp_path: Path, monkeypatch):
    folder, truth = flat_val
    wnids = imagenet_wnids()
    # A devkit-style table: ILSVRC2012_ID 1..1000 in an order that is not the sorted-wnid order.
    devkit_order = wnids[:]
    random.Random(1).shuffle(devkit_order)
    table = tmp_path / "map_clsloc.txt"
    table.write_text("".join(f"{w} {i} name_{i}\n" for i, w in enumerate(devkit_order, start=1)))
    ground_truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    ground_truth.write_text("".join(f"{devkit_order.index(truth[val_image_id(k)]) + 1}\n" for k in range(1, 10)))

    with pytest.raises(ValueError, match="LOC_val_solution.csv") as exc:
        read_labels_file(ground_truth)
    assert "meta.mat" in str(exc.value) and "sorted-wnid order" in str(exc.value)
    monkeypatch.setitem(sys.modules, "scipy", None)  # no scipy: meta.mat cannot be read, and says so
    (tmp_path / "meta.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(ValueError, match="needs scipy.*LOC_val_solution.csv"):
        read_labels_file(ground_truth, devkit=tmp_path / "meta.mat")

    images = labels_file_source(folder, ground_truth, wnids, wnids, devkit=table)
    assert [it.label for it in images.items] == [wnids.index(truth[val_image_id(k)]) for k in range(1, 10)]
    ground_truth.write_text("1\n1001\n")
    with pytest.raises(ValueError, match="line 2: ILSVRC2012_ID 1001 is outside 1..1000"):
        read_labels_file(ground_truth, devkit=table)


def test_per_class_takes_the_first_k_by_sorted_key(flat_val, tmp_path: Path):
    folder, truth = flat_val
    wnids = imagenet_wnids()
    images = labels_file_source(folder, tmp_path / "LOC_val_solution.csv", wnids, wnids)
    two = take_per_class(images, 2)
    # Classes are interleaved: ids 1, 4 | 2, 5 | 3, 6 are the first two of each class.
    assert [it.key for it in two.items] == [f"{val_image_id(k)}.JPEG" for k in range(1, 7)]
    shuffled = ImageSet(random.Random(2).sample(images.items, len(images.items)), [], images.class_names)
    assert take_per_class(shuffled, 2).items == two.items  # deterministic: not the listing order
    assert len(take_per_class(images, 50).items) == 9
    unlabelled = ImageItem("zz.JPEG", "zz.JPEG", None, None, path=folder / "zz.JPEG")
    assert take_per_class(ImageSet([*images.items, unlabelled], [], wnids), 5).items == images.items
    with pytest.raises(ValueError, match="at least 1"):
        take_per_class(images, 0)


# -------------------------------------------------------------------------------------------------- the CLI


def test_cli_reads_the_flat_folder_with_labels_and_per_class(flat_val, tmp_path: Path, cli_run, mnv3):
    folder, truth = flat_val
    code, out, err = cli_run("extract", "--model", mnv3, "--images", folder, "--labels",
                             tmp_path / "LOC_val_solution.csv", "--per-class", "2", "--blocks", "last:1",
                             "--device", "cpu", "--out", tmp_path / "x.parquet", "--json")
    assert code == 0, err
    x = read_excitations(tmp_path / "x.parquet")
    wnids = imagenet_wnids()
    assert x.keys == [f"{val_image_id(k)}.JPEG" for k in range(1, 7)]
    assert list(x.labels) == [wnids.index(truth[val_image_id(k)]) for k in range(1, 7)]


def test_cli_reports_an_image_without_a_label(flat_val, tmp_path: Path, cli_run, mnv3):
    folder, _ = flat_val
    shutil.copyfile(folder / f"{val_image_id(1)}.JPEG", folder / f"{val_image_id(12)}.JPEG")
    code, out, err = cli_run("evaluate", "--model", mnv3, "--images", folder, "--labels",
                             tmp_path / "LOC_val_solution.csv", "--device", "cpu", "--json")
    assert code == 2 and out == "" and err.startswith("error:")
    assert f"{val_image_id(12)}.JPEG" in err and "no label in LOC_val_solution.csv" in err


def test_cli_reports_a_wnid_the_model_does_not_know(flat_val, tmp_path: Path, cli_run, mnv3):
    folder, _ = flat_val
    loc = tmp_path / "LOC_val_solution.csv"
    loc.write_text(loc.read_text().replace(f"{val_image_id(2)},n", f"{val_image_id(2)},n99999999 1 1 2 2 n"))
    code, out, err = cli_run("evaluate", "--model", mnv3, "--images", folder, "--labels", loc, "--device", "cpu")
    assert code == 2 and out == ""
    assert "not classes of this model" in err and f"{val_image_id(2)}.JPEG (n99999999)" in err


def test_cli_refuses_devkit_ids_without_the_class_table(flat_val, tmp_path: Path, cli_run, mnv3):
    folder, _ = flat_val
    ground_truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    ground_truth.write_text("".join(f"{k}\n" for k in range(1, 10)))
    code, out, err = cli_run("paper", "--model", mnv3, "--images", folder, "--labels", ground_truth,
                             "--device", "cpu", "--out", tmp_path / "paper")
    assert code == 2 and "--devkit-meta" in err and "LOC_val_solution.csv" in err
    code, out, err = cli_run("sweep", "--model", "se_resnet_fmnist", "--images", folder, "--labels",
                             tmp_path / "LOC_val_solution.csv", "--device", "cpu", "--out", tmp_path / "s.csv")
    assert code == 2 and "no ImageNet wnids" in err
