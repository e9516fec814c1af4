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
  found by :func:`senet_viz.gates.fx.trace_gates` in a ``torch.fx`` graph (also every gate of a loaded ONNX /
  TorchScript / ``.pt2`` network, which keep no SE module to hook; see :mod:`senet_viz.models.loaders`).

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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
    graph: see :func:`discover` (``trace="auto"``) and :func:`senet_viz.gates.fx.trace_gates`."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("a TorchScript module cannot be hooked (its forward runs in the TorchScript interpreter); "
                        "load it with senet_viz.models.loaders.load_model_arg, which converts it to an exported graph")
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


def discover(model: nn.Module, input_size: tuple[int, int, int] | None = None, *, trace: str = "auto",
             source: nn.Module | None = None) -> tuple[nn.Module, Discovery]:
    """Every channel gate of ``model``: SE modules first, inline gates through ``torch.fx`` when needed.

    ``trace="auto"``: trace only when no SE module is found (a GraphModule or
    :class:`~senet_viz.gates.fx.PerImage`, as the loaders return, is always searched through its graph);
    ``"always"``: search the traced graph only (it also finds the SE modules, named from its module stack);
    ``"never"``: modules only. Returns the module to run and hook (a GraphModule with
    :class:`~senet_viz.gates.fx.GateProbe` s when the graph was used, else ``model``) and the discovery."""
    from senet_viz.gates.fx import PerImage, trace_gates  # fx_gates builds on this module: imported when needed

    if trace not in ("auto", "always", "never"):
        raise ValueError(f"trace must be 'auto', 'always' or 'never', not {trace!r}")
    if trace == "always" or (trace == "auto" and isinstance(model, fx.GraphModule | PerImage)):
        return trace_gates(model, input_size, source=source)
    found = discover_se_blocks(model, input_size)
    if trace == "never" or found.blocks:
        return model, found
    traced, inline = trace_gates(model, input_size, source=source)
    return traced, Discovery(blocks=inline.blocks, rejected={**found.rejected, **inline.rejected})


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
