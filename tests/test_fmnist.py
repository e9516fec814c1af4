"""The embedded Fashion-MNIST SE-ResNets (senet_viz.models.embedded): shipped weights, samples and cards, the zoo
entries,
IDX reading, training and its global settings."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from conftest import require
from PIL import Image

from senet_viz.analysis.ablation import evaluate
from senet_viz.cli import main
from senet_viz.data.folders import folder_source
from senet_viz.gates.blocks import find_se_blocks
from senet_viz.models import download, registry, zoo
from senet_viz.models.embedded import data as fm_data
from senet_viz.models.embedded import model as fm_model
from senet_viz.models.embedded import train as fm_train
from senet_viz.models.embedded.card import render_card
from senet_viz.paths import ASSETS_DIR

MODEL_NAME, NOSE5_NAME = fm_model.MODEL_NAME, fm_model.NOSE5_NAME
CLASS_NAMES, SAMPLES_DIR = fm_data.CLASS_NAMES, fm_data.SAMPLES_DIR
WEIGHTS = {name: ASSETS_DIR / f"{name}.safetensors" for name in (MODEL_NAME, NOSE5_NAME)}
SE_NAMES = ["SE_2_1", "SE_3_1", "SE_4_1", "SE_5_1", "SE_5_2"]


def _card(name: str) -> dict:
    return json.loads((ASSETS_DIR / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def loaded():
    missing = [str(p) for p in WEIGHTS.values() if not p.is_file()]
    require(not missing, f"the shipped weights {missing}")
    return {name: zoo.load_model(name, device="cpu") for name in WEIGHTS}


@pytest.fixture(scope="module")
def samples():
    return folder_source(SAMPLES_DIR, class_names=list(CLASS_NAMES))


# ------------------------------------------------------------------------------------ shipped model and samples


def test_shipped_weights_load_from_assets_with_paper_block_names(loaded):
    se, nose5 = loaded[MODEL_NAME], loaded[NOSE5_NAME]
    assert se.weights_source == str(WEIGHTS[MODEL_NAME])
    assert se.class_names == list(CLASS_NAMES) and se.wnids is None
    assert se.input_size == (1, 28, 28)
    assert [b.name for b in se.blocks] == SE_NAMES
    assert [b.path for b in se.blocks] == ["layer1.0.se", "layer2.0.se", "layer3.0.se", "layer4.0.se", "layer4.1.se"]
    assert [b.gate_path for b in se.blocks][-1] == "layer4.1.se.gate"
    assert [b.channels for b in se.blocks] == [16, 32, 64, 128, 128]
    assert [b.name for b in nose5.blocks] == SE_NAMES[:3]  # retrained without SE in stage 5
    assert all(b.stage != 5 for b in nose5.blocks)
    assert WEIGHTS[MODEL_NAME].stat().st_size < 5_000_000


def test_sample_folder_has_30_images_per_class_mapped_to_the_model_classes(samples):
    assert samples.class_names == list(CLASS_NAMES)
    assert not samples.skipped
    counts = np.bincount([it.label for it in samples.items], minlength=10)
    assert counts.tolist() == [fm_data.SAMPLES_PER_CLASS] * 10
    tshirt = [it for it in samples.items if it.label == 0]
    assert tshirt[0].key.startswith("T-shirt_top/") and tshirt[0].label_name == "T-shirt/top"
    readme = (SAMPLES_DIR / "README.md").read_text()
    assert "Zalando" in readme and "MIT" in readme
    img = samples.items[0].load()
    assert img.size == (28, 28)


def test_cli_evaluate_on_the_samples_reports_the_card_accuracy(loaded, capsys):
    card = _card(MODEL_NAME)
    assert main(["evaluate", "--model", MODEL_NAME, "--images", str(SAMPLES_DIR), "--device", "cpu",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 300 and out["n_skipped"] == 0
    assert out["top1"] >= 0.85
    assert abs(out["top1"] - card["sample_top1"]) < 1e-6
    assert card["test_top1"] >= 0.92
    assert f"{100 * card['test_top1']:.2f}%" in (ASSETS_DIR / f"{MODEL_NAME}.md").read_text()


@pytest.mark.slow
def test_nose5_and_posthoc_removal_on_the_samples(loaded, samples):
    nose5 = evaluate(loaded[NOSE5_NAME], samples)
    assert nose5["top1"] >= 0.85
    assert abs(nose5["top1"] - _card(NOSE5_NAME)["sample_top1"]) < 1e-6
    se = loaded[MODEL_NAME]
    stage5 = [b for b in se.blocks if b.stage == 5]
    posthoc = evaluate(se, samples, stage5, mode="identity")
    assert posthoc["params_removed"] == sum(b.params for b in stage5) == 2 * (128 * 8 + 8 + 8 * 128 + 128)
    assert posthoc["n_images"] == 300
    for name in (MODEL_NAME, NOSE5_NAME):  # both shipped metrics carry the measured comparison
        rows = _card(name)["comparison"]["rows"]
        assert abs(rows["sample/posthoc_identity"]["top1"] - posthoc["top1"]) < 1e-6
        assert abs(rows["sample/retrained_nose5"]["top1"] - nose5["top1"]) < 1e-6
        assert rows["sample/posthoc_identity"]["params_removed"] == posthoc["params_removed"]


@pytest.mark.parametrize("name", [MODEL_NAME, NOSE5_NAME])
def test_the_shipped_card_is_the_rendering_of_the_shipped_metrics(name):
    metrics = _card(name)
    shipped = (ASSETS_DIR / f"{name}.md").read_text()
    assert render_card(metrics) == shipped  # re-render: python -c "...card import write_card; write_card(json)"
    assert "## Post-hoc removal vs retrained without (stage 5)" in shipped
    rows = metrics["comparison"]["rows"]
    assert f"| SE-ResNet as trained | {100 * rows['test/se']['top1']:.2f}% | {100 * rows['sample/se']['top1']:.2f}%" \
        in shipped
    assert f"**{100 * metrics['test_top1']:.2f}%** ({metrics['test_errors']} errors)" in shipped
    assert "$" not in shipped  # every template placeholder was filled
    assert ("without SE in stage 5" in shipped.splitlines()[0]) == (name == NOSE5_NAME)


def test_the_card_without_a_comparison_has_no_comparison_section():
    metrics = {k: v for k, v in _card(MODEL_NAME).items() if k != "comparison"}
    card = render_card(metrics)
    assert card.endswith("the weights are those after the last epoch.\n")
    assert "Post-hoc" not in card and "$" not in card


def test_the_sample_readme_is_the_template_rendering():
    assert (SAMPLES_DIR / "README.md").read_text() == fm_data.samples_readme()


# ------------------------------------------------------------------------------------------------ zoo entry


def test_zoo_entry_preprocess_turns_rgb_into_normalised_grey_28px():
    spec = registry.get_spec(MODEL_NAME)
    assert spec.source == "senet_viz" and spec.labels == fm_data.LABEL_SET
    assert spec.input_size == (1, 28, 28)
    assert spec.samples_dir == SAMPLES_DIR
    assert zoo.DEFAULT_MODEL == MODEL_NAME and spec.default
    rgb = Image.new("RGB", (56, 70), (255, 255, 255))
    x = spec.preprocess.transform()(rgb)
    assert x.shape == (1, 28, 28)
    assert torch.allclose(x, torch.full_like(x, (1 - fm_data.MEAN) / fm_data.STD))
    # a grey PNG decoded to RGB comes back with its exact pixels
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    x = spec.preprocess.transform()(Image.fromarray(pixels, "L").convert("RGB"))
    assert torch.allclose(x[0], (torch.from_numpy(pixels).float() / 255 - fm_data.MEAN) / fm_data.STD, atol=1e-6)


def test_random_build_blocks_and_reduction_without_weights():
    model = registry.get_spec(MODEL_NAME).build(reduction=4).eval()
    assert model.layer4[1].se.fc1.out_channels == 32
    assert [b.name for b in find_se_blocks(model, (1, 28, 28))] == SE_NAMES
    assert [b.name for b in find_se_blocks(model, (3, 28, 28))] == SE_NAMES  # an RGB probe is averaged to grey
    loaded = zoo.load_model(NOSE5_NAME, weights="random", device="cpu")
    assert [b.name for b in loaded.blocks] == SE_NAMES[:3]


def test_the_specs_carry_the_models_facts():
    se, nose5 = registry.get_spec(MODEL_NAME), registry.get_spec(NOSE5_NAME)
    assert se.retrained_twin is not None and se.retrained_twin.name == NOSE5_NAME
    assert se.retrained_twin.without == "stage:5" and nose5.retrained_twin is None
    assert se.categories == CLASS_NAMES and se.class_names == list(CLASS_NAMES) and se.class_wnids is None
    assert se.test_set is nose5.test_set and se.test_set.size == 10_000
    assert se.test_set.available() == fm_data.fashion_mnist_available()
    assert not nose5.default and not se.paper_reference and not se.fallback
    # the twin lacks exactly the blocks its selection names
    full = [b.name for b in find_se_blocks(se.build(), se.input_size)]
    lacking = [b.name for b in find_se_blocks(nose5.build(), nose5.input_size)]
    assert sorted(set(full) - set(lacking)) == ["SE_5_1", "SE_5_2"]


def test_the_package_registers_itself_in_the_registry_not_the_zoo():
    import ast
    import inspect

    import senet_viz.models.embedded as embedded
    from senet_viz.models import registry
    assert registry.get_spec(MODEL_NAME).builder is embedded.se_resnet_fmnist
    for module in (embedded, fm_data, fm_model):
        tree = ast.parse(inspect.getsource(module))
        imported = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
        assert "zoo" not in {m.split(".")[-1] for m in imported}, module.__name__


def test_missing_weights_say_how_to_get_them(monkeypatch):
    monkeypatch.setattr(zoo, "local_weights_file", lambda name: None)
    with pytest.raises(download.WeightsUnavailableError, match="python -m senet_viz train"):
        zoo.load_model(MODEL_NAME, device="cpu")


# ------------------------------------------------------------------------------------------------ IDX data


def _idx(arr: np.ndarray, code: int) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4"}[code]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(dtype).tobytes()


def _fake_dataset(folder, n: int = 12, compress: bool = True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    for prefix in ("train", "t10k"):
        for kind, arr, code in (("images-idx3", images, 0x08), ("labels-idx1", labels, 0x08)):
            name = folder / f"{prefix}-{kind}-ubyte"
            data = _idx(arr, code)
            if compress:
                name.with_name(name.name + ".gz").write_bytes(gzip.compress(data))
            else:
                name.write_bytes(data)
    return images, labels


def test_read_idx_gz_raw_and_broken(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 5
    (tmp_path / "a.idx").write_bytes(_idx(arr, 0x0C))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx(arr, 0x0C)))
    for name in ("a.idx", "a.idx.gz"):
        out = fm_data.read_idx(tmp_path / name)
        assert out.shape == (2, 3, 4) and out.dtype == np.int32 and (out == arr).all()
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX"):
        fm_data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx(arr, 0x0C)[:-1])
    with pytest.raises(ValueError, match="data bytes"):
        fm_data.read_idx(tmp_path / "short")


@pytest.mark.parametrize("compress", [True, False])
def test_load_and_test_source_from_a_folder(tmp_path, compress):
    images, labels = _fake_dataset(tmp_path, compress=compress)
    x, y = fm_data.load_fashion_mnist("test", root=tmp_path)
    assert x.dtype == np.uint8 and x.shape == (12, 28, 28) and (x == images).all() and (y == labels).all()
    source = fm_data.fashion_mnist_test_source(root=tmp_path)
    assert len(source) == 12 and source.class_names == list(CLASS_NAMES)
    item = source.items[3]
    assert item.label == 3 and item.label_name == "Dress" and item.key == "fashion-mnist/test/00003.png"
    img = item.load()
    assert img.mode == "RGB" and (np.asarray(img)[:, :, 0] == images[3]).all()
    assert len(fm_data.fashion_mnist_test_source(limit=5, root=tmp_path)) == 5


def test_missing_dataset_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        fm_data.load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(FileNotFoundError):
        fm_data.fashion_mnist_test_source(root=tmp_path)


def test_write_samples_takes_the_first_of_each_class_in_order(tmp_path):
    (tmp_path / "data").mkdir()
    _fake_dataset(tmp_path / "data", n=30)
    dest = fm_data.write_samples(tmp_path / "samples", per_class=2, root=tmp_path / "data")
    assert sorted(p.name for p in (dest / "T-shirt_top").iterdir()) == ["00000.png", "00010.png"]
    source = folder_source(dest, class_names=list(CLASS_NAMES))
    assert len(source) == 20 and source.class_names == list(CLASS_NAMES)


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_tiny_model_learns_and_training_is_seeded():
    rng = np.random.default_rng(0)
    labels = np.arange(128) % 2
    images = rng.integers(0, 60, (128, 28, 28), dtype=np.uint8)
    images[labels == 1, :10, :] += 150  # class 1: a bright top band (invariant to crops and flips)
    recipe = fm_train.Recipe(epochs=3, batch_size=32, lr=0.05, label_smoothing=0.0)

    def run():
        torch.manual_seed(0)
        model = fm_model.SEResNetFMNIST(widths=(4, 4, 8, 8), depths=(1, 1, 1, 1), num_classes=2)
        history = fm_train.train_model(model, images, labels, recipe, seed=0, progress=False, log=lambda s: None)
        return model, history

    model, history = run()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (fm_train.predict(model, images).argmax(1) == labels).mean() > 0.9
    _, again = run()
    assert [h["train_loss"] for h in again] == [h["train_loss"] for h in history]


def test_training_settings_are_restored_afterwards():
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with fm_train.deterministic(seed=0, threads=1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)  # the global generator continues where it was
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic
    torch.manual_seed(0)
    assert torch.equal(inside, torch.rand(3))  # inside, the generator was seeded with the seed given
    with pytest.raises(RuntimeError, match="boom"), fm_train.deterministic(seed=0, threads=1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic


def test_train_leaves_the_global_settings_as_they_were(tmp_path, monkeypatch):
    _fake_dataset(tmp_path)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    seen = {}

    def interrupted(*args, **kwargs):  # the run stops inside the training loop, as a Ctrl-C or an error would
        seen.update(threads=torch.get_num_threads(), deterministic=torch.are_deterministic_algorithms_enabled())
        raise KeyboardInterrupt

    monkeypatch.setattr(fm_train, "train_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fm_train.train(tmp_path / "w.safetensors", data_root=tmp_path, download=False, threads=1,
                       samples=tmp_path / "samples", progress=False, log=lambda s: None)
    assert seen == {"threads": 1, "deterministic": True}
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic


# ------------------------------------------------------------------------------------------------ dashboard


@pytest.mark.slow
def test_the_dashboard_reads_the_facts_test_set_and_retrained_twin(loaded, tmp_path, monkeypatch):
    from apptest_helpers import assert_ok, open_page
    from streamlit.testing.v1 import AppTest

    from senet_viz.paths import PROJECT_ROOT

    _fake_dataset(tmp_path, n=200)  # an installed "Fashion-MNIST": the sidebar offers the model's test set
    monkeypatch.setenv(fm_data.DATA_DIR_ENV, str(tmp_path))
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=180)
    at.run()
    assert at.selectbox(key="model_name").value == MODEL_NAME  # the spec marked default, its weights here
    at.selectbox(key="model_name").set_value(MODEL_NAME).run()
    assert "Fashion-MNIST test set" in at.radio(key="image_source").options
    at.radio(key="image_source").set_value("Fashion-MNIST test set").run()
    assert_ok(at)
    assert at.slider(key="fmnist_limit").max == fm_data.TEST_SIZE
    assert any("200 files in 10 classes" in c.value for c in at.sidebar.caption)
    open_page(at, "remove", "Remove SE blocks")
    assert "Post-hoc removal vs retrained without SE in stage 5" in [s.value for s in at.subheader]
