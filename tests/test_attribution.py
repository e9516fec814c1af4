"""Captum attributions (senet_viz/analysis/attribution.py) on the embedded SE-ResNet and on a tiny SE net: what they
return,
and that they leave the model exactly as they found it (no hook, no ``.grad``, same ``requires_grad``, same mode,
same weights and statistics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EMBEDDED_MISSING, REPO_ROOT, embedded_model_ready, requires
from PIL import Image

from senet_viz.analysis.attribution import gradcam, se_channel_attribution, stage_layer
from senet_viz.gates.blocks import select_blocks
from senet_viz.gates.capture import capture
from senet_viz.models import zoo

MODEL = "se_resnet_fmnist"
SAMPLES = REPO_ROOT / "assets" / "fmnist_samples"
needs_model = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


@pytest.fixture(scope="module")
def fmnist():
    return zoo.load_model(MODEL, device="cpu")


def sample(cls: str, i: int = 0) -> Path:
    return sorted((SAMPLES / cls).glob("*.png"))[i]


def snapshot(model: torch.nn.Module) -> dict:
    """Everything an attribution must leave unchanged."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
    }


def assert_untouched(model: torch.nn.Module, before: dict) -> None:
    hooks = {name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                    len(m._backward_pre_hooks))
             for name, m in model.named_modules()}
    assert {name: n for name, n in hooks.items() if any(n)} == {}, "hooks left on modules"
    assert [p.grad for p in model.parameters() if p.grad is not None] == []
    assert [p.requires_grad for p in model.parameters()] == before["requires_grad"]
    assert [m.training for m in model.modules()] == before["training"]
    after = model.state_dict()
    assert after.keys() == before["state"].keys()
    assert [k for k, v in before["state"].items() if not torch.equal(v, after[k])] == []


def manual_gate_attribution(model: torch.nn.Module, gate_path: str, x: torch.Tensor, target: int) -> np.ndarray:
    """s_c * d score / d s_c, straight from autograd on a copy of the model."""
    import copy

    net = copy.deepcopy(model).eval()
    kept = {}

    def hook(_m, _i, out):
        kept["s"] = out
        return out

    net.get_submodule(gate_path).register_forward_hook(hook)
    with torch.enable_grad():
        score = net(x)[0, target]
        (grad,) = torch.autograd.grad(score, kept["s"])
    return (kept["s"] * grad).detach().flatten(1)[0].numpy()


# ------------------------------------------------------------------------------------------ the embedded model


@needs_model
@pytest.mark.slow
def test_gradcam_on_the_embedded_model_returns_a_normalised_map_and_leaves_the_model_untouched(fmnist):
    image = Image.open(sample("Sneaker"))
    pixels = fmnist.transform(image)
    model = fmnist.model
    before = snapshot(model)
    with torch.no_grad():
        predicted = int(model(pixels.unsqueeze(0)).argmax(1)[0])
    stages = sorted({b.stage for b in fmnist.blocks})
    for stage in stages:
        cam, target = gradcam(fmnist, pixels, stage)
        assert target == predicted  # default target: the predicted class
        assert cam.shape == tuple(pixels.shape[-2:]) and cam.dtype == np.float32
        assert np.isfinite(cam).all() and cam.min() >= 0.0
        assert cam.max() == pytest.approx(1.0)  # normalised to its peak: not an all-zero map
        assert (cam > 0.05).mean() > 0.01
        assert_untouched(model, before)
    # another class as the target gives another map
    other = (predicted + 1) % len(fmnist.class_names)
    cam_pred, _ = gradcam(fmnist, pixels, stages[-1])
    cam_other, t_other = gradcam(fmnist, pixels, stages[-1], target=other)
    assert t_other == other and not np.allclose(cam_pred, cam_other)
    assert_untouched(model, before)


@needs_model
def test_gradcam_with_the_last_se_blocks_removed_differs_and_removes_its_ablation(fmnist):
    pixels = fmnist.transform(Image.open(sample("Ankle_boot")))
    model = fmnist.model
    before = snapshot(model)
    stage = max(b.stage for b in fmnist.blocks)
    full, target = gradcam(fmnist, pixels, stage)
    removed = select_blocks(fmnist.blocks, f"stage:{stage}")
    ablated, _ = gradcam(fmnist, pixels, stage, target=target, ablate_blocks=removed)
    assert ablated.shape == full.shape and ablated.max() == pytest.approx(1.0)
    assert np.abs(ablated - full).max() > 1e-3  # the removed gates change what the network attends to
    assert_untouched(model, before)
    again, _ = gradcam(fmnist, pixels, stage, target=target)  # the ablation did not outlive the call
    np.testing.assert_allclose(again, full, rtol=1e-5, atol=1e-6)


@needs_model
def test_channel_attribution_on_the_embedded_model_is_gate_times_gradient(fmnist):
    pixels = fmnist.transform(Image.open(sample("Bag")))
    model = fmnist.model
    before = snapshot(model)
    block = fmnist.blocks[-1]
    attribution, gates, target = se_channel_attribution(fmnist, pixels, block)
    assert attribution.shape == gates.shape == (block.channels,)
    assert np.abs(attribution).max() > 0  # not all zero
    assert 0.0 <= gates.min() and gates.max() <= 1.0
    with capture(model, [block]) as rec:
        predicted = int(model(pixels.unsqueeze(0)).argmax(1)[0])
    assert target == predicted
    np.testing.assert_allclose(gates, rec.gates[block.name][0].astype(np.float32), atol=1e-3)  # fp16 capture
    expected = manual_gate_attribution(model, block.gate_path, pixels.unsqueeze(0), target)
    np.testing.assert_allclose(attribution, expected, rtol=1e-4, atol=1e-6)
    assert_untouched(model, before)


# ---------------------------------------------------------------------------------------------- a tiny net


@pytest.mark.parametrize("training", [False, True])
def test_attributions_keep_requires_grad_mode_and_state_of_a_tiny_net(tiny_seresnet, tiny_input, training):
    model = tiny_seresnet.model
    for i, p in enumerate(model.parameters()):  # a mixed pattern, e.g. a partly frozen network
        p.requires_grad_(i % 3 != 0)
    model.train(training)
    if training:  # batch norm in training mode would update its statistics: freeze it, as a fine-tuner might
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    before = snapshot(model)
    pixels = tiny_input[0]
    # random weights: a class's Grad-CAM may be all negative, so zero after the ReLU; over the ten classes, some
    # maps have signal, each normalised to its peak
    peaks = []
    for cls in range(len(tiny_seresnet.class_names)):
        cam, target = gradcam(tiny_seresnet, pixels, stage=5, target=cls)
        assert target == cls and cam.shape == (64, 64) and cam.min() >= 0
        peaks.append(float(cam.max()))
        assert_untouched(model, before)
    assert set(np.round(peaks, 5)) <= {0.0, 1.0} and 1.0 in np.round(peaks, 5), peaks
    block = tiny_seresnet.blocks[3]
    attribution, gates, target = se_channel_attribution(tiny_seresnet, pixels, block, target=2)
    assert target == 2 and attribution.shape == gates.shape == (block.channels,)
    assert np.abs(attribution).max() > 0
    assert_untouched(model, before)


def test_a_stage_without_se_is_a_clear_error(tiny_seresnet, tiny_input):
    assert stage_layer(tiny_seresnet, 5) == "layer4.1"  # the block that holds the stage's last SE module
    with pytest.raises(ValueError, match="stage 7 has no SE block"):
        gradcam(tiny_seresnet, tiny_input[0], stage=7)
