"""The slim export (senet_viz.analysis.slim): a network without chosen SE blocks equals the hook-ablated one.

Per family (SE-ResNet, MobileNetV3, EfficientNet, RegNetY, ECA, the embedded model) and mode, on real images, the
exported network's logits equal :func:`senet_viz.gates.capture.ablate`'s within 1e-5 (fp32); random-weight
networks get seeded batch-norm statistics first, since timm zero-initialises the last BN of residual branches (an
SE there would change nothing and the test would prove nothing). The loaded network is never changed; the files
load back through the weights path (the JSON beside them rebuilds the structure).
Hostile JSON: tests/test_slim_hostile.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image
from torch import nn

from senet_viz.analysis.cost import model_cost
from senet_viz.analysis.slim import fit_means, save_slim, slim_network
from senet_viz.gates.blocks import select_blocks
from senet_viz.gates.capture import ablate, hook_count
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.slim_file import ChannelScale

FMNIST_SAMPLES = REPO_ROOT / "assets" / "fmnist_samples"


def seeded_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every batch norm of ``model`` with seeded, non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def random_means(blocks, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b.name: rng.uniform(0.05, 1.0, b.channels).astype(np.float32) for b in blocks}


def real_batch(loaded: LoadedModel, folder: Path, n: int = 4) -> torch.Tensor:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n]
    return torch.stack([loaded.transform(Image.open(f).convert("RGB")) for f in files]).to(loaded.device)


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_equal_to_ablation(loaded: LoadedModel, blocks, mode: str, x: torch.Tensor, means=None):
    before = state_copy(loaded.model)
    slim = slim_network(loaded, blocks, mode, means)
    with ablate(loaded.model, blocks, mode=mode, means=means):
        reference = loaded.model(x)
    with torch.no_grad():
        out = slim.model(x)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    # the loaded (shared, cached) network is untouched: same weights, its SE modules in place, no hook left
    after = loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    modules = dict(loaded.model.named_modules())
    assert all(b.path in modules and not isinstance(modules[b.path], nn.Identity) for b in blocks)
    assert hook_count(loaded.model) == 0
    # parameters: the cost table's "after"
    cost = model_cost(loaded.model, loaded.blocks, blocks, loaded.input_size, loaded.name)
    assert slim.params == cost.params_after == sum(p.numel() for p in slim.model.parameters())
    return slim


# ------------------------------------------------------------------------------------ tiny nets (fast)


@pytest.mark.slow  # about 1 s on an idle core (three block checks, the whole-network check, the cost count)
@pytest.mark.parametrize("mode", ["identity", "mean"])
def test_tiny_seresnet_slim_equals_ablation(tiny_seresnet, tiny_input, mode):
    seeded_bn(tiny_seresnet.model)
    blocks = select_blocks(tiny_seresnet.blocks, "last:3")
    means = random_means(blocks) if mode == "mean" else None
    slim = assert_equal_to_ablation(tiny_seresnet, blocks, mode, tiny_input, means)
    if mode == "identity":
        assert {r["how"] for r in slim.removed} == {"identity"}
    else:  # the BN that closes the residual branch takes the gate
        assert all(r["how"] == f"folded into {r['path'].rpartition('.')[0]}.bn2" for r in slim.removed)
    modules = dict(slim.model.named_modules())
    assert all(isinstance(modules[b.path], nn.Identity) for b in blocks)


@pytest.mark.parametrize("mode", ["identity", "mean"])
def test_user_se_class_at_the_root(tiny_custom, small_input, mode):
    """A user's own SE class whose parent is the network itself; the conv before it sits behind a ReLU."""
    blocks = tiny_custom.blocks
    means = random_means(blocks, 1) if mode == "mean" else None
    slim = assert_equal_to_ablation(tiny_custom, blocks, mode, small_input, means)
    if mode == "mean":
        assert [r["how"] for r in slim.removed] == ["folded into conv1.0", "folded into conv2.0",
                                                    "folded into conv3.0"]


def test_a_gate_that_cannot_fold_is_a_fixed_scale(tiny_custom, small_input):
    """A negative constant cannot pass the ReLU before the SE: the fold goes to the conv after it, or to a scale."""
    blocks = tiny_custom.blocks
    means = {b.name: -v for b, v in zip(blocks, random_means(blocks, 2).values(), strict=True)}
    slim = assert_equal_to_ablation(tiny_custom, blocks, "mean", small_input, means)
    hows = [r["how"] for r in slim.removed]
    assert hows[:2] == ["folded into conv2.0", "folded into conv3.0"]
    assert hows[2] == "scale"  # gate3 feeds the pooling head: nothing to fold into
    assert isinstance(slim.model.gate3, ChannelScale) and not list(slim.model.gate3.parameters())


def test_bad_requests_are_refused(tiny_seresnet):
    with pytest.raises(ValueError, match="mode"):
        slim_network(tiny_seresnet, tiny_seresnet.blocks[:1], "zero")
    with pytest.raises(ValueError, match="at least one"):
        slim_network(tiny_seresnet, [], "identity")
    with pytest.raises(ValueError, match="mean gate of"):
        slim_network(tiny_seresnet, tiny_seresnet.blocks[:1], "mean", {})
    b = tiny_seresnet.blocks[0]
    with pytest.raises(ValueError, match="finite"):
        slim_network(tiny_seresnet, [b], "mean", {b.name: np.full(b.channels, np.nan, np.float32)})


# ------------------------------------------------------------------------------------ the families (real images)

FAMILIES = [
    ("legacy_seresnet18", "stage:5"),  # SE-ResNet (timm legacy, ReLU before the SE)
    ("timm:seresnet18", "stage:5"),  # SE-ResNet (timm ResNet with SE)
    ("mobilenet_v3_small", "stage:4-5"),  # MobileNetV3 (torchvision)
    ("timm:mobilenetv3_small_100", "stage:5"),  # MobileNetV3 (timm)
    ("timm:efficientnet_b0", "last:5"),  # EfficientNet (timm)
    ("timm:regnety_002", "last:4"),  # RegNetY (timm)
    ("timm:ecaresnet26t", "stage:4-5"),  # ECA
]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["identity", "mean"])
@pytest.mark.parametrize(("name", "spec"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_slim_equals_ablation_on_real_images(name, spec, mode, imagenet_samples):
    from senet_viz.models.zoo import load_model

    loaded = load_model(name, weights="random", device="cpu")
    seeded_bn(loaded.model)
    blocks = select_blocks(loaded.blocks, spec)
    means = random_means(blocks) if mode == "mean" else None
    slim = assert_equal_to_ablation(loaded, blocks, mode, real_batch(loaded, imagenet_samples), means)
    if mode == "mean":  # every one of these families folds every gate exactly
        assert all(r["how"].startswith("folded into ") for r in slim.removed), slim.removed


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["identity", "mean"])
def test_embedded_model_slim_round_trip(mode, tmp_path):
    """The embedded model (trained weights): slim equals ablation with gates fitted on its samples, and the saved
    files load back through the weights path into the same network."""
    from senet_viz.data.folders import folder_source
    from senet_viz.models.zoo import load_model

    loaded = load_model("se_resnet_fmnist", device="cpu")
    blocks = select_blocks(loaded.blocks, "stage:5")
    means, n_calib = None, 0
    if mode == "mean":
        images = folder_source(FMNIST_SAMPLES, class_names=loaded.class_names)
        means, n_calib = fit_means(loaded, images, blocks)
        assert n_calib > 0
    x = real_batch(loaded, FMNIST_SAMPLES, 8)
    slim = assert_equal_to_ablation(loaded, blocks, mode, x, means)
    slim.n_calibration = n_calib
    paths = save_slim(slim, loaded, tmp_path, ("safetensors", "torchscript", "onnx"))
    assert {p.name for p in tmp_path.iterdir()} == {f"se_resnet_fmnist_slim.{s}" for s in
                                                    ("safetensors", "json", "pt", "onnx")}
    again = load_model("se_resnet_fmnist", weights=paths["safetensors"], device="cpu")
    assert [b.name for b in again.blocks] == [b.name for b in loaded.blocks if b not in blocks]
    assert sum(p.numel() for p in again.model.parameters()) == slim.params
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), slim.model(x), rtol=0, atol=0)
        traced = torch.jit.load(str(paths["torchscript"]))
        torch.testing.assert_close(traced(x), slim.model(x), rtol=1e-6, atol=1e-6)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(onnx_out, slim.model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_legacy_seresnet50_without_stage5_se_has_the_papers_parameter_count():
    from senet_viz.models.zoo import load_model

    loaded = load_model("legacy_seresnet50", weights="random", device="cpu")
    slim = slim_network(loaded, select_blocks(loaded.blocks, "stage:5"), "identity")
    assert slim.params == 26_508_632
    assert slim.check_max_abs == 0.0


@pytest.mark.slow
def test_mobilenetv3_small_round_trip_keeps_the_hook_ablated_top1(mnv3_tflite, imagenet_samples, tmp_path):
    """A lighter version of the 900-image measurement: the shared MobileNetV3-Small, 120 images, both modes; the
    exported file loaded through the weights path predicts as the hook-ablated network on the evaluation split."""
    from senet_viz.analysis.ablation import evaluate, split_calibration
    from senet_viz.data.folders import folder_source
    from senet_viz.data.sources import model_space_labels
    from senet_viz.inference.run import RunOptions, run_model
    from senet_viz.models.zoo import load_model

    loaded = mnv3_tflite
    images = model_space_labels(folder_source(imagenet_samples, class_names=loaded.class_names,
                                              wnids=loaded.wnids), loaded.class_names, loaded.wnids)
    images.items = images.items[::7][:120]
    blocks = select_blocks(loaded.blocks, "stage:5")
    for mode in ("identity", "mean"):
        hooked = evaluate(loaded, images, blocks, mode, precision="fp32")
        means, n_calib = fit_means(loaded, images, blocks) if mode == "mean" else (None, 0)
        assert n_calib == hooked.n_calibration
        paths = save_slim(slim_network(loaded, blocks, mode, means, n_calibration=n_calib), loaded,
                          tmp_path / mode)
        again = load_model(loaded.name, weights=paths["safetensors"], device="cpu")
        eval_images = split_calibration(images)[1] if mode == "mean" else images
        result = run_model(again, eval_images, [], RunOptions(precision="fp32"))
        known = result.labels >= 0
        top1 = float((result.pred[known] == result.labels[known]).mean())
        assert result.n == hooked.n_images and top1 == pytest.approx(hooked.top1, abs=1e-12)


@pytest.mark.slow
def test_nfnet_gain_and_weight_standardised_convs_keep_a_scale(imagenet_samples):
    """NFNets multiply the SE output by attn_gain (2): identity removal is a constant gate 1 / gain, and their convs
    standardise their weights, so no fold is exact: every block keeps a ChannelScale of 0.5 (or of the mean)."""
    from senet_viz.models.zoo import load_model

    loaded = load_model("timm:nf_regnet_b0", weights="random", device="cpu")
    with torch.no_grad():  # timm starts every residual branch at 0 (skipinit): the SE would change nothing
        for name, p in loaded.model.named_parameters():
            if name.endswith("skipinit_gain"):
                p.fill_(1.0)
    blocks = select_blocks(loaded.blocks, "last:4")
    assert all(b.gain == 2.0 for b in blocks)
    x = real_batch(loaded, imagenet_samples, 2)
    for mode in ("identity", "mean"):
        means = random_means(blocks) if mode == "mean" else None
        slim = assert_equal_to_ablation(loaded, blocks, mode, x, means)
        assert {r["how"] for r in slim.removed} == {"scale"}
    assert float(slim_network(loaded, blocks, "identity").model.get_submodule(blocks[0].path).scale[0]) == 0.5
