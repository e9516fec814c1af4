"""Find the Squeeze-and-Excitation blocks of a network and name them as the SENet paper does.

Every SE block is hooked at its **gate**: the sigmoid / hard-sigmoid module whose output is the channel
excitation ``s`` (never the block output ``x * s``). Known implementations:

- timm ``SEModule`` / ``SqueezeExcite`` / ``EffectiveSEModule``: child ``gate``;
- timm legacy SENets (``legacy_seresnet*``, ``legacy_senet154``) ``SEModule``: child ``sigmoid``;
- torchvision ``SqueezeExcitation`` (MobileNetV3, EfficientNet, RegNetY): child ``scale_activation``.

Any other module is recognised *structurally*: it has a sigmoid-like child and a 1x1 bottleneck
(C -> C/r -> C, as ``Conv2d`` or ``Linear``). Each candidate is then checked in one forward pass: its gate must
output one value per channel (``N x C x 1 x 1`` or ``N x C``) and the module must return a tensor of its input's
shape. What fails the check is reported in :class:`Discovery.rejected`, never guessed.

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
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

# (class name, gate child name) of the SE implementations we know by name.
KNOWN_SE_GATES: dict[str, str] = {
    "SEModule": "gate",  # timm.layers.SEModule (legacy SENet's SEModule has 'sigmoid'; handled below)
    "SqueezeExcite": "gate",  # timm efficientnet/mobilenetv3 blocks
    "EffectiveSEModule": "gate",  # timm
    "SqueezeExcitation": "scale_activation",  # torchvision.ops.misc
}
SIGMOID_LIKE = ("Sigmoid", "Hardsigmoid", "HardSigmoid", "GateSigmoid")


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
    kind: str  # "timm", "timm-legacy", "torchvision" or "structural"
    gate_fn: str  # class name of the gate, e.g. "Sigmoid" or "Hardsigmoid"


@dataclass
class Discovery:
    blocks: list[SEBlock]
    rejected: dict[str, str] = field(default_factory=dict)  # module path -> why it is not an SE block


def _is_sigmoid_like(module: nn.Module) -> bool:
    name = type(module).__name__
    return name in SIGMOID_LIKE or "sigmoid" in name.lower()


def _gate_child(module: nn.Module) -> tuple[str, str] | None:
    """Return (gate child name, kind) if ``module`` looks like an SE block, else None."""
    cls = type(module).__name__
    children = dict(module.named_children())
    if cls == "SEModule" and "sigmoid" in children and "fc1" in children:
        return "sigmoid", "timm-legacy"
    if cls in KNOWN_SE_GATES and KNOWN_SE_GATES[cls] in children:
        return KNOWN_SE_GATES[cls], "torchvision" if cls == "SqueezeExcitation" else "timm"
    # Structural: a sigmoid-like child plus a bottleneck of 1x1 convs / linears C -> r -> C.
    gates = [n for n, c in children.items() if _is_sigmoid_like(c)]
    layers = [c for c in children.values() if isinstance(c, nn.Conv2d | nn.Linear)]
    if len(gates) != 1 or len(layers) < 2:
        return None
    first, last = layers[0], layers[-1]
    if isinstance(first, nn.Conv2d) and (first.kernel_size != (1, 1) or last.kernel_size != (1, 1)):
        return None
    c_in = first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
    c_out = last.out_channels if isinstance(last, nn.Conv2d) else last.out_features
    c_mid = first.out_channels if isinstance(first, nn.Conv2d) else first.out_features
    if c_in != c_out or c_mid > c_in:
        return None
    return gates[0], "structural"


def _default_input(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    return size if len(size) == 3 else (3, 224, 224)  # type: ignore[return-value]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _wrapping_parents(candidates: dict[str, tuple[str, str]], modules: dict[str, nn.Module]) -> dict[str, str]:
    """Structural candidate -> its parent module, where the parent may be the real SE module: a hand-written
    SE often keeps FC / ReLU / FC / sigmoid in an ``nn.Sequential`` (fed the pooled N x C or N x C x 1 x 1
    vector, or pooling itself) while the parent pools and multiplies. The parent qualifies only if it adds
    no parameters of its own and wraps exactly one candidate; the forward pass then decides (see below)."""
    by_parent: dict[str, list[str]] = {}
    for path, (_, kind) in candidates.items():
        if kind == "structural" and path:
            by_parent.setdefault(path.rpartition(".")[0], []).append(path)
    return {kids[0]: parent for parent, kids in by_parent.items()
            if len(kids) == 1 and parent not in candidates
            and _n_params(modules[parent]) == _n_params(modules[kids[0]])}


def discover_se_blocks(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> Discovery:
    """Find every SE block of ``model`` with one forward pass of a zero image (no hook is left behind)."""
    input_size = input_size or _default_input(model)
    modules = dict(model.named_modules())
    candidates: dict[str, tuple[str, str]] = {}
    for path, module in modules.items():
        found = _gate_child(module)
        if found is None:
            continue
        # An SE module nested inside another candidate is the real one (e.g. a wrapper with a sigmoid).
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
        for path, (gate_name, _) in candidates.items():
            handles.append(modules[path].register_forward_hook(se_hook(path)))
            handles.append(modules[_join(path, gate_name)].register_forward_hook(gate_hook(path)))
        for parent in set(parents.values()):
            handles.append(modules[parent].register_forward_hook(se_hook(parent, parent_seen)))
        model.eval()
        with torch.inference_mode():
            model(torch.zeros((1, *input_size), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    rejected: dict[str, str] = {}
    accepted: list[tuple[int, str, str, str, int, int]] = []
    for path, (gate_name, kind) in candidates.items():
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
        n, c, h, w = rec["in_shape"]
        gate_shape = rec.get("gate_shape")
        if gate_shape not in ((n, c, 1, 1), (n, c)):
            rejected[path] = f"gate output {gate_shape} is not one value per channel of input {rec['in_shape']}"
            continue
        if kind == "structural" and rec.get("out_shape") != rec["in_shape"]:
            rejected[path] = f"output {rec.get('out_shape')} does not match input {rec['in_shape']}"
            continue
        stage = max(0, round(math.log2(input_size[1] / h))) if h > 0 else 0
        accepted.append((rec["order"], path, gate_name, kind, stage, c))

    accepted.sort()
    offset = int(getattr(model, "se_stage_offset", 0))
    accepted = [(o, p, g, k, stage + offset, c) for o, p, g, k, stage, c in accepted]
    blocks: list[SEBlock] = []
    per_stage: dict[int, int] = {}
    for order, (_, path, gate_name, kind, stage, channels) in enumerate(accepted):
        per_stage[stage] = per_stage.get(stage, 0) + 1
        module = modules[path]
        gate_path = _join(path, gate_name)
        blocks.append(
            SEBlock(
                name=f"SE_{stage}_{per_stage[stage]}",
                path=path,
                gate_path=gate_path,
                stage=stage,
                index=per_stage[stage],
                order=order,
                channels=channels,
                params=_n_params(module),
                kind=kind,
                gate_fn=type(modules[gate_path]).__name__,
            )
        )
    return Discovery(blocks=blocks, rejected=rejected)


def find_se_blocks(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> list[SEBlock]:
    """Every SE block of ``model`` in execution order, named ``SE_<stage>_<block>``."""
    return discover_se_blocks(model, input_size).blocks


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
