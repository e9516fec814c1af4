"""The model zoo (zoo.py): where weights come from, offline behaviour, devices, the real MobileNetV3-Small."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLASSES
from PIL import Image
from safetensors.torch import save_file
from tiny_nets import make_tiny_custom

import senet_viz.models.zoo as zoo
from senet_viz.gates.capture import hook_count
from senet_viz.models import download, registry
from senet_viz.models.download import WEIGHTS_DIR_ENV, WeightsStatus, WeightsUnavailableError, local_weights_file
from senet_viz.models.loaded import LoadedModel, resolve_device
from senet_viz.models.registry import get_spec
from senet_viz.models.zoo import load_model


def test_weights_dir_env_is_searched_and_used(tmp_path: Path, monkeypatch):
    name = "mobilenet_v3_small"
    source = get_spec(name).build().eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    (tmp_path / "other_model.safetensors").write_bytes(b"")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    assert local_weights_file(name) == path
    loaded = load_model(name, device="cpu")
    assert loaded.weights_source == str(path)
    assert len(loaded.weights_id) == 16
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())
    assert not loaded.model.training


def test_weights_dir_env_without_a_matching_file(tmp_path: Path, monkeypatch):
    (tmp_path / "legacy_seresnet50.safetensors").write_bytes(b"")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    assert local_weights_file("legacy_seresnet18") is None


def test_offline_hub_fails_fast_with_the_file_options(monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(download, "hub_url", lambda spec: "https://127.0.0.1:9/")
    monkeypatch.setattr(download, "hub_cached_file", lambda spec: None)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("legacy_seresnet18", device="cpu")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "--weights" in message and WEIGHTS_DIR_ENV in message
    assert "legacy_seresnet18" in message and "127.0.0.1:9" in message


def test_random_weights_need_no_file():
    loaded = load_model("mobilenet_v3_small", weights="random", device="cpu")
    assert loaded.weights_source == "random" and loaded.weights_id == "random"
    assert len(loaded.blocks) == 9 and loaded.num_classes == 1000


def test_unknown_model_lists_the_choices():
    with pytest.raises(KeyError, match="legacy_seresnet50"):
        get_spec("resnet_with_no_se")


@pytest.mark.slow
def test_reduction_ratio_changes_se_width_only_where_supported():
    r8 = get_spec("legacy_seresnet50").build(reduction=8)
    r16 = get_spec("legacy_seresnet50").build()
    assert r8.layer4[0].se_module.fc1.out_channels == 256
    assert r16.layer4[0].se_module.fc1.out_channels == 128
    with pytest.raises(ValueError, match="reduction"):
        get_spec("mobilenet_v3_small").build(reduction=8)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ValueError, match="--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_from_module_wraps_a_users_network():
    model = make_tiny_custom().train()
    loaded = LoadedModel.from_module(model, "mine", TINY_CLASSES, input_size=(3, 32, 32))
    assert loaded.model is model and not model.training
    assert [b.name for b in loaded.blocks] == ["SE_1_1", "SE_2_1", "SE_3_1"]
    assert loaded.num_classes == 10 and loaded.device == torch.device("cpu")
    assert hook_count(model) == 0
    # default transform: resize to crop / 0.875 and center-crop the model's input size, so it sees the image,
    # not a small patch of its middle: a white frame around a black center must stay visible
    image = Image.new("RGB", (64, 64), "white")
    image.paste((0, 0, 0), (16, 16, 48, 48))
    x = loaded.transform(image)
    assert tuple(x.shape) == (3, 32, 32)
    white = (x[0] > x[0].min() + 1.0).float().mean().item()
    assert 0.2 < white < 0.8


def test_mobilenetv3_small_loads_the_shared_tflite_by_default(mnv3_tflite, tflite_file):
    loaded = mnv3_tflite
    assert loaded.weights_source.endswith(".tflite")
    assert Path(loaded.weights_source).resolve() == tflite_file.resolve()
    assert len(loaded.blocks) == 9
    assert len(loaded.class_names) == 1000 and len(loaded.wnids) == 1000
    assert loaded.class_names[1] == "goldfish" and loaded.wnids[1] == "n01443537"
    assert loaded.class_names[0] == "tench" and loaded.wnids[0] == "n01440764"
    assert loaded.model.classifier.out_features == 1000
    assert not loaded.model.training and hook_count(loaded.model) == 0
    assert loaded.spec.preprocess.mean == (0.5, 0.5, 0.5) and loaded.spec.preprocess.crop == 224


# ------------------------------------------------------------------------------------------ registry and facts


def test_specs_are_built_with_keywords_and_carry_their_facts():
    with pytest.raises(TypeError):
        registry.ModelSpec("x", "timm", "SE-ResNet", "X", "x", "paper")  # positional fields are refused
    assert get_spec("legacy_seresnet50").paper_reference
    assert [n for n, s in registry.REGISTRY.items() if s.paper_reference] == ["legacy_seresnet50"]
    assert [n for n, s in registry.REGISTRY.items() if s.default] == [zoo.DEFAULT_MODEL]
    assert [n for n, s in registry.REGISTRY.items() if s.fallback] == ["tf_mobilenetv3_small_100"]
    twins = {n: s.retrained_twin.name for n, s in registry.REGISTRY.items() if s.retrained_twin}
    assert twins == {"se_resnet_fmnist": "se_resnet_fmnist_nose5", "se_resnet50_tiny100": "se_resnet50_tiny100_nose5"}
    assert all(t in registry.REGISTRY for t in twins.values())
    spec = get_spec("mobilenet_v3_small")
    assert spec.class_names[:2] == ["tench", "goldfish"] and spec.class_wnids[1] == "n01443537"
    assert len(spec.class_names) == len(spec.class_wnids) == 1000 and spec.test_set is None


def test_categories_are_loaded_lazily_once():
    calls = []

    def names():
        calls.append(1)
        return ["cat", "dog"]

    spec = registry.ModelSpec(name="pets", source="senet_viz", family="x", paper_name="x", arch="x", paper="x",
                         categories=names, wnids=None)
    assert calls == []
    assert spec.class_names == ["cat", "dog"] and spec.class_names == ["cat", "dog"] and calls == [1]
    spec.class_names.append("mutated")  # a copy: the spec's names stay as they are
    assert spec.class_names == ["cat", "dog"] and spec.class_wnids is None
    bad = registry.ModelSpec(name="bad", source="senet_viz", family="x", paper_name="x", arch="x", paper="x",
                        categories=("a", "b"), wnids=("n1",))
    with pytest.raises(ValueError, match="1 wnids for 2 categories"):
        _ = bad.class_names


def test_register_model_decorator_registers_a_builder(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))

    @registry.register_model(family="SE-ResNet", paper_name="Mine", arch="Tiny", paper="mine",
                             categories=tuple(TINY_CLASSES), wnids=None)
    def my_tiny_net(reduction: int = 16):
        return make_tiny_custom()

    spec = registry.get_spec("my_tiny_net")
    assert spec.source == "senet_viz" and spec.builder is my_tiny_net and spec.class_names == TINY_CLASSES


def test_default_model_falls_back_when_the_default_weights_are_missing(monkeypatch):
    assert zoo.default_model() == zoo.DEFAULT_MODEL  # the embedded weights ship in assets/
    real = download.weights_status
    monkeypatch.setattr(zoo, "weights_status", lambda name: WeightsStatus.MISSING
                        if name == zoo.DEFAULT_MODEL else real(name))
    assert zoo.default_model() == "tf_mobilenetv3_small_100"


# ------------------------------------------------------------------------------------------ weights status


def test_weights_status_is_an_enum_with_labels():
    status = download.weights_status(zoo.DEFAULT_MODEL)
    assert status is WeightsStatus.FILE and status == "file" and status.ready
    assert {s.value for s in WeightsStatus} == {"file", "hub cache", "hub (online only)", "missing"}
    assert all(s.label and s.label != s.value for s in WeightsStatus)
    assert [s for s in WeightsStatus if s.ready] == [WeightsStatus.FILE, WeightsStatus.HUB_CACHE]
    # the CLI's listing (text and JSON) is unchanged
    assert f"{WeightsStatus.HUB_ONLINE:18s}|" == f"{'hub (online only)':18s}|"
    assert json.dumps([WeightsStatus.HUB_CACHE]) == '["hub cache"]'


def test_weights_status_is_computed_once_and_again_when_a_folder_changes(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(download, "hub_cached_file", lambda spec: None)
    name = "mobilenet_v3_small"
    download.forget_weights_status()
    calls = []
    real = download.local_weights_file
    monkeypatch.setattr(download, "local_weights_file", lambda n: calls.append(n) or real(n))
    assert download.weights_status(name) is WeightsStatus.HUB_ONLINE
    for _ in range(5):  # every rerun of the dashboard asks again: a few stat calls, no search
        assert download.weights_status(name) is WeightsStatus.HUB_ONLINE
    assert calls == [name]
    (tmp_path / f"{name}.safetensors").write_bytes(b"weights")  # the folder's listing changes: looked at again
    assert download.weights_status(name) is WeightsStatus.FILE and calls == [name, name]
    (tmp_path / f"{name}.safetensors").unlink()
    assert download.weights_status(name) is WeightsStatus.HUB_ONLINE
    download.forget_weights_status()


def test_a_missing_embedded_model_is_missing(monkeypatch):
    download.forget_weights_status()
    monkeypatch.setattr(download, "local_weights_file", lambda name: None)
    try:
        assert download.weights_status("se_resnet_fmnist_nose5") is WeightsStatus.MISSING
        assert not WeightsStatus.MISSING.ready
    finally:
        download.forget_weights_status()
