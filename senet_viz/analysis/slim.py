"""Export a network without chosen SE blocks: a real, smaller ``nn.Module``, not a hook.

:func:`slim_network` deep-copies a loaded network (the loaded one, shared by sessions, is never touched) and takes
out the SE modules of ``blocks``:

- ``mode="identity"``: each SE module becomes ``nn.Identity`` (gate = 1, the paper's removal). A block whose
  network multiplies its output by a gain (NFNet's ``attn_gain``) keeps the effective scale 1 with a constant
  gate ``1 / gain``, handled as a frozen gate below.
- ``mode="mean"``: each gate is frozen to a per-channel constant ``m`` (its mean over calibration images), and
  ``x * m`` is folded into a neighbouring layer where the algebra is exact: into the layer that produces the SE
  input when it is a batch norm without activation (the BN that closes a ResNet residual branch: weight and bias
  times ``m``) or a convolution (its output channels times ``m``), else into the convolution that alone consumes
  the SE output (MobileNet / EfficientNet / RegNetY: the 1x1 projection; its input channels times ``m``). Where
  neither holds (an activation between, a weight-standardised convolution, a residual add) a
  :class:`~senet_viz.models.slim_file.ChannelScale` keeps ``m`` as a buffer.

Where a fold goes is read from a ``torch.fx`` trace of the SE module's parent (the residual block), and every fold
is checked numerically: the parent's output on the inputs it saw in a probe forward must equal the hook-ablated
parent's (:func:`senet_viz.gates.capture.ablate`), else the fold is undone and a ``ChannelScale`` used instead.

:func:`save_slim` writes ``<name>_slim.safetensors`` and ``<name>_slim.json`` (what was removed and how, the base
weights, the calibration size, the parameter count), plus TorchScript / ONNX on request. The JSON lets the weights
load back through ``load_model(name, weights=...)`` (:mod:`senet_viz.models.slim_file`).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from senet_viz import __version__
from senet_viz.analysis.ablation import CALIBRATION_FRACTION, mean_gates, split_calibration
from senet_viz.data.sources import ImageSet
from senet_viz.gates.capture import ablate, model_lock
from senet_viz.gates.kinds import SEBlock
from senet_viz.inference.run import RunOptions, run_model
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.slim_file import (
    FOLDED,
    MODES,
    SLIM_FORMAT,
    SLIM_FORMAT_VERSION,
    ChannelScale,
    replace_module,
)
from senet_viz.models.weights import file_sha256

FORMATS = ("safetensors", "torchscript", "onnx")
FOLD_RTOL = 1e-4  # a fold changes rounding only; a wrong fold (weight standardisation, ...) changes values by O(1)


@dataclass
class SlimNetwork:
    """A network with SE blocks taken out: ``model`` (a new module, eval mode, on the loaded model's device),
    ``removed`` (one dict per block: ``block``, ``path``, ``channels``, ``how``: "identity", "folded into <module
    path>" or "scale"), ``params`` (parameters of ``model``)."""

    model: nn.Module
    removed: list[dict]
    params: int
    mode: str
    params_full: int
    n_calibration: int = 0  # images the mean gates were fitted on (0 for identity)
    check_max_abs: float | None = None  # max |slim - hook-ablated| of the logits on the probe batch
    notes: list[str] = field(default_factory=list)

    @property
    def blocks(self) -> list[str]:
        return [r["block"] for r in self.removed]


def _leaf_tracer(se_child: str) -> fx.Tracer:
    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname == se_child or isinstance(m, nn.BatchNorm2d | nn.Conv2d) \
                or super().is_leaf_module(m, qualname)

    return Tracer()


def _plain_bn(module: nn.Module) -> bool:
    """A batch norm with an affine part and nothing after it (timm's BatchNormAct2d only with identity act / drop)."""
    if not isinstance(module, nn.BatchNorm2d) or module.weight is None or module.bias is None:
        return False
    return all(isinstance(getattr(module, extra, nn.Identity()), nn.Identity) for extra in ("act", "drop"))


def _plain_conv(module: nn.Module) -> bool:
    """A convolution that uses its weight as it is: torch's own forward, or timm's "same"-padding one (zero padding
    first). A subclass with its own forward may transform the weight (weight standardisation: NFNets): no fold."""
    forward = type(module).forward
    return isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and (
        forward is nn.Conv2d.forward or type(module).__name__ == "Conv2dSame")


def _fold_candidates(parent: nn.Module, child: str, nonnegative: bool = False) -> list[tuple[str, str]]:
    """(relative module path, "out" | "in") of the layers the gate may fold into, best first: the producer of the SE
    input (a plain BN or a conv) when the SE module is its only user, then the conv that alone consumes its output.
    With a ``nonnegative`` gate the producer may sit behind a ReLU (relu(a) * m = relu(a * m) for m >= 0: timm's
    legacy SE-ResNet basic block applies its ReLU before the SE)."""
    try:
        graph = _leaf_tracer(child).trace(parent)
    except Exception:  # noqa: BLE001 - a forward fx cannot trace: no fold, a ChannelScale
        return []
    modules = dict(parent.named_modules())
    se_nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == child]
    if len(se_nodes) != 1:
        return []
    node = se_nodes[0]
    found = []
    source = node.args[0] if node.args else None
    if nonnegative and isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1 \
            and type(modules.get(source.target)) is nn.ReLU and source.args:
        source = source.args[0]
    if isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1:
        module = modules.get(source.target)
        if _plain_bn(module) or _plain_conv(module):
            found.append((source.target, "out"))
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module" and users[0].args and users[0].args[0] is node \
            and len(users[0].args) == 1 and not users[0].kwargs:
        if _plain_conv(modules.get(users[0].target)):
            found.append((users[0].target, "in"))
    return found


def _scale_layer(module: nn.Module, side: str, vec: torch.Tensor) -> None:
    """Multiply ``module``'s output channels (``side="out"``; a BN's weight and bias) or input channels (``"in"``)
    by ``vec``, in place."""
    with torch.no_grad():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.mul_(vec)
            module.bias.mul_(vec)
        elif side == "out":
            module.weight.mul_(vec.view(-1, *([1] * (module.weight.dim() - 1))))
            if module.bias is not None:
                module.bias.mul_(vec)
        else:
            w, g = module.weight, module.groups
            per_in = w.shape[1]
            w.view(g, w.shape[0] // g, per_in, *w.shape[2:]).mul_(vec.view(g, 1, per_in, *([1] * (w.dim() - 2))))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool((a - b).abs().max() <= FOLD_RTOL * max(scale, 1.0))


def _probe(model: nn.Module, parents: set[str], x: torch.Tensor) -> dict[str, tuple]:
    """The (args, kwargs) each module of ``parents`` is called with in one forward of ``x`` (first call, cloned)."""
    seen: dict[str, tuple] = {}
    handles = []

    def hook(path: str):
        def pre(_m, args, kwargs):
            if path not in seen:
                clone = lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
                seen[path] = (tuple(clone(a) for a in args), {k: clone(v) for k, v in kwargs.items()})
        return pre

    modules = dict(model.named_modules())
    try:
        for path in parents:
            handles.append(modules[path].register_forward_pre_hook(hook(path), with_kwargs=True))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _freeze_block(model: nn.Module, block: SEBlock, vec: torch.Tensor, inputs: tuple | None) -> str:
    """Take ``block``'s SE module out of ``model`` with its gate frozen to ``vec``; returns how."""
    parent_path, _, child = block.path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    se = parent.get_submodule(child)
    if inputs is not None and not getattr(se, "channels_last", False):
        args, kwargs = inputs
        with ablate(model, [block], mode="mean", means={block.name: vec.cpu().numpy()}, grad=False), torch.no_grad():
            reference = parent(*args, **kwargs)
        for target, side in _fold_candidates(parent, child, bool((vec >= 0).all())):
            layer = parent.get_submodule(target)
            saved = {k: v.detach().clone() for k, v in layer.state_dict().items()}
            _scale_layer(layer, side, vec.to(device=layer.weight.device, dtype=layer.weight.dtype))
            setattr(parent, child, nn.Identity())
            with torch.no_grad():
                ok = _close(parent(*args, **kwargs), reference)
            if ok:
                return FOLDED + (f"{parent_path}.{target}" if parent_path else target)
            layer.load_state_dict(saved)
            setattr(parent, child, se)
    scale = ChannelScale(block.channels, channels_last=bool(getattr(se, "channels_last", False)))
    scale.scale.copy_(vec)
    replace_module(model, block.path, scale.to(vec.device))
    return "scale"


def slim_network(loaded: LoadedModel, blocks: Sequence[SEBlock], mode: str = "identity",
                 means: Mapping[str, np.ndarray] | None = None, *, n_calibration: int = 0) -> SlimNetwork:
    """A copy of ``loaded.model`` without the SE modules of ``blocks`` (see the module docstring); ``means``: the
    per-channel mean gate of each block for ``mode="mean"`` (:func:`fit_means`). ``loaded.model`` is not changed."""
    if mode not in MODES:
        raise ValueError(f"slim mode must be 'identity' or 'mean', not {mode!r}")
    blocks = list(blocks)
    if not blocks:
        raise ValueError("choose at least one SE block to remove")
    known = {b.name: b for b in loaded.blocks}
    foreign = [b.name for b in blocks if known.get(b.name) != b]
    if foreign:
        raise ValueError(f"these blocks are not {loaded.name}'s: {', '.join(foreign)}")
    traced = [b.name for b in blocks if b.kind == "fx"]
    if traced:
        raise ValueError(f"{loaded.name}'s gates are written inline in its graph ({', '.join(traced[:3])}), with no SE "
                         "module to take out: a slim export needs SE modules (a zoo / timm / torchvision network)")
    vectors: dict[str, torch.Tensor] = {}
    for b in blocks:
        if mode == "mean":
            if not means or b.name not in means:
                raise ValueError(f"mode 'mean' needs the mean gate of {b.name}; fit it on calibration images")
            vec = torch.as_tensor(np.asarray(means[b.name], dtype=np.float32)).flatten()
            if vec.numel() != b.channels or not torch.isfinite(vec).all():
                raise ValueError(f"the mean gate of {b.name} must be {b.channels} finite values")
        else:
            vec = torch.full((b.channels,), b.identity_gate)
        vectors[b.name] = vec.to(loaded.device)
    with loaded.lock:  # no other request's hooks are on the model while it is copied
        model = copy.deepcopy(loaded.model)
    model.eval()
    x = torch.randn((2, *loaded.input_size), generator=torch.Generator().manual_seed(0)).to(loaded.device)
    # the inputs of the blocks whose gate is frozen (a plain identity removal needs no fold, so no probe)
    parents = {b.path.rpartition(".")[0] for b in blocks if mode == "mean" or b.identity_gate != 1.0}
    with model_lock(model):
        inputs = _probe(model, parents, x) if parents else {}
        removed = []
        for b in blocks:
            if mode == "identity" and b.identity_gate == 1.0:
                replace_module(model, b.path, nn.Identity())
                how = "identity"
            else:
                how = _freeze_block(model, b, vectors[b.name], inputs.get(b.path.rpartition(".")[0]))
            removed.append({"block": b.name, "path": b.path, "channels": b.channels, "how": how})
    slim = SlimNetwork(model=model, removed=removed, params=sum(p.numel() for p in model.parameters()), mode=mode,
                       params_full=sum(p.numel() for p in loaded.model.parameters()), n_calibration=n_calibration)
    slim.check_max_abs = check(loaded, slim, blocks, means if mode == "mean" else None, x)
    return slim


def check(loaded: LoadedModel, slim: SlimNetwork, blocks: Sequence[SEBlock], means: Mapping | None,
          x: torch.Tensor) -> float:
    """max |slim(x) - hook-ablated loaded(x)| over the outputs (fp32)."""
    with ablate(loaded.model, blocks, mode="mean" if means is not None else "identity", means=means):
        reference = loaded.model(x).float()
    with torch.no_grad():
        out = slim.model(x).float()
    return float((out - reference).abs().max())


def fit_means(loaded: LoadedModel, images: ImageSet, blocks: Sequence[SEBlock], *, batch_size: int = 32,
              fraction: float = CALIBRATION_FRACTION, precision: str = "fp32",
              progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The mean gates of ``blocks`` over the calibration split of ``images`` (as
    :func:`senet_viz.analysis.ablation.evaluate` fits them) and the number of calibration images used."""
    calib, _ = split_calibration(images, fraction)
    result = run_model(loaded, calib, list(blocks), RunOptions(batch_size=batch_size, keep_logits=False,
                                                               precision=precision, progress=progress))
    if result.n == 0:
        raise ValueError(f"no calibration image could be read: mode 'mean' fits the gates on the {fraction:.0%} of "
                         f"the images in the calibration split ({len(calib.items)} here); add images")
    return mean_gates(result, list(blocks)), result.n


def file_stem(name: str) -> str:
    """The files' name for model ``name`` (``timm:x`` -> ``timm_x``; path separators dropped)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") + "_slim"


def describe(slim: SlimNetwork, loaded: LoadedModel, weights_sha256: str | None = None) -> dict:
    """The JSON document written beside the weights."""
    base_sha = loaded.weights_id
    source = Path(loaded.weights_source)
    if loaded.weights_id not in ("random", "") and source.is_file():
        base_sha = file_sha256(source)
    return {
        "format": SLIM_FORMAT, "format_version": SLIM_FORMAT_VERSION, "model": loaded.name, "mode": slim.mode,
        "base_weights": {"source": loaded.weights_source, "sha256": base_sha},
        "removed": slim.removed, "calibration_images": slim.n_calibration,
        "params": slim.params, "params_full": slim.params_full, "senet_viz_version": __version__,
        "input_size": list(loaded.input_size), "weights_sha256": weights_sha256,
        "note": "accuracy after the removal was measured by senet-viz on the user's images only",
    }


def save_slim(slim: SlimNetwork, loaded: LoadedModel, out_dir: str | Path,
              formats: Sequence[str] = ("safetensors",)) -> dict[str, Path]:
    """Write the slim network to ``out_dir``: ``<name>_slim.safetensors`` and ``<name>_slim.json`` always;
    ``"torchscript"`` adds ``<name>_slim.pt`` (``torch.jit.trace``), ``"onnx"`` adds ``<name>_slim.onnx`` (opset
    17, a free batch dimension). Returns {kind: path}."""
    from safetensors.torch import save_file

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; use {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = file_stem(loaded.name)
    paths = {"safetensors": out / f"{stem}.safetensors", "json": out / f"{stem}.json"}
    # shared tensors (tied weights) are saved once each as their own copy: safetensors refuses aliases
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in slim.model.state_dict().items()}
    save_file(state, str(paths["safetensors"]), metadata={"format": SLIM_FORMAT, "model": loaded.name})
    doc = describe(slim, loaded, file_sha256(paths["safetensors"]))
    paths["json"].write_text(json.dumps(doc, indent=2))
    x = torch.zeros((1, *loaded.input_size), device=next(slim.model.parameters()).device)
    if "torchscript" in formats:
        with model_lock(slim.model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated": still what loads here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: one size
            traced = torch.jit.trace(slim.model, x, check_trace=False)
        paths["torchscript"] = out / f"{stem}.pt"
        traced.save(str(paths["torchscript"]))
    if "onnx" in formats:
        paths["onnx"] = out / f"{stem}.onnx"
        with model_lock(slim.model), torch.no_grad(), warnings.catch_warnings():
            # the TorchScript-based exporter (what onnx2torch converts back) warns that it is legacy
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(slim.model, (x,), str(paths["onnx"]), dynamo=False, opset_version=17,
                              do_constant_folding=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return paths


def slim_loaded(loaded: LoadedModel, slim: SlimNetwork) -> LoadedModel:
    """``loaded`` with the slim network in place of its own (its remaining SE blocks found again), e.g. to run it."""
    from senet_viz.gates.blocks import find_se_blocks

    return replace(loaded, model=slim.model, blocks=find_se_blocks(slim.model, loaded.input_size), lock=None,
                   weights_id=f"{loaded.weights_id}-slim-{slim.mode}-{'-'.join(slim.blocks)}")
