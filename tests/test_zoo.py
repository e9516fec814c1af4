"""The model zoo (zoo.py): where weights come from, offline behaviour, devices, the real MobileNetV3-Small."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLASSES, make_tiny_custom
from PIL import Image
from safetensors.torch import save_file

import senet_viz.zoo as zoo
from senet_viz.capture import hook_count
from senet_viz.zoo import (
    WEIGHTS_DIR_ENV,
    LoadedModel,
    WeightsUnavailableError,
    get_spec,
    load_model,
    local_weights_file,
    resolve_device,
)


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
    monkeypatch.setattr(zoo, "_hub_url", lambda spec: "https://127.0.0.1:9/")
    monkeypatch.setattr(zoo, "_hub_cached_file", lambda spec: None)
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
