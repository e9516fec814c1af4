"""Captum attributions on SE networks, with and without SE blocks removed.

- :func:`gradcam`: Grad-CAM (captum ``LayerGradCam``) at the output of a stage's last SE-bearing block, for a
  target class, optionally inside :func:`senet_viz.gates.capture.ablate` so the map shows what the network attends to
  once chosen SE blocks are removed (gate = 1) or frozen (mean gate).
- :func:`se_channel_attribution`: how much each SE channel's gate contributes to a class score, as gradient x
  activation at the gate (captum ``LayerGradientXActivation``): ``s_c * d score / d s_c``.

Both run under the model's lock with gradients enabled; captum removes its hooks in ``finally`` blocks and
computes gradients with ``torch.autograd.grad``, so no ``.grad`` is left on the parameters and the model is not
changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from senet_viz.gates.capture import ablate, model_lock
from senet_viz.gates.kinds import SEBlock
from senet_viz.models.loaded import LoadedModel


def stage_layer(loaded: LoadedModel, stage: int) -> str:
    """Module path of the residual/inverted-residual block that holds the last SE block of ``stage``."""
    blocks = [b for b in loaded.blocks if b.stage == stage]
    if not blocks:
        raise ValueError(f"stage {stage} has no SE block; stages are {sorted({b.stage for b in loaded.blocks})}")
    parts = blocks[-1].path.split(".")[:-1]  # drop the SE module itself: its parent is the block
    if parts and parts[-1] == "block":  # torchvision wraps the layers of a block in `.block`
        parts = parts[:-1]
    return ".".join(parts)


def gradcam_unavailable(loaded: LoadedModel) -> str | None:
    """Why Grad-CAM cannot be drawn for ``loaded`` (None when it can). It is computed at the output of the block
    module that holds a stage's last SE block; a network loaded as a graph (TorchScript, ``.pt2``, ONNX: gates found
    by ``torch.fx``, :attr:`SEBlock.kind` ``"fx"``) keeps no such block module to hook."""
    if any(b.kind == "fx" for b in loaded.blocks):
        return (f"Grad-CAM is not available for {loaded.name}: it was loaded as a graph (TorchScript, torch.export "
                "or ONNX), which keeps no block modules whose feature maps Grad-CAM could read; the per-channel "
                "attribution below works on its gates.")
    return None


def _module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise ValueError(f"no module '{path}' in the model") from exc


def gradcam(loaded: LoadedModel, pixels: torch.Tensor, stage: int, target: int | None = None,
            ablate_blocks: Sequence[SEBlock] = (), mode: str = "identity",
            means: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, int]:
    """Grad-CAM map (H x W of the input, in [0, 1]) for one image ``pixels`` (C x H x W) and the target class
    (default: the predicted one, under the same ablation). Returns (map, target)."""
    from captum.attr import LayerGradCam

    model = loaded.model
    x = pixels.unsqueeze(0).to(loaded.device) if pixels.dim() == 3 else pixels.to(loaded.device)
    layer = _module(model, stage_layer(loaded, stage))
    with model_lock(model), ablate(model, ablate_blocks, mode=mode, means=means, grad=True), torch.enable_grad():
        if target is None:
            with torch.no_grad():
                target = int(model(x).argmax(1)[0])
        cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    cam = F.interpolate(cam.detach().float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.cpu().numpy()
    peak = cam.max()
    return (cam / peak if peak > 0 else cam), target


def se_channel_attribution(loaded: LoadedModel, pixels: torch.Tensor, block: SEBlock, target: int | None = None
                           ) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel gradient x gate of ``block`` for the target class score (default: the predicted class).

    Returns (attribution (C,), gates (C,), target). Positive: that channel's excitation raises the class score.
    """
    from captum.attr import LayerGradientXActivation

    model = loaded.model
    x = pixels.unsqueeze(0).to(loaded.device) if pixels.dim() == 3 else pixels.to(loaded.device)
    gate = _module(model, block.gate_path)
    with model_lock(model), torch.enable_grad():
        if target is None:
            with torch.no_grad():
                target = int(model(x).argmax(1)[0])
        method = LayerGradientXActivation(model, gate)
        attr = method.attribute(x, target=target)
        with torch.no_grad():
            acts = {}
            handle = gate.register_forward_hook(lambda _m, _i, out: acts.setdefault("s", out.detach()))
            try:
                model(x)
            finally:
                handle.remove()
    return (attr.detach().flatten(1)[0].float().cpu().numpy(), acts["s"].flatten(1)[0].float().cpu().numpy(),
            target)
