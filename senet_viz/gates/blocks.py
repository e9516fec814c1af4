"""Find the Squeeze-and-Excitation blocks of a network by their modules, and select blocks by name.

Every SE block is hooked at its **gate**: the sigmoid / hard-sigmoid whose output is the channel excitation ``s``
(never the block output ``x * s``). A gate is one value per channel of the feature map it scales, computed from
that feature map through a global pooling; the block passes its input through when ``s = 1``. The gate kinds, the
classes known by name and the ``SE_<stage>_<block>`` naming are in :mod:`senet_viz.gates.kinds`; gates written
inline in a ``forward`` are found in a ``torch.fx`` graph by :mod:`senet_viz.gates.fx`; :func:`discover` uses both.

Each candidate is checked in one forward pass: its gate must output one value per channel (``N x C x 1 x 1``,
``N x C`` or ``N x 1 x C``) and the module must return a tensor of its input's shape. What fails the check is
reported in :class:`~senet_viz.gates.kinds.Discovery` ``.rejected`` with a reason, never guessed; so are the
attention modules that look like gates but are deliberately not SE (:data:`senet_viz.gates.kinds.NOT_SE`).

Gains. NFNets (timm ``NormFreeBlock``) scale the SE output by ``attn_gain`` (2.0): ``out = attn_gain * (x * s)``.
Removing that SE honestly means an effective scale of 1, so the block records ``gain = attn_gain`` and identity
ablation sets ``s = 1 / gain`` (:attr:`SEBlock.identity_gate`); captured gates stay the sigmoid's own output
``s`` in [0, 1] (the effective per-channel scale is ``gain * s``), and mean ablation freezes ``s`` to its mean.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx, nn

from senet_viz.gates.fx import PerImage, trace_gates
from senet_viz.gates.kinds import (
    Candidate,
    Discovery,
    SEBlock,
    class_name,
    default_input_size,
    gate_child,
    is_per_channel,
    join_path,
    name_blocks,
    stage_of,
)

Record = dict  # what the forward hooks saw of one module: order, in_shape, out_shape, gate_shape


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _wrapping_parents(candidates: dict[str, Candidate], modules: dict[str, nn.Module]) -> dict[str, str]:
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


def _gain(path: str, modules: dict[str, nn.Module]) -> float:
    """NFNet-style ``attn_gain`` of the block that holds the SE module at ``path`` as ``attn`` / ``attn_last``."""
    parent_path, _, child = path.rpartition(".")
    parent = modules.get(parent_path)
    gain = getattr(parent, "attn_gain", None) if child in ("attn", "attn_last") else None
    return float(gain) if isinstance(gain, int | float) and gain > 0 else 1.0


def _candidates(modules: dict[str, nn.Module]) -> tuple[dict[str, Candidate], dict[str, str]]:
    """Every module that looks like a channel gate, and those rejected by their structure alone (with why)."""
    candidates: dict[str, Candidate] = {}
    rejected: dict[str, str] = {}
    for path, module in modules.items():
        found = gate_child(module)
        if isinstance(found, str):
            rejected[path] = found
        elif found is not None:
            candidates[path] = found
    return candidates, rejected


def _probe(model: nn.Module, modules: dict[str, nn.Module], candidates: dict[str, Candidate],
           parents: dict[str, str], input_size: tuple[int, int, int]) -> tuple[dict[str, Record], dict[str, Record]]:
    """One forward pass of a zero image with hooks on the candidates, their gates and their wrapping parents:
    what each was fed and returned (candidates, parents). No hook is left behind; the training mode is restored."""
    seen: dict[str, Record] = {}
    parent_seen: dict[str, Record] = {}

    def se_hook(path: str, store: dict[str, Record] = seen):
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
    handles = []
    try:
        for path, cand in candidates.items():
            handles.append(modules[path].register_forward_hook(se_hook(path)))
            handles.append(modules[join_path(path, cand.gate)].register_forward_hook(gate_hook(path)))
        for parent in set(parents.values()):
            handles.append(modules[parent].register_forward_hook(se_hook(parent, parent_seen)))
        model.eval()
        with torch.inference_mode():
            model(torch.zeros((1, *input_size), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen, parent_seen


def _keeps_shape(rec: Record | None) -> bool:
    return rec is not None and "in_shape" in rec and rec.get("out_shape") == rec["in_shape"]


def _as_block(path: str, cand: Candidate, rec: Record | None, parent: str | None, prec: Record,
              modules: dict[str, nn.Module], input_size: tuple[int, int, int]) -> tuple[str, dict | str]:
    """(module path, SEBlock fields plus 'order' and 'stage') of a candidate that passes the forward-pass checks,
    else (module path, why it is not an SE block)."""
    gate_name = cand.gate
    if (parent is not None and rec is not None and _keeps_shape(prec)
            and (not _keeps_shape(rec) or (rec["in_shape"][2:] == (1, 1) != prec["in_shape"][2:]))):
        # The candidate only computes the gate (from an already pooled input, or without multiplying);
        # its parameter-free parent takes the feature map and returns it rescaled: that is the SE block.
        gate_name = join_path(path[len(parent) + 1:] if parent else path, gate_name)
        path, rec = parent, {**prec, "order": rec["order"], "gate_shape": rec.get("gate_shape")}
    if rec is None or "in_shape" not in rec:
        return path, "not called with a 4-D feature map in a forward pass"
    if rec.get("gate_shape") is None:
        return path, (f"its gate '{gate_name}' is never called: no channel gate scales the features"
                      + (" (GlobalContext without fuse_scale only adds its context)"
                         if cand.gate_kind == "global_context" else ""))
    in_shape = rec["in_shape"]
    n, c = in_shape[0], in_shape[-1] if cand.channels_last else in_shape[1]
    h = in_shape[1] if cand.channels_last else in_shape[2]
    gate_shape = rec["gate_shape"]
    if not is_per_channel(gate_shape, n, c):
        hint = " (gather-excite with a local extent: one gate per channel and position)" \
            if cand.gate_kind == "gather_excite" else ""
        return path, f"gate output {gate_shape} is not one value per channel of input {in_shape}{hint}"
    if cand.source == "structural" and rec.get("out_shape") != in_shape:
        return path, f"output {rec.get('out_shape')} does not match input {in_shape}"
    return path, {
        "order": rec["order"], "path": path, "gate_path": join_path(path, gate_name),
        "stage": stage_of(input_size, h), "channels": c, "params": _n_params(modules[path]),
        "kind": cand.source, "gate_fn": class_name(modules[join_path(path, gate_name)]),
        "gate_kind": cand.gate_kind, "gain": _gain(path, modules),
    }


def discover_se_blocks(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> Discovery:
    """Find every SE block of ``model`` with one forward pass of a zero image (no hook is left behind).

    Finds SE *modules* (known classes and structural matches). Gates written inline in a ``forward`` need a traced
    graph: see :func:`discover` (``trace="auto"``) and :func:`senet_viz.gates.fx.trace_gates`."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("a TorchScript module cannot be hooked (its forward runs in the TorchScript interpreter); "
                        "load it with senet_viz.models.loaders.load_model_arg, which converts it to an exported graph")
    input_size = input_size or default_input_size(model)
    modules = dict(model.named_modules())
    candidates, rejected = _candidates(modules)
    parents = _wrapping_parents(candidates, modules)
    seen, parent_seen = _probe(model, modules, candidates, parents, input_size)
    accepted: list[dict] = []
    for path, cand in candidates.items():
        parent = parents.get(path)
        where, found = _as_block(path, cand, seen.get(path), parent, parent_seen.get(parent or "", {}), modules,
                                 input_size)
        if isinstance(found, str):
            rejected[where] = found
        else:
            accepted.append(found)
    return Discovery(blocks=name_blocks(model, accepted), rejected=rejected)


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
