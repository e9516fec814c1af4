"""Tail replay (senet_viz.inference.tail): an ablated pass computed from an activation at a cut equals the full
ablated forward, for every family and gate kind; networks that cannot be cut fall back to the full pass and say so;
sweeps and evaluations give the same rows with replay on and off; cancel; the activations a full pass keeps.

Equality: identical top-1 / top-5 and logits within 1e-5 relative (fp32, CPU), in both ablation modes.
"""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import tiny_nets
import torch
from conftest import EMBEDDED_MISSING, TINY_CLASSES, embedded_model_ready, requires
from torch import nn

from senet_viz.analysis import ablation
from senet_viz.data.folders import folder_source
from senet_viz.gates.blocks import select_blocks
from senet_viz.gates.capture import ablate, hook_count
from senet_viz.inference import tail, tail_kept
from senet_viz.inference.precision import PrecisionPolicy
from senet_viz.inference.run import Cancelled, RunOptions, run_model
from senet_viz.lru import value_bytes
from senet_viz.models.loaded import LoadedModel

EMBEDDED = "se_resnet_fmnist"


# ------------------------------------------------------------------------------------------------ helpers


def _loaded(model: nn.Module, size: int, name: str = "net") -> LoadedModel:
    """A network with 10 classes as a LoadedModel on the CPU (inputs 3 x size x size)."""
    return LoadedModel.from_module(model.eval(), name, TINY_CLASSES, input_size=(3, size, size))


def _means(blocks, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b.name: rng.uniform(0.2, 0.9, b.channels).astype(np.float32) for b in blocks}


def assert_replay_equals_full(loaded: LoadedModel, blocks, x: torch.Tensor, mode: str = "identity") -> tail.Cut:
    """The tail from the cut before ``blocks`` (activation from the tapped full forward) gives the full ablated
    forward's logits (1e-5 relative), top-1 and top-5; the tapped forward is the eager forward."""
    plan = tail.find_cuts(loaded)
    cut = plan.cut_before(blocks)
    assert cut is not None, plan.why_not(blocks)
    means = _means(blocks) if mode == "mean" else None
    model = loaded.model
    policy = PrecisionPolicy("fp32", loaded.device)
    with torch.inference_mode():
        tapped = plan.tapped([cut])
        full = policy.forward(tapped, x)
        torch.testing.assert_close(full, model(x).float(), rtol=1e-5, atol=0)
        with ablate(model, blocks, mode=mode, means=means):
            want = model(x).float()
            got = policy.forward(plan.tail(cut), tapped.taps[0])
    scale = want.abs().max()
    assert scale > 1e-4
    assert float((got - want).abs().max() / scale) <= 1e-5
    assert torch.equal(got.topk(5, dim=1).indices, want.topk(5, dim=1).indices)
    assert hook_count(model) == 0
    return cut


# ------------------------------------------------------------------------------------------- tiny networks


def test_cuts_of_a_tiny_seresnet_lie_before_every_gate(tiny_seresnet, tiny_input):
    plan = tail.find_cuts(tiny_seresnet)
    assert plan.reason is None and plan is tail.find_cuts(tiny_seresnet)  # cached per model
    assert [c.first_block for c in plan.cuts] == [b.name for b in tiny_seresnet.blocks]
    shares = [c.tail_share for c in plan.cuts]
    assert shares == sorted(shares, reverse=True) and 0 < shares[-1] < shares[0] <= 1
    last = plan.cut_before(select_blocks(tiny_seresnet.blocks, "stage:5"))
    assert last.where == "layer3.1.act2" and last.shape == (48, 4, 4)
    assert last.describe().startswith("tail from layer3.1.act2 (before SE_5_1, ")
    for mode in ("identity", "mean"):
        for b in tiny_seresnet.blocks:
            assert_replay_equals_full(tiny_seresnet, tiny_seresnet.blocks[b.order:], tiny_input, mode)


def test_a_users_own_se_class_replays(tiny_custom, small_input):
    for mode in ("identity", "mean"):
        assert_replay_equals_full(tiny_custom, tiny_custom.blocks[-1:], small_input, mode)


class _InplaceAfterCut(tiny_nets.TinySEResNet):
    """Writes into the stage-5 input in place (not idempotent): kept and shared activations must not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x.mul_(1.5)  # its result unused: the graph's later nodes read the cut's own (changed) tensor
        return self.fc(torch.flatten(self.pool(self.layer4(x)), 1))


class _DataDependent(tiny_nets.TinySEResNet):
    """Control flow on the data: cannot be traced (a shape test could, a value test cannot)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 10:
            x = x * 2
        return super().forward(x)


class _ShapeDependent(tiny_nets.TinySEResNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return super().forward(x)


class _LongSkip(tiny_nets.TinySEResNet):
    """The input is used again at the end: no single tensor carries the whole computation anywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x.mean()


def test_an_in_place_op_after_the_cut_leaves_the_activation_intact(tiny_input):
    loaded = _loaded(tiny_nets.make_tiny_seresnet(cls=_InplaceAfterCut), 64)
    blocks = select_blocks(loaded.blocks, "stage:5")
    plan = tail.find_cuts(loaded)
    cut = plan.cut_before(blocks)
    assert cut.mutated
    # replayed twice from one activation (as a sweep's configurations do): the same logits each time
    with torch.inference_mode():
        tapped = plan.tapped([cut])
        tapped(tiny_input)
        activation = tapped.taps[0]
        before = activation.clone()
        first = plan.tail(cut)(activation)
        assert torch.equal(activation, before)
        assert torch.equal(plan.tail(cut)(activation), first)
    assert_replay_equals_full(loaded, blocks, tiny_input)


def test_shape_dependent_control_flow_is_decided_on_the_input_size(tiny_input):
    loaded = _loaded(tiny_nets.make_tiny_seresnet(cls=_ShapeDependent), 64)
    assert_replay_equals_full(loaded, select_blocks(loaded.blocks, "stage:5"), tiny_input)


@pytest.mark.parametrize("cls, why", [(_DataDependent, "torch.fx cannot trace _DataDependent"),
                                      (_LongSkip, "no single tensor carries the whole computation")])
def test_a_network_that_cannot_be_cut_reports_why(cls, why):
    loaded = _loaded(tiny_nets.make_tiny_seresnet(cls=cls), 64)
    plan = tail.find_cuts(loaded)
    blocks = select_blocks(loaded.blocks, "stage:5")
    assert plan.cut_before(blocks) is None
    assert why in plan.why_not(blocks)
    assert plan.note(blocks) == f"full pass: {plan.why_not(blocks)}"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_that_stays_a_script_module_is_a_fallback():
    model = torch.jit.script(tiny_nets.make_tiny_seresnet())
    loaded = LoadedModel(name="ts", model=model, transform=lambda im: im, class_names=TINY_CLASSES, wnids=None,
                         blocks=[], device=torch.device("cpu"), weights_source="file", weights_id="x")
    assert tail.find_cuts(loaded).reason == "a TorchScript network cannot be traced by torch.fx"


def test_replay_switch(monkeypatch):
    monkeypatch.delenv(tail.REPLAY_ENV, raising=False)
    assert tail.replay_enabled() and not tail.replay_enabled(False)
    monkeypatch.setenv(tail.REPLAY_ENV, "0")
    assert not tail.replay_enabled() and tail.replay_enabled(True)
    monkeypatch.setenv(tail.REPLAY_ENV, "1")
    assert tail.replay_enabled()


def test_cuts_budget(monkeypatch):
    monkeypatch.delenv(tail_kept.CUTS_MB_ENV, raising=False)
    monkeypatch.delenv("SENET_VIZ_RESULTS_MB", raising=False)
    assert tail_kept.cuts_budget_bytes() == 512 * 2**20
    monkeypatch.setenv("SENET_VIZ_RESULTS_MB", "400")
    assert tail_kept.cuts_budget_bytes() == 100 * 2**20
    monkeypatch.setenv(tail_kept.CUTS_MB_ENV, "7")
    assert tail_kept.cuts_budget_bytes() == 7 * 2**20


# ------------------------------------------------------------------------------------ families and gate kinds


def _lively(model: nn.Module) -> nn.Module:
    """Random weights with outputs of some size: an initialisation that zeroes or shrinks the classifier (small
    normal weights, zero-init last batch norms) gives logits near 0, where 1e-5 relative is no test."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.reset_running_stats()
                m.momentum = None  # the statistics of the batch below: activations of unit scale
        model.train()
        model(torch.randn(8, 3, 64, 64, generator=gen))
    return model.eval()


def _timm(name: str, **kwargs) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return _lively(timm.create_model(name, num_classes=10, **kwargs))


def _torchvision_mnv3() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return _lively(torchvision.models.mobilenet_v3_small(num_classes=10))


FAMILIES = {
    "timm seresnet18": lambda: _timm("seresnet18"),
    "timm legacy_seresnet18": lambda: _timm("legacy_seresnet18"),
    "timm mobilenetv3_small_100": lambda: _timm("mobilenetv3_small_100"),
    "torchvision mobilenet_v3_small": _torchvision_mnv3,
    "timm efficientnet_b0": lambda: _timm("efficientnet_b0"),
    "timm regnety_002": lambda: _timm("regnety_002"),
}
GATE_KINDS = ("eca", "ese", "cbam", "gc")  # "se" is every family above; fx_inline is the ONNX file below


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_replays_its_last_stage_and_a_middle_block(family):
    loaded = _loaded(FAMILIES[family](), 64, family)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    last = select_blocks(loaded.blocks, f"stage:{max(b.stage for b in loaded.blocks)}")
    middle = [loaded.blocks[len(loaded.blocks) // 2]]
    for mode in ("identity", "mean"):
        assert_replay_equals_full(loaded, last, x, mode)
        assert_replay_equals_full(loaded, middle, x, mode)


@pytest.mark.slow
@pytest.mark.parametrize("kind", GATE_KINDS)
def test_each_gate_kind_replays(kind):
    loaded = _loaded(_timm("resnet10t", block_args={"attn_layer": kind}), 64, kind)
    assert {b.gate_kind for b in loaded.blocks} == {"cbam_channel" if kind == "cbam" else
                                                    "global_context" if kind == "gc" else kind}
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for mode in ("identity", "mean"):
        assert_replay_equals_full(loaded, loaded.blocks[-2:], x, mode)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    model = tiny_nets.make_tiny_seresnet()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    folder = tmp_path_factory.mktemp("files")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(folder / "m.onnx"), input_names=["x"], dynamic_axes={"x": {0: "n"}},
                          dynamo=False, opset_version=17)
        torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                          folder / "m.pt2")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("file", ["m.onnx", "m.pt2"])
def test_a_model_file_replays(model_files, file, tiny_input):
    from senet_viz.models.zoo import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(str(model_files / file), device="cpu")
    assert isinstance(loaded.model, torch.fx.GraphModule)
    for mode in ("identity", "mean"):
        cut = assert_replay_equals_full(loaded, select_blocks(loaded.blocks, "stage:5"), tiny_input, mode)
        assert_replay_equals_full(loaded, loaded.blocks[1:2], tiny_input, mode)
    assert cut.first_block == "SE_5_1"


# ------------------------------------------------------------------------------ real images: the embedded model


@pytest.fixture(scope="module")
def embedded():
    from senet_viz.models import zoo

    return zoo.load_model(EMBEDDED, device="cpu")


@pytest.fixture(scope="module")
def samples(embedded):
    """3 embedded samples per class (30 images)."""
    from senet_viz.models import registry

    images = folder_source(registry.get_spec(EMBEDDED).samples_dir, embedded.class_names)
    taken: Counter = Counter()
    items = [it for it in images.items if (taken.update([it.label]) or taken[it.label] <= 3)]
    return replace(images, items=items)


def _same_metrics(a: ablation.AblationResult, b: ablation.AblationResult) -> None:
    assert (a.top1, a.top5, a.full_top1, a.full_top5, a.agreement, a.n_images, a.n_calibration) == \
        (b.top1, b.top5, b.full_top1, b.full_top5, b.agreement, b.n_images, b.n_calibration)
    assert a.kl == pytest.approx(b.kl, rel=1e-5, abs=1e-9)
    assert a.params_removed == b.params_removed and a.per_class_top1_change == b.per_class_top1_change


@requires(embedded_model_ready(EMBEDDED), EMBEDDED_MISSING)
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["identity", "mean"])
def test_embedded_model_evaluate_replays_the_tail(embedded, samples, mode):
    for spec in ("stage:5", "last:1"):
        blocks = select_blocks(embedded.blocks, spec)
        on = ablation.evaluate(embedded, samples, blocks, mode, replay=True, batch_size=8)
        off = ablation.evaluate(embedded, samples, blocks, mode, replay=False, batch_size=8)
        _same_metrics(on, off)
        assert on.replay.startswith("tail from ") and "% of MACs" in on.replay
        assert off.replay == "full pass: tail replay is off (SENET_VIZ_TAIL_REPLAY=0)"
        assert on.to_dict()["replay"] == on.replay
    x = torch.stack([embedded.transform(it.load()) for it in samples.items[:4]])
    assert_replay_equals_full(embedded, select_blocks(embedded.blocks, "stage:5"), x, mode)


@requires(embedded_model_ready(EMBEDDED), EMBEDDED_MISSING)
@pytest.mark.slow
def test_embedded_model_forward_equals_tail_on_tensors(embedded):
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    for mode in ("identity", "mean"):
        assert_replay_equals_full(embedded, select_blocks(embedded.blocks, "stage:5"), x, mode)
        assert_replay_equals_full(embedded, embedded.blocks[1:], x, mode)


@requires(embedded_model_ready(EMBEDDED), EMBEDDED_MISSING)
@pytest.mark.slow
def test_sweep_with_replay_equals_sweep_without_row_for_row(embedded, samples):
    seen = []
    on = ablation.sweep(embedded, samples, batch_size=8, replay=True, progress=lambda d, t: seen.append((d, t)))
    off = ablation.sweep(embedded, samples, batch_size=8, replay=False)
    assert list(on.columns) == list(off.columns) and len(on) == len(off)
    for col in on.columns:
        if col == "replay":
            continue
        if col == "kl":
            np.testing.assert_allclose(on[col].astype(float), off[col].astype(float), rtol=1e-5, atol=1e-9)
        else:
            assert on[col].tolist() == off[col].tolist(), col
    assert on["replay"].str.startswith("tail from ").all()
    assert (off["replay"] == "full pass: tail replay is off (SENET_VIZ_TAIL_REPLAY=0)").all()
    # progress: image forwards, calibration once, evaluation images once plus once per (configuration, mode)
    calib, rest = ablation.split_calibration(samples)
    total = len(calib.items) + len(rest.items) * (1 + len(on))
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)


@requires(embedded_model_ready(EMBEDDED), EMBEDDED_MISSING)
@pytest.mark.slow
def test_cancel_stops_a_sweep_between_batches(embedded, samples):
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 2  # after two batches

    with pytest.raises(Cancelled):
        ablation.sweep(embedded, samples, ("identity",), batch_size=4, cancel=cancel)
    assert len(asked) == 3 and hook_count(embedded.model) == 0
    with pytest.raises(Cancelled):
        ablation.evaluate(embedded, samples, embedded.blocks[-1:], cancel=lambda: True)
    assert issubclass(Cancelled, RuntimeError)


@requires(embedded_model_ready(EMBEDDED), EMBEDDED_MISSING)
@pytest.mark.slow
def test_kept_activations_replay_without_decoding(embedded, samples, tmp_path):
    # the images in a folder that is removed after the full pass: the ablated pass must not read them
    folder = tmp_path / "images"
    for it in samples.items:
        dest = folder / it.path.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(it.path, dest / it.path.name)
    images = folder_source(folder, embedded.class_names)
    _, evaluated = ablation.split_calibration(images)  # mean mode reads the calibration images, and only them
    full = run_model(embedded, images, options=RunOptions(batch_size=8, keep_cuts=True))
    assert full.cuts is not None and full.cuts_note == ""
    stage5 = select_blocks(embedded.blocks, "stage:5")
    cut = tail.find_cuts(embedded).cut_before(stage5)
    assert full.cuts.cut(cut) is cut
    array = full.cuts.arrays[cut.node]
    assert array.shape == (full.n, *cut.shape) and not array.flags.writeable and array.dtype == np.float32
    assert value_bytes(full) >= full.cuts.nbytes > 0
    reference = {mode: ablation.evaluate(embedded, images, stage5, mode, replay=False) for mode in ("identity", "mean")}
    for it in evaluated.items:
        it.path.unlink()
    for mode in ("identity", "mean"):
        out = ablation.evaluate(embedded, images, stage5, mode, full=full)
        assert out.replay.endswith("from the full pass's kept activations") and out.n_skipped == 0
        _same_metrics(out, reference[mode])


@requires(embedded_model_ready(EMBEDDED), EMBEDDED_MISSING)
@pytest.mark.slow
def test_activations_over_budget_are_not_kept_and_the_ablation_says_so(embedded, samples):
    full = run_model(embedded, samples, options=RunOptions(batch_size=8, keep_cuts=True, cuts_budget=1000))
    assert full.cuts is None and "over the 0 MiB budget" in full.cuts_note
    out = ablation.evaluate(embedded, samples, select_blocks(embedded.blocks, "stage:5"), full=full)
    assert out.replay.startswith("full pass: the full pass kept no activations at ") and "budget" in out.replay
    off = run_model(embedded, samples, options=RunOptions(batch_size=8, keep_cuts=True, replay=False))
    assert off.cuts is None and off.cuts_note == "tail replay is off (SENET_VIZ_TAIL_REPLAY=0)"


def test_a_fallback_evaluation_equals_the_full_pass(tmp_path):
    """A network that cannot be traced: evaluate() runs the full ablated pass, says why, and gives the same
    metrics as with replay off."""
    from PIL import Image

    from senet_viz.data.sources import ImageItem, ImageSet

    model = tiny_nets.make_tiny_seresnet(cls=_DataDependent)
    loaded = LoadedModel.from_module(model, "dd", TINY_CLASSES, input_size=(3, 64, 64))
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        items.append(ImageItem(key=path.name, name=path.name, label=i % 3, label_name=TINY_CLASSES[i % 3], path=path))
    images = ImageSet(items=items, class_names=TINY_CLASSES)
    blocks = select_blocks(loaded.blocks, "stage:5")
    on = ablation.evaluate(loaded, images, blocks, replay=True)
    off = ablation.evaluate(loaded, images, blocks, replay=False)
    assert on.replay.startswith("full pass: torch.fx cannot trace _DataDependent")
    _same_metrics(on, off)


# -------------------------------------------------------------------- the real MobileNetV3-Small (shared TFLite)


@pytest.mark.slow
def test_shared_tflite_mobilenetv3_replays_stage5(mnv3_tflite, imagenet_samples):
    every = folder_source(imagenet_samples)
    images = replace(every, items=every.items[::37][:24], skipped=[])
    stage5 = select_blocks(mnv3_tflite.blocks, "stage:5")
    for mode in ("identity", "mean"):
        on = ablation.evaluate(mnv3_tflite, images, stage5, mode, replay=True, precision="fp32", batch_size=12)
        off = ablation.evaluate(mnv3_tflite, images, stage5, mode, replay=False, precision="fp32", batch_size=12)
        _same_metrics(on, off)
        assert on.replay.startswith("tail from ") and "before SE_5_1" in on.replay
    x = torch.stack([mnv3_tflite.transform(it.load()) for it in images.items[:4]])
    for mode in ("identity", "mean"):
        assert_replay_equals_full(mnv3_tflite, stage5, x, mode)
        assert_replay_equals_full(mnv3_tflite, mnv3_tflite.blocks[-1:], x, mode)
