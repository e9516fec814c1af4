"""Channel-gate kinds, the classes known by name, and the ``SE_<stage>_<block>`` naming of the blocks found.

Both finders use this module: :mod:`senet_viz.gates.blocks` (SE modules, hooked in a forward pass) and
:mod:`senet_viz.gates.fx` (gates written inline, found in a ``torch.fx`` graph); so does the weightless census
(:mod:`senet_viz.gates.census`).

Gate kinds (:attr:`SEBlock.gate_kind`) and the implementations known by class name (:data:`KNOWN_GATES`):

- ``"se"``: squeeze, bottleneck C -> C/r -> C, sigmoid. timm ``SEModule`` / ``SqueezeExcite`` (child ``gate``),
  timm's legacy SENets' ``SEModule`` (child ``sigmoid``), torchvision ``SqueezeExcitation`` (MobileNetV3,
  EfficientNet, RegNetY; child ``scale_activation``), timm ``SqueezeExciteCl`` (channels-last);
- ``"ese"``: effective SE, one 1x1 conv C -> C: timm ``EffectiveSEModule`` (VoVNet-ESE) and ``EseModule``
  (PP-HGNet);
- ``"eca"`` / ``"ceca"``: ECA-Net, a 1-D conv across the pooled channels (zero / circular padding): timm
  ``EcaModule``, ``CecaModule``; their gate is ``N x 1 x C``;
- ``"gather_excite"``: timm ``GatherExcite`` with a global extent (a local extent gives one gate per channel *and*
  position: rejected);
- ``"global_context"``: GCNet's ``GlobalContext`` with ``fuse_scale`` (attention pooling, bottleneck with layer
  norm, sigmoid). Without ``fuse_scale`` (``fuse_add`` only) there is no gate: rejected; with both, the module
  also adds a context term that no gate value removes: rejected too (:data:`GC_FUSE_ADD`);
- ``"cbam_channel"``: the channel half of CBAM (timm ``ChannelAttn``: average- and max-pooled SE);
- ``"structural"`` finds: any other module with a sigmoid-like child and a 1x1 bottleneck C -> C/r -> C (``"se"``)
  or a single 1x1 layer C -> C (``"ese"``), as ``Conv2d`` or ``Linear`` (:func:`gate_child`);
- ``"fx_inline"``: gates written inline in a ``forward`` (``x * sigmoid(...)`` fed by a global pooling of ``x``),
  found by :func:`senet_viz.gates.fx.trace_gates` (also every gate of a loaded ONNX / TorchScript / ``.pt2``
  network, which keep no SE module to hook; see :mod:`senet_viz.models.loaders`).

Attention modules that look like gates but are deliberately not SE (:data:`NOT_SE`): ResNeSt's split attention and
SKNet's selective kernel (a softmax *across branches*: the weights of a channel sum to 1 over the branches, they
choose between paths instead of exciting one feature map, and "gate = 1" would double the signal instead of
removing the attention), CBAM's spatial half and coordinate attention (one gate per position, or per row / column,
not per channel).

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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


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

    def made_by(self, origin: str) -> bool:
        """Whether a class defined in the Python module ``origin`` is this implementation (see ``package``)."""
        return origin == self.package or origin.startswith(self.package + ".")


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
#: Why a GlobalContext that both scales and adds is not a gate to remove.
GC_FUSE_ADD = ("GlobalContext with fuse_add and fuse_scale: besides its gate it adds a context term "
               "(x * s + mlp_add(context)); a gate of 1 would leave that additive branch in place, so the module "
               "cannot be removed by its gate (its removal would not be the network without it)")
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


# ------------------------------------------------------------------------------------------- gate candidates


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


def is_sigmoid_like(module: nn.Module) -> bool:
    name = class_name(module)
    return name in SIGMOID_LIKE or "sigmoid" in name.lower()


def known_kind(qualified: str | None) -> str | None:
    """The gate kind of a known gate class given its qualified name (``timm.layers.squeeze_excite.SEModule``)."""
    if not qualified:
        return None
    origin, _, cls = qualified.rpartition(".")
    return next((spec.gate_kind for spec in KNOWN_GATES.get(cls, ()) if spec.made_by(origin)), None)


@dataclass(frozen=True)
class Candidate:
    """A module that looks like a channel gate, before a forward pass checks it."""

    gate: str  # gate child name
    source: str  # SEBlock.kind
    gate_kind: str
    channels_last: bool = False


def _layer_dims(layer: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels, tuple(layer.kernel_size)
    return layer.in_features, layer.out_features, (1, 1)


def gate_child(module: nn.Module) -> Candidate | str | None:
    """A candidate if ``module`` looks like a channel gate; a reason if it has a sigmoid-like child but is not one
    (what the finders report as rejected); None for everything else."""
    cls = class_name(module)
    children = dict(module.named_children())
    origin = class_origin(module)
    for spec in KNOWN_GATES.get(cls, ()):
        if spec.gate in children and all(r in children for r in spec.requires) and spec.made_by(origin):
            if spec.gate_kind == "global_context" and "mlp_add" in children and "mlp_scale" in children:
                return GC_FUSE_ADD
            return Candidate(spec.gate, spec.source, spec.gate_kind, spec.channels_last)
    if cls in NOT_SE:
        return f"not an SE gate: {NOT_SE[cls]}"
    # Structural: a sigmoid-like child plus 1x1 layers C -> C/r -> C (SE) or a single C -> C (effective SE).
    gates = [n for n, c in children.items() if is_sigmoid_like(c)]
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
    return Candidate(gates[0], "structural", "se" if len(layers) >= 2 else "ese")


# ------------------------------------------------------------------------------------------------ naming


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """C x H x W of the model's pretrained config (timm), else 3 x 224 x 224."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size", None) if isinstance(cfg, dict) else None
    size = tuple(size) if isinstance(size, list | tuple) else ()
    return size if len(size) == 3 else (3, 224, 224)  # type: ignore[return-value]


def join_path(path: str, name: str) -> str:
    """A child's module path (``path.name``; ``name`` alone under the root)."""
    return f"{path}.{name}" if path else name


def is_per_channel(gate_shape: tuple[int, ...] | None, n: int, c: int) -> bool:
    """A gate of shape N x C, N x C x 1 x 1, N x 1 x C, N x 1 x 1 x C: one value per channel."""
    if not gate_shape or gate_shape[0] != n:
        return False
    return [d for d in gate_shape[1:] if d != 1] == [c] or (c == 1 and all(d == 1 for d in gate_shape[1:]))


def stage_of(input_size: Sequence[int], h: int) -> int:
    """The output-stride level of a feature map of height ``h`` (see the module docstring)."""
    return max(0, round(math.log2(input_size[1] / h))) if h > 0 else 0


def name_blocks(model: nn.Module, accepted: list[dict]) -> list[SEBlock]:
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
