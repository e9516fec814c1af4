"""Weights files (weights.py): safe loading, unwrapping, and clear errors for files that do not fit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_nets import TinySEResNet, make_tiny_custom, make_tiny_seresnet

from senet_viz.models.weights import WeightsError, check_state_dict, load_weights_into, read_state_dict


def _equal_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_round_trip(tmp_path: Path):
    source, target = make_tiny_seresnet(seed=1), make_tiny_seresnet(seed=2)
    assert not _equal_weights(source, target)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    load_weights_into(target, path)
    assert _equal_weights(source, target)


@pytest.mark.parametrize("layout", ["state_dict", "with_metrics", "model_state_dict", "plain"])
def test_pth_nested_state_dict_with_module_prefix(tmp_path: Path, layout: str):
    source, target = make_tiny_seresnet(seed=1), make_tiny_seresnet(seed=2)
    path = tmp_path / "checkpoint.pth"
    prefixed = {f"module.{k}": v for k, v in source.state_dict().items()}
    nested = {
        "state_dict": {"state_dict": prefixed},
        # torchvision/pytorch-examples style: a tensor metric beside the weights
        "with_metrics": {"epoch": 90, "arch": "tiny", "best_acc1": torch.tensor(76.1), "state_dict": prefixed},
        "model_state_dict": {"model": {"state_dict": prefixed}, "optimizer": {"param_groups": []}},
        "plain": prefixed,
    }[layout]
    torch.save(nested, path)
    load_weights_into(target, path)
    assert _equal_weights(source, target)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.target}",)


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path):
    side_effect = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": make_tiny_custom().state_dict(), "payload": _Exploit(side_effect)}, path)
    assert not side_effect.exists()  # saving did not run it either
    with pytest.raises(WeightsError, match="weights_only") as info:
        load_weights_into(make_tiny_custom(), path)
    assert "evil.pth" in str(info.value)
    assert not side_effect.exists(), "the pickled os.system call was executed"


def test_a_checkpoint_of_another_architecture_names_the_mismatches(tmp_path: Path):
    class Wider(TinySEResNet):
        WIDTHS = (16, 32, 48, 96)

    torch.manual_seed(0)
    path = tmp_path / "wider.safetensors"
    save_file({k: v.contiguous() for k, v in Wider().state_dict().items()}, str(path))
    target = make_tiny_seresnet()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsError) as info:
        load_weights_into(target, path)
    message = str(info.value)
    assert "shape mismatch" in message and "another model" in message
    assert "layer4.0.conv1.weight: file (96, 48, 3, 3) vs model (64, 48, 3, 3)" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items()), "a failed load changed weights"


def test_missing_and_unexpected_keys_are_listed():
    model = make_tiny_custom()
    state = dict(model.state_dict())
    state.pop("gate1.squeeze.weight")
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as info:
        check_state_dict(model, state)
    message = str(info.value)
    assert "missing in file (1): gate1.squeeze.weight" in message
    assert "not in model (1): extra.weight" in message


@pytest.mark.parametrize("suffix", [".tflite", ".safetensors", ".pth"])
def test_a_text_file_with_a_weights_suffix_is_a_weights_error(tmp_path: Path, suffix: str):
    path = tmp_path / f"not_weights{suffix}"
    path.write_text("this is a plain text file, not a model\n" * 20)
    with pytest.raises(WeightsError):
        load_weights_into(make_tiny_custom(), path)


def test_missing_file_and_unsupported_suffix(tmp_path: Path):
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07")
    with pytest.raises(WeightsError, match=r"\.safetensors"):
        read_state_dict(onnx)


def test_a_checkpoint_without_tensors_is_refused(tmp_path: Path):
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "state_dict": {}}, path)
    with pytest.raises(WeightsError, match="state dict"):
        read_state_dict(path)


def test_the_file_hash_is_memoised_until_the_file_changes(tmp_path: Path, monkeypatch):
    import hashlib

    import senet_viz.models.weights as weights

    hashed = []
    real = weights.hash_file
    monkeypatch.setattr(weights, "hash_file", lambda path: hashed.append(path) or real(path))
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"first")
    full = weights.file_sha256(path)
    assert full == hashlib.sha256(b"first").hexdigest() and weights.file_digest(path) == full[:16]
    assert weights.file_digest(str(path), length=8) == full[:8] and len(hashed) == 1  # one read for all three
    path.write_bytes(b"second, longer")
    assert weights.file_sha256(path) == hashlib.sha256(b"second, longer").hexdigest() and len(hashed) == 2
    stat = path.stat()
    path.write_bytes(b"second, LONGER")  # same size, then a new modification time: read again
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert weights.file_sha256(path) == hashlib.sha256(b"second, LONGER").hexdigest() and len(hashed) == 3
