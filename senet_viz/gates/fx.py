"""Channel gates written inline in a ``forward``, found in a ``torch.fx`` graph (gate kind ``"fx_inline"``).

:func:`trace_gates` traces a network (``symbolic_trace``, else ``torch.export``), finds each ``x * sigmoid(...)`` /
``x * hardsigmoid(...)`` whose gate is fed by a global pooling of ``x`` (one value per channel), and inserts a
:class:`GateProbe` (an identity module) at the gate, so that the usual module hooks capture and ablate it; the
blocks are named as :mod:`senet_viz.gates.kinds` names SE modules. What cannot be traced, and sigmoid products that are
not channel gates (spatial gates, learned constant scales), are reported in ``Discovery.rejected``, not guessed.
:class:`PerImage` runs a graph exported for a fixed batch of one image by image. Entry point for callers:
:func:`senet_viz.gates.blocks.discover`.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from dataclasses import replace

import torch
from torch import fx, nn

from senet_viz.gates.kinds import (
    GAIN_CLASSES,
    NOT_SE,
    Candidate,
    Discovery,
    class_name,
    class_origin,
    default_input_size,
    gate_child,
    is_per_channel,
    is_sigmoid_like,
    join_path,
    known_kind,
    name_blocks,
    stage_of,
)


class GateProbe(nn.Module):
    """Identity inserted at an inline gate's output in a traced graph: forward hooks on it see the gate, and
    :func:`senet_viz.gates.capture.ablate` replaces it, exactly as for a gate module."""

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


def is_sigmoid_node(node: fx.Node, gm: fx.GraphModule) -> bool:
    """A sigmoid / hard-sigmoid call or module in ``gm``'s graph."""
    if node.op == "call_module":
        return is_sigmoid_like(gm.get_submodule(node.target))
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


def _combined_with_branch(mul: fx.Node, x: fx.Node, branch: list[fx.Node]) -> bool:
    """Whether an operation on the gated output ``x * g`` also takes another term computed from the gate's own
    branch (GCNet's ``x * g + mlp_add(context)``), not through ``x * g`` itself (CBAM's spatial half pools it): a
    gate of 1 would leave that term in place."""
    inside = set(branch)
    for user in mul.users:
        for other in user.all_input_nodes:
            if other is mul:
                continue
            seen, queue = {other}, deque([other])
            while queue and len(seen) < _MAX_BRANCH:
                node = queue.popleft()
                if node in inside:
                    return True
                for arg in node.all_input_nodes:
                    if arg is not x and arg is not mul and arg not in seen:  # not through the gated output
                        seen.add(arg)
                        queue.append(arg)
    return False


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


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
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
    """``torch.export`` ``model`` (non-strict; batch size, 1 included, and image size free unless the model fixes
    them) and return the flat GraphModule, a plain one (the exported module refuses ``eval()``). Its nodes keep
    their module stack (paths and class names), so gates are found and named like in the eager model."""
    import torch.fx.experimental._config as fx_config

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros((2, *input_size), device=device)
    auto = torch.export.Dim.AUTO  # batch and image size left free where the model allows it
    was_training = model.training
    model.eval()
    try:
        with fx_config.patch(backed_size_oblivious=True):
            program = torch.export.export(model, (example,), strict=False,
                                          dynamic_shapes=({0: auto, 2: auto, 3: auto},))
    finally:
        model.train(was_training)
    return copy_graph_module(program.module())


def trace_gates(model: nn.Module, input_size: tuple[int, int, int] | None = None, *,
                source: nn.Module | None = None, inplace: bool = False) -> tuple[nn.Module, Discovery]:
    """Find inline gates in a ``torch.fx`` graph of ``model`` and make them hookable.

    ``model`` is a GraphModule (a loaded ONNX / TorchScript / ``.pt2`` network, see :mod:`senet_viz.models.loaders`) or
    an
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
    input_size = tuple(input_size or default_input_size(source or model))
    if isinstance(model, PerImage):
        net, found = trace_gates(model.net, input_size, source=source, inplace=inplace)
        outer = model if inplace else PerImage(net)
        outer.net = net
        moved = [replace(b, path=join_path("net", b.path), gate_path=join_path("net", b.gate_path))
                 for b in found.blocks]
        return outer, Discovery(blocks=moved, rejected=found.rejected)
    if isinstance(model, fx.GraphModule):
        gm = model if inplace else copy_graph_module(model)
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
            if gate is x or not is_sigmoid_node(gate, gm):
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
            if not is_per_channel(gate_shape, x_shape[0], x_shape[1]):
                rejected[where] = f"gate output {gate_shape} is not one value per channel of input {x_shape}"
                break
            if not reached:
                rejected[where] = (f"per-channel sigmoid {gate_shape} does not depend on the feature map it scales "
                                   "(a learned or external scale, not an excitation)")
                break
            if out_shape != x_shape:
                rejected[where] = f"output {out_shape} does not match input {x_shape}"
                break
            if _combined_with_branch(mul, x, branch):
                rejected[where] = ("the gated features x * g are combined with another term computed from the gate's "
                                   "own pooled context (e.g. GlobalContext with fuse_add: x * g + mlp_add(context)); "
                                   "a gate of 1 would leave that term in place, so the module cannot be removed by "
                                   "its gate")
                break
            params, owners = _branch_params(weights, gm)
            owner, owner_cls, parent_cls = _owner(mul, gate, owners, source)
            short = (owner_cls or "").rpartition(".")[2]
            if short in NOT_SE:
                rejected[owner or where] = f"not an SE gate: {NOT_SE[short]}"
                break
            found.append({"mul": mul, "gate": gate, "x_shape": x_shape, "params": params, "owner": owner,
                          "gate_kind": known_kind(owner_cls) or "fx_inline",
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
            path = join_path(owner, f"inline_se{inline_count[owner]}")
        if gate.op == "call_module" and call_count.get(gate.target) == 1:
            gate_path = str(gate.target)  # a gate module called once: hook it as it is
        else:
            # Where the eager model has its gate: the gate's own module in the stack, the known class's gate child
            # (TorchScript source), else "<path>.gate".
            deeper = [p for p, _ in _stack(gate) if p.startswith(owner + ".")] if owner else []
            wanted = join_path(path, "gate")
            if rec["gate_kind"] != "fx_inline":
                own = gate_child(source_modules[owner]) if owner in source_modules else None
                wanted = deeper[-1] if deeper else join_path(path, own.gate) if isinstance(own, Candidate) else wanted
            gate_path = _free_path(gm, wanted)
            gm.add_submodule(gate_path, GateProbe())
            with gm.graph.inserting_after(gate):
                probe = gm.graph.call_module(gate_path, (gate,))
            probe.meta = dict(gate.meta)
            gate.replace_all_uses_with(probe, delete_user_cb=lambda user, p=probe: user is not p)
        x_shape = rec["x_shape"]
        accepted.append({
            "order": position[rec["mul"]], "path": path, "gate_path": gate_path,
            "stage": stage_of(input_size, x_shape[2]), "channels": x_shape[1], "params": rec["params"],
            "kind": "fx", "gate_fn": _fn_name(gate, gm), "gate_kind": rec["gate_kind"], "gain": rec["gain"],
            "branch": tuple(rec["branch"]),
        })
    if accepted:
        gm.graph.lint()
        gm.recompile()
    return gm, Discovery(blocks=name_blocks(source or model, accepted), rejected=rejected)
