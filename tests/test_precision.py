"""Reduced precision must not corrupt results: the precision policy of senet_viz.inference.precision and the
ablation passes.

MobileNetV3-Small with every SE block removed (gate = 1) drives its activations to ~1e6, past float16's 65,504.
CPU autocast to float16 reproduces that overflow, so the fp32 fallback is tested here without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from senet_viz.analysis import ablation
from senet_viz.data.folders import folder_source
from senet_viz.data.sources import ImageSet
from senet_viz.inference.precision import ForwardCounter, PrecisionPolicy, autocast_dtype, use_full_fp32_on_cuda
from senet_viz.inference.run import Ablation, RunOptions, run_model

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(scope="module")
def eight_images(imagenet_samples) -> ImageSet:
    images = folder_source(imagenet_samples)
    return ImageSet(images.items[::110][:8], [], images.class_names)


@pytest.mark.slow
def test_fp16_overflow_is_redone_in_fp32(mnv3_tflite, eight_images):
    """Without the fallback the logits are NaN/inf; with it they are finite and give fp32's predictions."""
    loaded = mnv3_tflite
    kw = {"ablation": Ablation(loaded.blocks, "identity"), "batch_size": 4, "num_workers": 0}
    fp32 = run_model(loaded, eight_images, options=RunOptions(precision="fp32", **kw))
    assert np.isfinite(fp32.logits).all() and fp32.fp32_fallback_batches == 0 and fp32.precision == "fp32"

    raw = run_model(loaded, eight_images, options=RunOptions(precision="fp16", fp32_fallback=False, **kw))
    assert not np.isfinite(raw.logits).all(), "fp16 no longer overflows here: this test proves nothing"
    assert raw.fp32_fallback_batches == 0

    counter = ForwardCounter()
    safe = run_model(loaded, eight_images, options=RunOptions(precision="fp16", counter=counter, **kw))
    assert safe.precision == "fp16" and safe.fp32_fallback_batches == 2  # both batches of 4 overflowed
    assert safe.forwarded == counter.count == 2 * 8, "each batch ran twice: fp16, then fp32"
    assert np.isfinite(safe.logits).all()
    np.testing.assert_array_equal(safe.pred, fp32.pred)
    np.testing.assert_allclose(safe.logits, fp32.logits, rtol=1e-5, atol=1e-4)
    for name, gates in fp32.gates.items():  # the gates of the overflowing pass were dropped, not kept twice
        assert safe.gates[name].shape == gates.shape
        np.testing.assert_array_equal(safe.gates[name], gates)


@pytest.mark.slow
def test_fp16_without_overflow_keeps_fp16_and_bf16_does_not_overflow(mnv3_tflite, eight_images):
    loaded = mnv3_tflite
    fp32 = run_model(loaded, eight_images, options=RunOptions(precision="fp32", num_workers=0))
    fp16 = run_model(loaded, eight_images, options=RunOptions(precision="fp16", num_workers=0))
    assert fp16.fp32_fallback_batches == 0 and np.isfinite(fp16.logits).all()
    assert not np.array_equal(fp16.logits, fp32.logits), "fp16 ran in fp32"
    assert (fp16.pred == fp32.pred).mean() >= 0.75
    # bf16 has float32's range: removing every SE block stays finite
    bf16 = run_model(loaded, eight_images,
                     options=RunOptions(precision="bf16", ablation=Ablation(loaded.blocks), num_workers=0))
    assert bf16.precision == "bf16" and bf16.fp32_fallback_batches == 0 and np.isfinite(bf16.logits).all()


class _Overflowing(nn.Module):
    """A linear layer whose output (1e6) is finite in fp32 and inf in fp16; records whether autocast was on."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        nn.init.constant_(self.linear.weight, 1000.0)
        nn.init.zeros_(self.linear.bias)
        self.autocast: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.linear(x)


def test_after_two_overflowing_batches_in_a_row_the_pass_stays_in_fp32():
    model, x = _Overflowing(), torch.full((3, 4), 250.0)
    policy = PrecisionPolicy("fp16", "cpu")
    outs = [policy.forward(model, x) for _ in range(4)]
    assert all(torch.isfinite(o).all() and o[0, 0] == 1e6 for o in outs)
    assert model.autocast == [True, False, True, False, False, False]  # tried twice, then fp32 directly
    assert policy.fallback_batches == 4
    policy.new_pass()  # another configuration tries fp16 again
    policy.forward(model, x)
    assert model.autocast[-2:] == [True, False]


def test_precision_names():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None  # exact gates on the CPU
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp16", cpu) is torch.float16
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("half", cpu)


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_is_bf16_where_the_gpu_has_it(monkeypatch, native_bf16, expected):
    seen = {}

    def supported(including_emulation: bool = True) -> bool:
        seen["emulation"] = including_emulation
        return native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert autocast_dtype("auto", torch.device("cuda")) is expected
    assert seen["emulation"] is False  # emulated bf16 is slower than fp16


@pytest.mark.slow
def test_mean_ablation_calibrates_and_scores_at_the_same_precision(monkeypatch, mnv3_tflite, eight_images):
    calls = []
    real = ablation.run_model

    def spy(loaded, images, blocks, options, **kwargs):  # ablation passes all four
        calls.append(options.precision)
        return real(loaded, images, blocks, options, **kwargs)

    monkeypatch.setattr(ablation, "run_model", spy)
    ablation.evaluate(mnv3_tflite, eight_images, mnv3_tflite.blocks[-1:], mode="mean", calibrate_on_eval=True,
                      precision="bf16", replay=False)  # with tail replay the ablated pass is no run_model of its own
    assert calls == ["bf16"] * 3  # calibration, full, ablated


@pytest.mark.slow
def test_sweep_uses_the_policy_for_calibration_and_every_configuration(monkeypatch, mnv3_tflite, eight_images):
    loaded = mnv3_tflite
    dtypes = []
    real = PrecisionPolicy.forward

    def spy(self, model, x, recorder=None):
        dtypes.append(self.dtype)
        return real(self, model, x, recorder)

    monkeypatch.setattr(PrecisionPolicy, "forward", spy)
    configs = [("all", "all", list(loaded.blocks)), ("block", "SE_5_3", loaded.blocks[-1:])]
    kw = {"configs": configs, "fraction": 0.5, "batch_size": 4}
    frame = ablation.sweep(loaded, eight_images, ("identity", "mean"), precision="fp16", **kw)
    assert dtypes and set(dtypes) == {torch.float16}
    assert frame.attrs["precision"] == "fp16" and frame.attrs["fp32_fallback_batches"] > 0
    reference = ablation.sweep(loaded, eight_images, ("identity", "mean"), precision="fp32", **kw)
    assert reference.attrs["fp32_fallback_batches"] == 0
    removed = frame[(frame.config == "all") & (frame["mode"] == "identity")]
    ref_removed = reference[(reference.config == "all") & (reference["mode"] == "identity")]
    assert removed.agreement.notna().all()
    np.testing.assert_allclose(removed.kl.to_numpy(), ref_removed.kl.to_numpy(), rtol=1e-3, atol=1e-4)


def test_the_tf32_switches_are_set_once_and_never_flipped_back(monkeypatch):
    """Full fp32 on CUDA is a process-wide setting made once (the first CUDA policy), not switched per forward,
    so no thread's forward sees it change under it."""
    from senet_viz.inference import precision

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setattr(precision, "_full_fp32_set", False)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        PrecisionPolicy("fp32", "cpu")
        assert torch.backends.cudnn.allow_tf32, "a CPU policy changed the CUDA switches"
        PrecisionPolicy("fp16", "cuda")  # no GPU needed: making the policy sets the switches, no forward runs
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = True  # a user's choice after that is left alone
        use_full_fp32_on_cuda()
        PrecisionPolicy("fp32", "cuda")
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
