"""The graph side of tail replay (:mod:`senet_viz.inference.tail`): tracing a network with its SE gates as leaf
modules, the boundaries across which one tensor is live (cuts), where each gate runs, in-place writes, and a probe
forward that records shapes and MACs per node."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import fx, nn

from senet_viz.gates.kinds import SEBlock

__all__ = ["Probe", "constant_nodes", "cut_positions", "gate_positions", "mutates", "trace_network"]


class _Tracer(fx.Tracer):
    """symbolic tracing with the SE gate modules (by identity) and timm's non-traceable modules as leaves."""

    def __init__(self, leaves: set[int], leaf_types: tuple[type, ...], autowrap: tuple) -> None:
        super().__init__(autowrap_functions=autowrap)
        self.leaves = leaves
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if id(m) in self.leaves or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


class _ValueTracer(_Tracer):
    """:class:`_Tracer` that also computes every traced value on an example input, so that control flow on shapes
    (``if x.shape[1] == 3``) takes the branch the example takes: the graph is specialised to the input size (the
    batch size stays free unless a branch tests it). Used when plain symbolic tracing fails."""

    def __init__(self, leaves: set[int], leaf_types: tuple[type, ...], autowrap: tuple, example: torch.Tensor,
                 module_outputs: dict[str, list]) -> None:
        super().__init__(leaves, leaf_types, autowrap)
        self.example = example
        self.values: dict[fx.Node, object] = {}
        # a leaf module's value: its output in an eager forward on the example, by module path and call number
        # (calling it here would run inside the tracer's patched Module.__call__)
        self.module_outputs = module_outputs
        self.module_calls: dict[str, int] = {}
        self.static: set[fx.Node] = set()  # nodes whose value the input's shape fixes

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if not isinstance(proxy, fx.Proxy):
            return proxy
        missing = object()

        def value(a):
            if isinstance(a, fx.Proxy):
                a = a.node
            if isinstance(a, fx.Node):
                got = self.values.get(a, missing)
                if got is missing:
                    raise LookupError(a.name)
                return got
            return a

        try:
            a = fx.node.map_aggregate(args, value)
            kw = fx.node.map_aggregate(kwargs, value)
            if kind == "placeholder":
                out = self.example if not any(n.op == "placeholder" for n in self.values) else missing
            elif kind == "call_function":
                out = target(*a, **kw)
            elif kind == "call_method":
                out = getattr(a[0], target)(*a[1:], **kw)
            elif kind == "call_module":
                k = self.module_calls[target] = self.module_calls.get(target, -1) + 1
                outs = self.module_outputs.get(target, [])
                out = outs[k] if k < len(outs) else missing
            elif kind == "get_attr":
                out = operator.attrgetter(target)(self.root)
            else:
                out = missing
        except Exception:  # noqa: BLE001 - no value: control flow on this node is not traceable
            out = missing
        if out is not missing:
            self.values[proxy.node] = out
            if self._static(proxy.node, kind, target, out):
                self.static.add(proxy.node)
        return proxy

    _SHAPE_ATTRS = ("shape", "ndim", "dtype", "device", "is_cuda")
    _SHAPE_METHODS = ("size", "dim", "numel")

    def _static(self, node: fx.Node, kind: str, target, out: object) -> bool:
        """A value fixed by the input's shape (not by its data): only those may decide control flow."""
        if isinstance(out, torch.Tensor) or kind in ("placeholder", "call_module"):
            return False
        if kind == "call_function" and target is getattr and len(node.args) > 1 and node.args[1] in self._SHAPE_ATTRS:
            return True
        if kind == "call_method" and target in self._SHAPE_METHODS:
            return True
        if kind == "call_method" and target in ("item", "tolist"):
            return False
        return all(a in self.static for a in node.all_input_nodes)

    def to_bool(self, obj: fx.Proxy) -> bool:
        if obj.node in self.static:
            return bool(self.values[obj.node])
        return super().to_bool(obj)  # data-dependent control flow: not traceable


def _timm_fx() -> tuple[tuple[type, ...], tuple]:
    try:
        import timm.models._features_fx  # noqa: F401 - registers timm's model-level leaf modules
        from timm.layers import _fx as timm_fx
    except Exception:  # noqa: BLE001 - timm is optional for a user's own network
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


def trace_network(model: nn.Module, blocks: Sequence[SEBlock], example: torch.Tensor) -> fx.GraphModule:
    """``model``'s graph: a GraphModule over a copy of a loaded GraphModule's graph, else a fresh trace (with
    control flow on shapes decided by ``example``, see :class:`_ValueTracer`, when a plain trace fails)."""
    if isinstance(model, fx.GraphModule):
        # A graph from torch.export returns a flat list that its pytree codegen turns back into the tensor; the
        # copy runs with the plain codegen, so it returns that tensor itself.
        out_spec = getattr(getattr(model.graph._codegen, "pytree_info", None), "out_spec", None)
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for n in model.graph.nodes:
            if n.op == "output":
                value = n.args[0]
                if out_spec is not None and out_spec.is_leaf() and isinstance(value, list | tuple) and len(value) == 1:
                    value = value[0]
                graph.output(fx.map_arg(value, lambda a: env[a]))
            else:
                env[n] = graph.node_copy(n, lambda a: env[a])
        return fx.GraphModule(model, graph, class_name=type(model).__name__)
    modules = dict(model.named_modules())
    leaves = {id(modules[b.gate_path]) for b in blocks if b.gate_path in modules}
    leaf_types, autowrap = _timm_fx()
    try:
        tracer = _Tracer(leaves, leaf_types, autowrap)
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 - e.g. control flow on a shape: decide it on the example
        outputs: dict[str, list] = {}
        handles = [m.register_forward_hook(lambda _m, _i, out, path=path: outputs.setdefault(path, []).append(out))
                   for path, m in modules.items() if path]
        try:
            with torch.inference_mode():
                model(example)
        finally:
            for h in handles:
                h.remove()
        tracer = _ValueTracer(leaves, leaf_types, autowrap, example, outputs)
        with torch.inference_mode():
            graph = tracer.trace(model)
        tracer.values.clear()
    return fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)


def constant_nodes(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes that depend on no input: parameters, buffers, constants and what is computed from them only (they can
    be recomputed in a tail, so they never block a cut)."""
    const: set[fx.Node] = set()
    for n in nodes:
        if n.op == "get_attr" or (n.op in ("call_function", "call_method", "call_module")
                                  and all(a in const for a in n.all_input_nodes) and n.op != "call_module"):
            const.add(n)
    return const


def cut_positions(nodes: list[fx.Node], const: set[fx.Node]) -> list[int]:
    """Positions i such that node i's output is the only non-constant value used after node i."""
    position = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((position[u] for u in n.users), default=-1) for n in nodes}
    cuts, live = [], 0  # live: values defined so far and used later, constants excluded
    alive: set[fx.Node] = set()
    for i, n in enumerate(nodes):
        for a in n.all_input_nodes:
            if a in alive and last_use[a] <= i:
                alive.discard(a)
        if n not in const and last_use[n] > i:
            alive.add(n)
        live = len(alive)
        if live == 1 and n in alive and n.op not in ("placeholder", "output"):
            cuts.append(i)
    return cuts


def gate_positions(nodes: list[fx.Node], blocks: Sequence[SEBlock]) -> dict[str, int | str]:
    """Per block: the position of the first node that runs its gate module (the gate itself, or a leaf module that
    holds it), or the reason there is none."""
    out: dict[str, int | str] = {}
    calls = [(i, str(n.target)) for i, n in enumerate(nodes) if n.op == "call_module"]
    for b in blocks:
        hits = [i for i, target in calls if b.gate_path == target or b.gate_path.startswith(target + ".")]
        out[b.name] = hits[0] if hits else f"the gate {b.gate_path} of {b.name} is not a module call of the graph"
    return out


_INPLACE_OPS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.iand, operator.ior}


def mutates(user: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``user`` may write into its input (an in-place op): a kept or shared cut activation must not change."""
    if user.kwargs.get("inplace"):
        return True
    if user.op == "call_module":
        return bool(getattr(gm.get_submodule(str(user.target)), "inplace", False))
    if user.op == "call_function":
        name = getattr(user.target, "__name__", str(user.target))
        return user.target in _INPLACE_OPS or (name.endswith("_") and not name.endswith("__"))
    if user.op == "call_method":
        return str(user.target).endswith("_") and not str(user.target).endswith("__")
    return False


class Probe(fx.Interpreter):
    """Runs the graph once, recording every node's output shape / dtype and MACs (of the whole probe batch)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.macs: dict[str, int] = {}

    def run_node(self, n: fx.Node):
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False, depth=None)
        with counter:
            out = super().run_node(n)
        self.macs[n.name] = counter.get_total_flops() // 2
        if isinstance(out, torch.Tensor):
            self.meta[n.name] = (tuple(out.shape), out.dtype)
        return out
