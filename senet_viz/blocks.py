"""Find the Squeeze-and-Excitation blocks of a network and name them as the SENet paper does.

Every SE block is hooked at its **gate**: the sigmoid / hard-sigmoid whose output is the channel excitation ``s``
(never the block output ``x * s``). A gate is one value per channel of the feature map it scales, computed from
that feature map through a global pooling; the block passes its input through when ``s = 1``.

Gate kinds (:attr:`SEBlock.gate_kind`) and the implementations known by class name (:data:`KNOWN_GATES`):

- ``"se"``: squeeze, bottleneck C -> C/r -> C, sigmoid. timm ``SEModule`` / ``SqueezeExcite`` (child ``gate``),
  timm's legacy SENets' ``SEModule`` (child ``sigmoid``), torchvision ``SqueezeExcitation`` (MobileNetV3,
  EfficientNet, RegNetY; child ``scale_activation``), timm ``SqueezeExciteCl`` (channels-last);
- ``"ese"``: effective SE, one 1x1 conv C -> C: timm ``EffectiveSEModule`` (VoVNet-ESE) and ``EseModule``
  (PP-HGNet);
- ``"eca"`` / ``"ceca"``: ECA-Net, a 1-D conv across the pooled channels (zero / circular padding): timm
  ``EcaModule``, ``CecaModule``; their gate is ``N x 1 x C``;
- ``"gather_excite"``: timm ``GatherExcite`` with a global extent (a local extent gives one gate per channel *and*
  position: rejected, see below);
- ``"global_context"``: GCNet's ``GlobalContext`` with ``fuse_scale`` (attention pooling, bottleneck with layer
  norm, sigmoid). Without ``fuse_scale`` (``fuse_add`` only) there is no gate: rejected;
- ``"cbam_channel"``: the channel half of CBAM (timm ``ChannelAttn``: average- and max-pooled SE);
- ``"structural"`` finds: any other module with a sigmoid-like child and a 1x1 bottleneck C -> C/r -> C (``"se"``)
  or a single 1x1 layer C -> C (``"ese"``), as ``Conv2d`` or ``Linear``;
- ``"fx_inline"``: gates written inline in a ``forward`` (``x * sigmoid(...)`` fed by a global pooling of ``x``),
  found by :func:`trace_gates` in a ``torch.fx`` graph (also every gate of a loaded ONNX / TorchScript / ``.pt2``
  network, which keep no SE module to hook; see :mod:`senet_viz.loaders`).

Each candidate is checked in one forward pass: its gate must output one value per channel (``N x C x 1 x 1``,
``N x C`` or ``N x 1 x C``) and the module must return a tensor of its input's shape. What fails the check is
reported in :class:`Discovery.rejected` with a reason, never guessed; so are the attention modules that look like
gates but are deliberately not SE (:data:`NOT_SE`): ResNeSt's split attention and SKNet's selective kernel (a
softmax *across branches*: the weights of a channel sum to 1 over the branches, they choose between paths instead
of exciting one feature map, and "gate = 1" would double the signal instead of removing the attention), CBAM's
spatial half and coordinate attention (one gate per position, or per row / column, not per channel).

Gains. NFNets (timm ``NormFreeBlock``) scale the SE output by ``attn_gain`` (2.0): ``out = attn_gain * (x * s)``.
Removing that SE honestly means an effective scale of 1, so the block records ``gain = attn_gain`` and identity
ablation sets ``s = 1 / gain`` (:attr:`SEBlock.identity_gate`); captured gates stay the sigmoid's own output
``s`` in [0, 1] (the effective per-channel scale is ``gain * s``), and mean ablation freezes ``s`` to its mean.

Naming, ``SE_<stage>_<block>``: the stage is the network's output-stride level at the SE block,
``stage = log2(input size / feature-map size)``. For ResNets this is exactly the paper's numbering
(conv2_x .. conv5_x run at strides 4 .. 32, i.e. timm/torchvision ``layer1`` .. ``layer4`` = stages 2 .. 5), and it
gives every other family a comparable depth scale: MobileNetV3-Small's nine blocks are SE_2_1 (stride 4),
SE_4_1 .. SE_4_5 (stride 16) and SE_5_1 .. SE_5_3 (stride 32). Blocks are numbered from 1 in execution order
within a stage; :attr:`SEBlock.path` always keeps the module path beside the name. A network built for small
inputs whose first stage runs at full resolution (CIFAR / Fashion-MNIST style) can declare an integer attribute
``se_stage_offset`` (e.g. 2) that is added to the stride level so its stages read 2..5 as in the paper.
"""

from __future__ import annotations

import json
import math
import operator
import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import fx, nn

# (class name, gate child name) of the classic SE implementations (kept for callers of the first API).
KNOWN_SE_GATES: dict[str, str] = {
    "SEModule": "gate",  # timm.layers.SEModule (legacy SENet's SEModule has 'sigmoid'; handled below)
    "SqueezeExcite": "gate",  # timm efficientnet/mobilenetv3 blocks
    "EffectiveSEModule": "gate",  # timm
    "SqueezeExcitation": "scale_activation",  # torchvision.ops.misc
}


@dataclass(frozen=True)
class GateClass:
    """How a known channel-gate class is hooked: its gate child, the gate kind and where the class comes from."""

    gate: str  # name of the gate child
    gate_kind: str  # "se", "ese", "eca", ...
    source: str  # SEBlock.kind: "timm", "timm-legacy", "torchvision"
    requires: tuple[str, ...] = ()  # children the class must have (tells same-named classes apart)
    channels_last: bool = False  # the module takes N x H x W x C
    package: str = ""  # the class's module must start with it ("" for the source's name); a user's own class
    # that happens to share the name (e.g. an "SEModule" in a script) is found structurally instead

    def __post_init__(self) -> None:
        if not self.package:
            object.__setattr__(self, "package", self.source.partition("-")[0])


#: Channel gates known by class name (``original_name`` for TorchScript modules). Tried in order per class.
KNOWN_GATES: dict[str, tuple[GateClass, ...]] = {
    "SEModule": (GateClass("sigmoid", "se", "timm-legacy", ("fc1", "sigmoid")), GateClass("gate", "se", "timm")),
    "SqueezeExcite": (GateClass("gate", "se", "timm"),),
    "SqueezeExciteCl": (GateClass("gate", "se", "timm", channels_last=True),),
    "EffectiveSEModule": (GateClass("gate", "ese", "timm"),),
    "EseModule": (GateClass("sigmoid", "ese", "timm"),),
    "SqueezeExcitation": (GateClass("scale_activation", "se", "torchvision"),),
    "EcaModule": (GateClass("gate", "eca", "timm"),),
    "CecaModule": (GateClass("gate", "ceca", "timm"),),
    "GatherExcite": (GateClass("gate", "gather_excite", "timm"),),
    "GlobalContext": (GateClass("gate", "global_context", "timm"),),
    "ChannelAttn": (GateClass("gate", "cbam_channel", "timm"),),
    "LightChannelAttn": (GateClass("gate", "cbam_channel", "timm"),),
}

_SOFTMAX_BRANCHES = ("a softmax across the {what} (sigmoid only with a single branch): the weights of one channel "
                     "sum to 1 over the branches, so they choose between paths rather than excite one feature map, "
                     "and a gate of 1 is no 'attention removed' (it would add the branches up)")
#: Attention modules that look like gates but are deliberately not treated as SE, with the reason.
NOT_SE: dict[str, str] = {
    "SplitAttn": "split attention (ResNeSt): " + _SOFTMAX_BRANCHES.format(what="radix splits of a grouped conv"),
    "SelectiveKernel": "selective kernel (SKNet): " + _SOFTMAX_BRANCHES.format(what="kernel-size paths"),
    "SelectiveKernelAttn": "selective kernel attention (SKNet): " + _SOFTMAX_BRANCHES.format(what="kernel-size paths"),
    "SpatialAttn": "CBAM spatial attention: one gate per position (N x 1 x H x W), not per channel",
    "LightSpatialAttn": "CBAM spatial attention: one gate per position (N x 1 x H x W), not per channel",
    "CoordAttn": "coordinate attention: gates per row and per column (N x C x H x 1, N x C x 1 x W), not per channel",
    "SimpleCoordAttn": "coordinate attention: gates per row and per column, not one per channel",
    "EfficientLocalAttn": "efficient local attention: gates per row and per column, not one per channel",
    "StripAttn": "strip attention: gates per row and per column, not one per channel",
}
SIGMOID_LIKE = ("Sigmoid", "Hardsigmoid", "HardSigmoid", "GateSigmoid")
#: Classes whose ``attn_gain`` multiplies the output of their ``attn`` / ``attn_last`` SE (timm NFNets).
GAIN_CLASSES = ("NormFreeBlock",)


@dataclass(frozen=True)
class SEBlock:
    """One SE block: where it lives and how big it is."""

    name: str  # paper-style name, e.g. "SE_5_2"
    path: str  # module path of the SE module, e.g. "layer4.1.se_module"
    gate_path: str  # module path of its gate (the hooked sigmoid), e.g. "layer4.1.se_module.sigmoid"
    stage: int  # output-stride level (see module docstring)
    index: int  # block number within the stage, from 1
    order: int  # position among all SE blocks in execution order, from 0
    channels: int  # C, the number of gates
    params: int  # parameters of the SE module (what removing it saves)
    kind: str  # where it was found: "timm", "timm-legacy", "torchvision", "structural" or "fx" (a traced graph)
    gate_fn: str  # class (or function) name of the gate, e.g. "Sigmoid" or "Hardsigmoid"
    gate_kind: str = "se"  # "se", "ese", "eca", "ceca", "gather_excite", "global_context", "cbam_channel", "fx_inline"
    gain: float = 1.0  # the network multiplies the block's output x * s by this (NFNet attn_gain), else 1
    branch: tuple[str, ...] = ()  # fx only: the graph nodes that compute the gate (for MACs), pooling to sigmoid

    @property
    def identity_gate(self) -> float:
        """The gate value that makes the block pass its input through (1 / gain): identity ablation uses it."""
        return 1.0 / self.gain


@dataclass
class Discovery:
    blocks: list[SEBlock]
    rejected: dict[str, str] = field(default_factory=dict)  # module path -> why it is not an SE block


def class_name(module: nn.Module) -> str:
    """The module's class name; for a TorchScript module the name of the class it was compiled from."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", None) or type(module).__name__
    return type(module).__name__


def class_origin(module: nn.Module) -> str:
    """The Python module the class was defined in (``timm.layers.squeeze_excite``); for TorchScript, from its
    qualified name (``__torch__.timm.layers.squeeze_excite.SEModule``)."""
    if isinstance(module, torch.jit.ScriptModule):
        qualified = getattr(getattr(module, "_c", None), "qualified_name", "") or ""
        parts = [p for p in qualified.removeprefix("__torch__.").split(".") if not p.startswith("___torch_mangle")]
        return ".".join(parts[:-1])
    return type(module).__module__


def _is_sigmoid_like(module: nn.Module) -> bool:
    name = class_name(module)
    return name in SIGMOID_LIKE or "sigmoid" in name.lower()


@dataclass(frozen=True)
class _Candidate:
    gate: str  # gate child name
    source: str  # SEBlock.kind
    gate_kind: str
    channels_last: bool = False


def _layer_dims(layer: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels, tuple(layer.kernel_size)
    return layer.in_features, layer.out_features, (1, 1)


def _gate_child(module: nn.Module) -> _Candidate | str | None:
    """A candidate if ``module`` looks like a channel gate; a reason if it has a sigmoid-like child but is not one
    (what :func:`discover_se_blocks` reports as rejected); None for everything else."""
    cls = class_name(module)
    children = dict(module.named_children())
    origin = class_origin(module)
    for spec in KNOWN_GATES.get(cls, ()):
        if (spec.gate in children and all(r in children for r in spec.requires)
                and (origin == spec.package or origin.startswith(spec.package + "."))):
            return _Candidate(spec.gate, spec.source, spec.gate_kind, spec.channels_last)
    if cls in NOT_SE:
        return f"not an SE gate: {NOT_SE[cls]}"
    # Structural: a sigmoid-like child plus 1x1 layers C -> C/r -> C (SE) or a single C -> C (effective SE).
    gates = [n for n, c in children.items() if _is_sigmoid_like(c)]
    if not gates:
        return None
    if len(gates) > 1:
        return f"{len(gates)} sigmoid-like children ({', '.join(gates)}): not one channel gate"
    layers = [c for c in children.values() if isinstance(c, nn.Conv2d | nn.Linear)]
    if not layers:
        return f"sigmoid child '{gates[0]}' but no 1x1 Conv2d / Linear layer to compute a channel gate"
    (c_in, c_mid, k_first), (_, c_out, k_last) = _layer_dims(layers[0]), _layer_dims(layers[-1])
    if k_first != (1, 1) or k_last != (1, 1):
        return f"sigmoid child '{gates[0]}' but its layers are not 1x1 (kernels {k_first}, {k_last})"
    if c_in != c_out or c_mid > c_in:
        return f"sigmoid child '{gates[0]}' but no bottleneck C -> C/r -> C (layers {c_in} -> {c_mid} .. -> {c_out})"
    return _Candidate(gates[0], "structural", "se" if len(layers) >= 2 else "ese")


def _default_input(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size", None) if isinstance(cfg, dict) else None
    size = tuple(size) if isinstance(size, list | tuple) else ()
    return size if len(size) == 3 else (3, 224, 224)  # type: ignore[return-value]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _wrapping_parents(candidates: dict[str, _Candidate], modules: dict[str, nn.Module]) -> dict[str, str]:
    """Structural candidate -> its parent module, where the parent may be the real SE module: a hand-written
    SE often keeps FC / ReLU / FC / sigmoid in an ``nn.Sequential`` (fed the pooled N x C or N x C x 1 x 1
    vector, or pooling itself) while the parent pools and multiplies. The parent qualifies only if it adds
    no parameters of its own and wraps exactly one candidate; the forward pass then decides (see below)."""
    by_parent: dict[str, list[str]] = {}
    for path, cand in candidates.items():
        if cand.source == "structural" and path:
            by_parent.setdefault(path.rpartition(".")[0], []).append(path)
    return {kids[0]: parent for parent, kids in by_parent.items()
            if len(kids) == 1 and parent not in candidates
            and _n_params(modules[parent]) == _n_params(modules[kids[0]])}


def _per_channel(gate_shape: tuple[int, ...] | None, n: int, c: int) -> bool:
    """A gate of shape N x C, N x C x 1 x 1, N x 1 x C, N x 1 x 1 x C: one value per channel."""
    if not gate_shape or gate_shape[0] != n:
        return False
    return [d for d in gate_shape[1:] if d != 1] == [c] or (c == 1 and all(d == 1 for d in gate_shape[1:]))


def _stage(input_size: Sequence[int], h: int) -> int:
    return max(0, round(math.log2(input_size[1] / h))) if h > 0 else 0


def _gain(path: str, modules: dict[str, nn.Module]) -> float:
    """NFNet-style ``attn_gain`` of the block that holds the SE module at ``path`` as ``attn`` / ``attn_last``."""
    parent_path, _, child = path.rpartition(".")
    parent = modules.get(parent_path)
    gain = getattr(parent, "attn_gain", None) if child in ("attn", "attn_last") else None
    return float(gain) if isinstance(gain, int | float) and gain > 0 else 1.0


def _name_blocks(model: nn.Module, accepted: list[dict]) -> list[SEBlock]:
    """Sort ``accepted`` (dicts of SEBlock fields plus 'order') by execution order and name them per stage."""
    accepted = sorted(accepted, key=lambda a: a["order"])
    offset = int(getattr(model, "se_stage_offset", 0))
    blocks: list[SEBlock] = []
    per_stage: dict[int, int] = {}
    for order, rec in enumerate(accepted):
        stage = rec.pop("stage") + offset
        rec.pop("order")
        per_stage[stage] = per_stage.get(stage, 0) + 1
        blocks.append(SEBlock(name=f"SE_{stage}_{per_stage[stage]}", stage=stage, index=per_stage[stage],
                              order=order, **rec))
    return blocks


def discover_se_blocks(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> Discovery:
    """Find every SE block of ``model`` with one forward pass of a zero image (no hook is left behind).

    Finds SE *modules* (known classes and structural matches). Gates written inline in a ``forward`` need a traced
    graph: see :func:`discover` (``trace="auto"``) and :func:`trace_gates`."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("a TorchScript module cannot be hooked (its forward runs in the TorchScript interpreter); "
                        "load it with senet_viz.loaders.load_model_arg, which converts it to an exported graph")
    input_size = input_size or _default_input(model)
    modules = dict(model.named_modules())
    candidates: dict[str, _Candidate] = {}
    rejected: dict[str, str] = {}
    for path, module in modules.items():
        found = _gate_child(module)
        if isinstance(found, str):
            rejected[path] = found
        elif found is not None:
            candidates[path] = found

    parents = _wrapping_parents(candidates, modules)
    seen: dict[str, dict] = {}
    parent_seen: dict[str, dict] = {}
    handles = []

    def se_hook(path: str, store: dict[str, dict] = seen):
        def hook(mod, inputs, output):
            x = inputs[0] if inputs else None
            rec = store.setdefault(path, {})
            rec["order"] = rec.get("order", len(seen) - 1)
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                rec["in_shape"] = tuple(x.shape)
            if isinstance(output, torch.Tensor):
                rec["out_shape"] = tuple(output.shape)

        return hook

    def gate_hook(path: str):
        def hook(mod, inputs, output):
            if isinstance(output, torch.Tensor):
                seen.setdefault(path, {"order": len(seen)})["gate_shape"] = tuple(output.shape)

        return hook

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    try:
        for path, cand in candidates.items():
            handles.append(modules[path].register_forward_hook(se_hook(path)))
            handles.append(modules[_join(path, cand.gate)].register_forward_hook(gate_hook(path)))
        for parent in set(parents.values()):
            handles.append(modules[parent].register_forward_hook(se_hook(parent, parent_seen)))
        model.eval()
        with torch.inference_mode():
            model(torch.zeros((1, *input_size), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    accepted: list[dict] = []
    for path, cand in candidates.items():
        gate_name = cand.gate
        rec = seen.get(path)
        prec = parent_seen.get(parents.get(path, ""), {})
        own_map = rec is not None and "in_shape" in rec and rec.get("out_shape") == rec["in_shape"]
        if (rec is not None and "in_shape" in prec and prec.get("out_shape") == prec["in_shape"]
                and (not own_map or (rec["in_shape"][2:] == (1, 1) != prec["in_shape"][2:]))):
            # The candidate only computes the gate (from an already pooled input, or without multiplying);
            # its parameter-free parent takes the feature map and returns it rescaled: that is the SE block.
            parent = parents[path]
            gate_name = _join(path[len(parent) + 1:] if parent else path, gate_name)
            path, rec = parent, {**prec, "order": rec["order"], "gate_shape": rec.get("gate_shape")}
        if rec is None or "in_shape" not in rec:
            rejected[path] = "not called with a 4-D feature map in a forward pass"
            continue
        if rec.get("gate_shape") is None:
            rejected[path] = (f"its gate '{gate_name}' is never called: no channel gate scales the features"
                              + (" (GlobalContext without fuse_scale only adds its context)"
                                 if cand.gate_kind == "global_context" else ""))
            continue
        in_shape = rec["in_shape"]
        n, c = in_shape[0], in_shape[-1] if cand.channels_last else in_shape[1]
        h = in_shape[1] if cand.channels_last else in_shape[2]
        gate_shape = rec["gate_shape"]
        if not _per_channel(gate_shape, n, c):
            hint = " (gather-excite with a local extent: one gate per channel and position)" \
                if cand.gate_kind == "gather_excite" else ""
            rejected[path] = f"gate output {gate_shape} is not one value per channel of input {in_shape}{hint}"
            continue
        if cand.source == "structural" and rec.get("out_shape") != in_shape:
            rejected[path] = f"output {rec.get('out_shape')} does not match input {in_shape}"
            continue
        accepted.append({
            "order": rec["order"], "path": path, "gate_path": _join(path, gate_name),
            "stage": _stage(input_size, h), "channels": c, "params": _n_params(modules[path]),
            "kind": cand.source, "gate_fn": class_name(modules[_join(path, gate_name)]),
            "gate_kind": cand.gate_kind, "gain": _gain(path, modules),
        })
    return Discovery(blocks=_name_blocks(model, accepted), rejected=rejected)


def find_se_blocks(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> list[SEBlock]:
    """Every SE block of ``model`` in execution order, named ``SE_<stage>_<block>``."""
    return discover_se_blocks(model, input_size).blocks


# --------------------------------------------------------------------------------------- inline gates (torch.fx)


class GateProbe(nn.Module):
    """Identity inserted at an inline gate's output in a traced graph: forward hooks on it see the gate, and
    :func:`senet_viz.capture.ablate` replaces it, exactly as for a gate module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class PerImage(nn.Module):
    """Runs a graph exported for a fixed batch of one image once per image of a batch (outputs concatenated).
    Gates are found in (and hooked on) ``net``; each image's forward records one row, as a batched forward would."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i:i + 1]) for i in range(x.shape[0])])


_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
_SIGMOID_FNS = {"sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "expit"}
_MUL_FNS = {"mul", "mul_", "multiply"}
_SHAPE_FNS = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "flatten", "contiguous", "clone",
              "_unsafe_view", "alias", "to", "type", "type_as", "_to_copy"}
_SHAPE_MODULES = ("Reshape", "Unsqueeze", "Squeeze", "Expand", "Flatten", "Identity", "Cast", "View")
_MAX_BRANCH = 400  # nodes walked back from a sigmoid looking for the feature map it scales


def _fn_name(node: fx.Node, gm: fx.GraphModule) -> str:
    """'sigmoid' for torch.sigmoid / aten.sigmoid.default / x.sigmoid(); a module's class name for call_module."""
    if node.op == "call_module":
        return class_name(gm.get_submodule(node.target))
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        target = node.target
        if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
            return target._opname if hasattr(target, "_opname") else str(target).split(".")[1]
        return getattr(target, "__name__", str(target))
    return node.op


def _is_mul(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return getattr(module, "math_op_function", None) is torch.mul  # onnx2torch's Mul
    return node.op in ("call_function", "call_method") and (
        node.target is operator.mul or node.target is operator.imul or _fn_name(node, gm) in _MUL_FNS)


def _is_sigmoid(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return _is_sigmoid_like(gm.get_submodule(node.target))
    return node.op in ("call_function", "call_method") and _fn_name(node, gm) in _SIGMOID_FNS


def _strip_shape_ops(node: fx.Node, gm: fx.GraphModule) -> fx.Node:
    """Walk back from the multiply's operand through reshapes / expands (ECA's view + expand_as) to the gate."""
    for _ in range(6):
        if not node.args or not isinstance(node.args[0], fx.Node):
            return node
        if node.op == "call_module":
            if not any(k in class_name(gm.get_submodule(node.target)) for k in _SHAPE_MODULES):
                return node
        elif node.op == "call_function" and node.target is operator.getitem:
            index = node.args[1] if len(node.args) > 1 else None
            index = index if isinstance(index, tuple) else (index,)
            if not all(i is None or i is Ellipsis or i == slice(None) for i in index):  # s[:, :, None, None]
                return node
        elif node.op not in ("call_function", "call_method") or _fn_name(node, gm) not in _SHAPE_FNS:
            return node
        node = node.args[0]
    return node


def _stack(node: fx.Node) -> list[tuple[str, str]]:
    """The module stack of ``node`` (torch.fx / torch.export record it), outermost first, as (path, qualified
    class name, e.g. ``timm.layers.squeeze_excite.SEModule``)."""
    out = []
    for value in (node.meta.get("nn_module_stack") or {}).values():
        path, cls = value[0], value[1]
        path = "" if path in ("", "L['self']") else str(path)
        if path:
            out.append((path, f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else str(cls)))
    return out


def _known_kind(qualified: str | None) -> str | None:
    """The gate kind of a known gate class given its qualified name (package checked as in :func:`_gate_child`)."""
    if not qualified:
        return None
    origin, _, cls = qualified.rpartition(".")
    for spec in KNOWN_GATES.get(cls, ()):
        if origin == spec.package or origin.startswith(spec.package + "."):
            return spec.gate_kind
    return None


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(int(d) for d in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _walk_branch(gate: fx.Node, x: fx.Node) -> tuple[list[fx.Node], list[fx.Node], bool]:
    """Nodes between the feature map ``x`` and the ``gate`` (pooling .. sigmoid), the get_attr / call_module
    nodes that bring their weights, and whether ``x`` was reached at all."""
    seen, queue, reached = {gate}, deque([gate]), False
    while queue and len(seen) < _MAX_BRANCH:
        for arg in queue.popleft().all_input_nodes:
            if arg is x:
                reached = True
            elif arg not in seen:
                seen.add(arg)
                queue.append(arg)
    if not reached:
        return [], [], False
    ordered = [n for n in gate.graph.nodes if n in seen]
    depends: set[fx.Node] = set()
    for n in ordered:
        if any(a is x or a in depends for a in n.all_input_nodes):
            depends.add(n)
    weights = [n for n in ordered if n.op == "get_attr" or (n.op == "call_module" and n in depends)]
    return [n for n in ordered if n in depends], weights, True


def _branch_params(weights: list[fx.Node], gm: fx.GraphModule) -> tuple[int, list[str]]:
    """Parameters of a gate branch (weights and biases; batch-norm running statistics excluded, as in
    ``module.parameters()``) and the module paths that own them."""
    total, owners, counted = 0, [], set()
    for n in weights:
        if n.op == "get_attr":
            if str(n.target).rpartition(".")[2] in _RUNNING_STATS:
                continue
            value = _resolve(gm, str(n.target))
            if isinstance(value, torch.Tensor) and value.is_floating_point() and id(value) not in counted:
                counted.add(id(value))
                total += value.numel()
                owners.append(str(n.target).rpartition(".")[0])
        else:
            module = gm.get_submodule(n.target)
            params = [p for p in module.parameters() if id(p) not in counted]
            if params:
                counted.update(id(p) for p in params)
                total += sum(p.numel() for p in params)
                owners.append(str(n.target))
    return total, owners


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths if p]
    if not parts:
        return ""
    prefix = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        prefix.append(items[0])
    return ".".join(prefix)


def _owner(mul: fx.Node, gate: fx.Node, owners: list[str],
           source: nn.Module | None) -> tuple[str, str | None, str | None]:
    """(path, qualified class name, parent's class name) of the module that computes and applies the gate: the
    innermost module both the multiply and the gate run in (module stack), else the modules that own the gate
    branch's weights, named by the TorchScript ``source`` when there is one."""
    stack_m, stack_g = _stack(mul), _stack(gate)
    common = [entry for entry in stack_m if entry in stack_g]
    if common:
        at = stack_m.index(common[-1])
        parent = stack_m[at - 1][1].rpartition(".")[2] if at > 0 else None
        return common[-1][0], common[-1][1], parent
    distinct = sorted(set(owners))
    path = _common_prefix(distinct) if len(distinct) > 1 else (distinct[0].rpartition(".")[0] if distinct else "")
    if source is None or not path:
        return path, None, None
    modules = dict(source.named_modules())
    parent_path = path.rpartition(".")[0]
    own = modules.get(path)
    return (path, f"{class_origin(own)}.{class_name(own)}" if own is not None else None,
            class_name(modules[parent_path]) if parent_path in modules else None)


def _scalar_gain(mul: fx.Node, gm: fx.GraphModule, parent_cls: str | None) -> float:
    """NFNet's ``attn_gain * attn(x)``: a number multiplying the SE output, inside a gain class."""
    users = list(mul.users)
    if len(users) != 1 or not _is_mul(users[0], gm):
        return 1.0
    user = users[0]
    inner = _stack(user)
    context = inner[-1][1].rpartition(".")[2] if inner else parent_cls
    numbers = [a for a in user.args if isinstance(a, int | float) and not isinstance(a, bool)]
    for arg in user.args:  # a traced TorchScript keeps the float attribute as a one-element tensor constant
        if isinstance(arg, fx.Node) and arg is not mul and arg.op == "get_attr":
            value = getattr(_resolve(gm, str(arg.target)), "data", None)
            if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
                numbers.append(float(value.reshape(())))
    if context in GAIN_CLASSES and len(numbers) == 1 and numbers[0] > 0:
        return float(numbers[0])
    return 1.0


def _resolve(root: nn.Module, path: str) -> object:
    try:
        return operator.attrgetter(path)(root)
    except AttributeError:
        return None


def _copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule over a copy of ``gm``'s graph, sharing its submodules and tensors (probes inserted in the
    copy leave the caller's module as it was)."""
    graph = fx.Graph()
    graph._codegen = gm.graph._codegen
    out = graph.graph_copy(gm.graph, {}, return_output_node=True)
    if isinstance(out, tuple):  # (output value, output node)
        value, node = out
        graph.output(value, type_expr=getattr(node, "type", None))
    return fx.GraphModule(gm, graph, class_name=type(gm).__name__)


def _free_path(gm: fx.GraphModule, wanted: str) -> str:
    taken = {name for name, _ in gm.named_modules()}
    path, k = wanted, 1
    while path in taken or _has_attr_path(gm, path):
        k += 1
        path = f"{wanted}_{k}"
    return path


def _has_attr_path(root: nn.Module, path: str) -> bool:
    return _resolve(root, path) is not None


def export_graph(model: nn.Module, input_size: tuple[int, int, int]) -> fx.GraphModule:
    """``torch.export`` ``model`` (non-strict, batch size free, 1 included) and return the flat GraphModule. Its
    nodes keep their module stack (paths and class names), so gates are found and named like in the eager model."""
    import torch.fx.experimental._config as fx_config

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros((2, *input_size), device=device)
    was_training = model.training
    model.eval()
    try:
        with fx_config.patch(backed_size_oblivious=True):
            program = torch.export.export(model, (example,), strict=False,
                                          dynamic_shapes=({0: torch.export.Dim.AUTO},))
    finally:
        model.train(was_training)
    return program.module()


def trace_gates(model: nn.Module, input_size: tuple[int, int, int] | None = None, *,
                source: nn.Module | None = None, inplace: bool = False) -> tuple[nn.Module, Discovery]:
    """Find inline gates in a ``torch.fx`` graph of ``model`` and make them hookable.

    ``model`` is a GraphModule (a loaded ONNX / TorchScript / ``.pt2`` network, see :mod:`senet_viz.loaders`) or an
    eager module, traced with ``torch.fx.symbolic_trace`` (else ``torch.export``). A gate is a multiply
    ``x * g`` where ``g`` is a sigmoid / hard-sigmoid (through reshapes) computed from ``x`` and, in a forward pass
    at ``input_size``, one value per channel of the 4-D ``x``. A :class:`GateProbe` is inserted at each gate's
    output (a gate module called once is hooked as it is) and the blocks are named as :func:`discover_se_blocks`
    does. The blocks' ``kind`` is ``"fx"``; their ``gate_kind`` comes from the class of the module that holds
    them when the graph keeps it (module stack, or the TorchScript ``source`` the graph was converted from), else
    ``"fx_inline"``.

    Returns the module to run (a new GraphModule unless ``inplace`` and ``model`` is one; ``model`` itself, with
    the reason under ``rejected["<fx>"]``, when it cannot be traced) and the :class:`Discovery`. Sigmoids applied
    elementwise (SiLU, sigmoid-gated units) are not gates and are not reported; a per-position or per-row gate,
    or a per-channel scale that does not depend on the feature map, is reported in ``rejected``.
    """
    input_size = tuple(input_size or _default_input(source or model))
    if isinstance(model, PerImage):
        net, found = trace_gates(model.net, input_size, source=source, inplace=inplace)
        outer = model if inplace else PerImage(net)
        outer.net = net
        return outer, Discovery(blocks=[replace(b, path=_join("net", b.path), gate_path=_join("net", b.gate_path))
                                        for b in found.blocks], rejected=found.rejected)
    if isinstance(model, fx.GraphModule):
        gm = model if inplace else _copy_graph_module(model)
    else:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as symbolic_error:  # noqa: BLE001 - any tracing failure is reported, not raised
            try:
                gm = export_graph(model, input_size)
            except Exception as export_error:  # noqa: BLE001
                reason = (f"torch.fx cannot trace {type(model).__name__} ({type(symbolic_error).__name__}: "
                          f"{str(symbolic_error)[:200]}) and torch.export cannot export it "
                          f"({type(export_error).__name__}: {str(export_error)[:200]}); its inline gates, if any, "
                          "are not searched")
                return model, Discovery(blocks=[], rejected={"<fx>": reason})

    from torch.fx.passes.shape_prop import ShapeProp

    device = next((t.device for t in [*gm.parameters(), *gm.buffers()]), torch.device("cpu"))
    was_training = gm.training
    gm.eval()
    try:
        with torch.inference_mode():
            ShapeProp(gm).propagate(torch.zeros((1, *input_size), device=device))
    except Exception as error:  # noqa: BLE001
        gm.train(was_training)
        reason = f"the traced graph does not run on a 1 x {input_size} input ({type(error).__name__}: {error})"
        return model, Discovery(blocks=[], rejected={"<fx>": reason[:500]})
    gm.train(was_training)

    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    call_count: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            call_count[n.target] = call_count.get(n.target, 0) + 1

    rejected: dict[str, str] = {}
    found: list[dict] = []
    for mul in list(gm.graph.nodes):
        if not _is_mul(mul, gm):
            continue
        tensors = [a for a in mul.args[:2] if isinstance(a, fx.Node)]
        if len(tensors) != 2:
            continue
        for x, operand in ((tensors[0], tensors[1]), (tensors[1], tensors[0])):
            gate = _strip_shape_ops(operand, gm)
            if gate is x or not _is_sigmoid(gate, gm):
                continue
            x_shape, gate_shape, out_shape = _shape(x), _shape(gate), _shape(mul)
            if x_shape is None or gate_shape is None:
                continue
            elementwise = math.prod(gate_shape[1:]) == math.prod(x_shape[1:])
            branch, weights, reached = _walk_branch(gate, x)
            where = mul.name if not _stack(mul) else f"{_stack(mul)[-1][0]}:{mul.name}"
            if elementwise:
                spatial = len(x_shape) == 4 and any(
                    (s := _shape(n)) is not None and len(s) == 4 and 1 < s[2] * s[3] < x_shape[2] * x_shape[3]
                    for n in branch)
                if reached and spatial:
                    rejected[where] = (f"gate {gate_shape} varies per channel and position, pooled over a local "
                                       "window (gather-excite with a local extent, spatial attention): not one value "
                                       "per channel")
                break  # SiLU / sigmoid-gated units: an activation, not a gate
            if len(x_shape) != 4:
                rejected[where] = f"sigmoid gate {gate_shape} scales a {len(x_shape)}-D tensor {x_shape}, not a " \
                                  "feature map"
                break
            if not _per_channel(gate_shape, x_shape[0], x_shape[1]):
                rejected[where] = f"gate output {gate_shape} is not one value per channel of input {x_shape}"
                break
            if not reached:
                rejected[where] = (f"per-channel sigmoid {gate_shape} does not depend on the feature map it scales "
                                   "(a learned or external scale, not an excitation)")
                break
            if out_shape != x_shape:
                rejected[where] = f"output {out_shape} does not match input {x_shape}"
                break
            params, owners = _branch_params(weights, gm)
            owner, owner_cls, parent_cls = _owner(mul, gate, owners, source)
            short = (owner_cls or "").rpartition(".")[2]
            if short in NOT_SE:
                rejected[owner or where] = f"not an SE gate: {NOT_SE[short]}"
                break
            found.append({"mul": mul, "gate": gate, "x_shape": x_shape, "params": params, "owner": owner,
                          "gate_kind": _known_kind(owner_cls) or "fx_inline",
                          "gain": _scalar_gain(mul, gm, parent_cls), "branch": [n.name for n in branch]})
            break

    accepted: list[dict] = []
    inline_count: dict[str, int] = {}
    source_modules = dict(source.named_modules()) if source is not None else {}
    for rec in found:
        gate, owner = rec["gate"], rec["owner"]
        if rec["gate_kind"] != "fx_inline" and owner:
            path = owner
        else:
            inline_count[owner] = inline_count.get(owner, 0) + 1
            path = _join(owner, f"inline_se{inline_count[owner]}")
        if gate.op == "call_module" and call_count.get(gate.target) == 1:
            gate_path = str(gate.target)  # a gate module called once: hook it as it is
        else:
            # Where the eager model has its gate: the gate's own module in the stack, the known class's gate child
            # (TorchScript source), else "<path>.gate".
            deeper = [p for p, _ in _stack(gate) if p.startswith(owner + ".")] if owner else []
            wanted = _join(path, "gate")
            if rec["gate_kind"] != "fx_inline":
                own = _gate_child(source_modules[owner]) if owner in source_modules else None
                wanted = deeper[-1] if deeper else _join(path, own.gate) if isinstance(own, _Candidate) else wanted
            gate_path = _free_path(gm, wanted)
            gm.add_submodule(gate_path, GateProbe())
            with gm.graph.inserting_after(gate):
                probe = gm.graph.call_module(gate_path, (gate,))
            probe.meta = dict(gate.meta)
            gate.replace_all_uses_with(probe, delete_user_cb=lambda user, p=probe: user is not p)
        x_shape = rec["x_shape"]
        accepted.append({
            "order": position[rec["mul"]], "path": path, "gate_path": gate_path,
            "stage": _stage(input_size, x_shape[2]), "channels": x_shape[1], "params": rec["params"],
            "kind": "fx", "gate_fn": _fn_name(gate, gm), "gate_kind": rec["gate_kind"], "gain": rec["gain"],
            "branch": tuple(rec["branch"]),
        })
    if accepted:
        gm.graph.lint()
        gm.recompile()
    return gm, Discovery(blocks=_name_blocks(source or model, accepted), rejected=rejected)


def discover(model: nn.Module, input_size: tuple[int, int, int] | None = None, *, trace: str = "auto",
             source: nn.Module | None = None) -> tuple[nn.Module, Discovery]:
    """Every channel gate of ``model``: SE modules first, inline gates through ``torch.fx`` when needed.

    ``trace="auto"``: trace only when no SE module is found (a GraphModule or :class:`PerImage`, as the loaders
    return, is always searched through its graph); ``"always"``: search the traced graph only (it also finds the
    SE modules, named from its module stack); ``"never"``: modules only. Returns the module to run and hook (a
    GraphModule with :class:`GateProbe` s when the graph was used, else ``model``) and the discovery."""
    if trace not in ("auto", "always", "never"):
        raise ValueError(f"trace must be 'auto', 'always' or 'never', not {trace!r}")
    if trace == "always" or (trace == "auto" and isinstance(model, fx.GraphModule | PerImage)):
        return trace_gates(model, input_size, source=source)
    found = discover_se_blocks(model, input_size)
    if trace == "never" or found.blocks:
        return model, found
    traced, inline = trace_gates(model, input_size, source=source)
    return traced, Discovery(blocks=inline.blocks, rejected={**found.rejected, **inline.rejected})


# ------------------------------------------------------------------------------------------- census (no weights)


def static_gates(model: nn.Module) -> tuple[dict[str, int], dict[str, int], int]:
    """Channel gates of ``model`` counted by module structure alone, without a forward pass (so a model built on
    the ``meta`` device works): (gates per kind, look-alikes that are not SE per class, how many of the gates were
    matched structurally rather than by a known class). Structural matches are counted under their kind like
    known classes; a forward pass (:func:`discover_se_blocks`) may still reject one. GlobalContext without
    ``fuse_scale`` and GatherExcite with a local extent have no per-channel gate."""
    kinds: dict[str, int] = {}
    not_se: dict[str, int] = {}
    structural = 0
    for _, module in model.named_modules():
        found = _gate_child(module)
        cls = class_name(module)
        if cls in NOT_SE:
            not_se[cls] = not_se.get(cls, 0) + 1
        if not isinstance(found, _Candidate):
            continue
        if found.gate_kind == "global_context" and getattr(module, "mlp_scale", True) is None:
            not_se["GlobalContext(fuse_add only)"] = not_se.get("GlobalContext(fuse_add only)", 0) + 1
            continue
        if found.gate_kind == "gather_excite" and getattr(module, "extent", 0):
            not_se["GatherExcite(local extent)"] = not_se.get("GatherExcite(local extent)", 0) + 1
            continue
        kinds[found.gate_kind] = kinds.get(found.gate_kind, 0) + 1
        structural += found.source == "structural"
    return kinds, not_se, structural


def _census_file() -> Path:
    import timm
    import torchvision

    try:
        from .paths import cache_dir
        root = cache_dir()
    except ImportError:  # pragma: no cover - older trees without senet_viz.paths
        root = Path(os.environ.get("SENET_VIZ_CACHE") or Path.home() / ".cache" / "senet_viz")
    return root / f"gate_census_timm-{timm.__version__}_torchvision-{torchvision.__version__}.json"


def _census_one(name: str) -> dict:
    import timm
    import torchvision

    source, _, arch = name.partition(":")

    def build() -> nn.Module:
        if source == "torchvision":
            return torchvision.models.get_model(arch, weights=None)
        return timm.create_model(arch, pretrained=False)

    device = "meta"
    try:
        with torch.device("meta"):
            model = build()
    except (NotImplementedError, RuntimeError):  # an __init__ that reads tensor values: build it for real
        device = "cpu"
        model = build()
    kinds, not_se, structural = static_gates(model)
    return {"source": source, "gates": sum(kinds.values()), "kinds": kinds, "not_se": not_se,
            "structural": structural, "device": device}


def census_names() -> list[str]:
    """Every architecture the census covers: ``timm:<name>`` for ``timm.list_models()`` and
    ``torchvision:<name>`` for torchvision's classification models."""
    import timm
    import torchvision

    return ([f"timm:{n}" for n in timm.list_models()]
            + [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)])


def gate_census(names: Iterable[str] | None = None, *, refresh: bool = False, cache: Path | str | None = None,
                progress=None) -> dict:
    """Which timm and torchvision architectures have channel gates, of which kinds and how many, without weights.

    Each model is built on the ``meta`` device (no memory, no initialisation; on the CPU when its constructor
    needs tensor values) and counted by :func:`static_gates`.
    Results are cached per architecture in a JSON file under the cache dir (``$SENET_VIZ_CACHE``, else
    ``~/.cache/senet_viz``), keyed by the timm and torchvision versions; ``names`` (``timm:<name>``,
    ``torchvision:<name>`` or a bare timm name) restricts the census, ``refresh`` rebuilds. ``progress(i, n, name)``
    is called per model built.

    Returns ``{"models": {name: {"source", "gates", "kinds", "not_se", "structural", "device"}} (only
    architectures with a gate or a look-alike; ``structural``: gates matched by structure, not by a known class;
    ``device``: "meta", or "cpu" for a constructor that reads tensor values), "errors": {name: message},
    "per_kind": {kind: {"models", "gates"}}, "not_se": {class: models}, "covered": architectures asked for,
    "built": built now (the others came from the cache), "seconds": time spent building now, "cache": path}``.
    A full census (about 1,450 architectures) takes a few minutes on a CPU; later calls read the cache.
    """
    wanted = census_names() if names is None else [n if ":" in n else f"timm:{n}" for n in names]
    path = Path(cache) if cache is not None else _census_file()
    stored: dict[str, dict] = {}
    if path.exists() and not refresh:
        try:
            stored = json.loads(path.read_text()).get("entries", {})
        except (OSError, ValueError):
            stored = {}
    todo = [n for n in wanted if "structural" not in stored.get(n, {})]  # new, or failed before (retried)
    start = time.perf_counter()
    for i, name in enumerate(todo):
        try:
            stored[name] = _census_one(name)
        except Exception as error:  # noqa: BLE001 - one broken constructor must not stop the census
            stored[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        if progress is not None:
            progress(i + 1, len(todo), name)
    seconds = time.perf_counter() - start
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"entries": stored}, indent=0, sort_keys=True))
        os.replace(tmp, path)

    models, errors, per_kind, not_se = {}, {}, {}, {}
    for name in wanted:
        entry = stored[name]
        if "error" in entry:
            errors[name] = entry["error"]
            continue
        if entry["gates"] or entry["not_se"]:
            models[name] = entry
        for kind, count in entry["kinds"].items():
            agg = per_kind.setdefault(kind, {"models": 0, "gates": 0})
            agg["models"] += 1
            agg["gates"] += count
        for reason in entry["not_se"]:
            not_se[reason] = not_se.get(reason, 0) + 1
    return {"models": models, "errors": errors, "per_kind": per_kind, "not_se": not_se,
            "covered": len(wanted), "built": len(todo), "seconds": round(seconds, 1), "cache": str(path)}


# ----------------------------------------------------------------------------------------------- selection


class BlockSelectionError(ValueError):
    """A block selection names blocks or stages the model does not have."""


def select_blocks(blocks: list[SEBlock], spec: str | Iterable[str] | None) -> list[SEBlock]:
    """Resolve a user's selection to blocks, in model order.

    ``spec`` is a comma-separated string or a list of items, each one of: a block name (``SE_5_2``), a module
    path, ``stage:5`` (several stages: ``stage:3,4,5`` or ``stage:4-5``), ``last:3`` (the last three blocks),
    ``first:2`` or ``all``. ``None`` or ``""`` selects nothing.
    """
    if spec is None:
        return []
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if items and not blocks:
        raise BlockSelectionError(
            f"cannot select {', '.join(items)}: this model has no SE blocks (no squeeze-and-excitation gate was "
            "found, see discover_se_blocks(model).rejected), so there is nothing to capture or remove")
    by_name = {b.name: b for b in blocks}
    by_path = {b.path: b for b in blocks}
    stages = sorted({b.stage for b in blocks})
    chosen: set[str] = set()
    mode = None  # lets "stage:3,4,5" continue with bare numbers
    for item in items:
        if ":" in item:
            mode, _, item = item.partition(":")
            mode = mode.strip().lower()
            item = item.strip()
        elif item.lower() == "all":
            chosen.update(by_name)
            continue
        elif item in by_name or item in by_path:
            chosen.add(item if item in by_name else by_path[item].name)
            mode = None
            continue
        if mode == "stage":
            lo, _, hi = item.partition("-")
            try:
                wanted = set(range(int(lo), int(hi or lo) + 1))
            except ValueError as exc:
                raise BlockSelectionError(f"'stage:{item}' is not a stage number; stages are {stages}") from exc
            missing = wanted - set(stages)
            if missing:
                raise BlockSelectionError(f"stage(s) {sorted(missing)} have no SE block; stages are {stages}")
            chosen.update(b.name for b in blocks if b.stage in wanted)
        elif mode in ("last", "first"):
            try:
                k = int(item)
            except ValueError as exc:
                raise BlockSelectionError(f"'{mode}:{item}' needs a number of blocks") from exc
            if not 0 <= k <= len(blocks):
                raise BlockSelectionError(f"'{mode}:{k}': the model has {len(blocks)} SE blocks")
            picked = blocks[len(blocks) - k :] if mode == "last" else blocks[:k]
            chosen.update(b.name for b in picked)
        else:
            names = ", ".join(b.name for b in blocks[:4]) + (" ..." if len(blocks) > 4 else "")
            raise BlockSelectionError(
                f"unknown SE block '{item}'; use a name ({names}), a module path, stage:N, last:K or all"
            )
    return [b for b in blocks if b.name in chosen]
