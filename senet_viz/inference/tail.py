"""Tail replay: an ablated pass computes only the part of the network after the first ablated gate.

Everything before the first ablated SE gate is exactly the full network's computation, so an ablation needs only
the *tail* from an activation at a cut point. :func:`find_cuts` traces the network with ``torch.fx`` (every SE
gate module a leaf, so the usual hooks fire on the same module objects; timm's non-traceable modules and functions
left whole as timm's own feature extraction does; a loaded GraphModule, e.g. ONNX through onnx2torch, is used as
it is) and finds the **cuts**: boundaries in the graph's node order across which a single tensor is live (besides
parameters and constants), a tensor through which the whole computation flows: a stage boundary, the input of a
block in a sequential network. The :class:`TailPlan` keeps, for each SE block, the latest cut before its gate.

A pass that ablates ``blocks`` then runs:

- the full network as a graph that also returns the activations at the cuts it is asked for
  (:meth:`TailPlan.tapped`: the same ops on the same modules, so fp32 results are the eager forward's), once per
  batch, under the capture / precision machinery of :func:`senet_viz.inference.run.run_model`;
- for each ablation, :meth:`TailPlan.tail` ``(cut)(activation) -> logits`` under
  :func:`senet_viz.gates.capture.ablate` and the pass's :class:`~senet_viz.inference.precision.PrecisionPolicy`.

The plan is built once per model object (traced, one probe forward of one image for shapes, MACs per node and a
check that the graph reproduces the network) and cached weakly; the model is never edited (the GraphModules hold
references to its own submodules: no copy of parameters). Where tracing fails, or no cut lies before a gate,
:attr:`TailPlan.reason` / :meth:`TailPlan.why_not` say why in a plain sentence, and callers run the full pass and
report it (``AblationResult.replay``).

Switch: ``SENET_VIZ_TAIL_REPLAY=0`` turns replay off everywhere (library, CLI, app); :func:`replay_enabled` reads
it, and the public entry points take ``replay: bool | None`` (None: the environment's setting).

The app's full pass keeps the activations at the last stage's cuts per image (:func:`cuts_to_keep`,
:class:`KeptCuts`), bounded by :func:`cuts_budget_bytes` (``SENET_VIZ_CUTS_MB``; default a quarter of the result
cache's ``SENET_VIZ_RESULTS_MB``, i.e. 512 MiB), so that the Remove page's toggle replays only the tail.
"""

from __future__ import annotations

import math
import operator
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from senet_viz.gates.capture import model_lock
from senet_viz.gates.kinds import SEBlock
from senet_viz.settings import env_int

__all__ = ["REPLAY_ENV", "CUTS_MB_ENV", "Cut", "KeptCuts", "TailPlan", "cuts_budget_bytes", "cuts_to_keep",
           "find_cuts", "replay_enabled"]

REPLAY_ENV = "SENET_VIZ_TAIL_REPLAY"
CUTS_MB_ENV = "SENET_VIZ_CUTS_MB"
_RESULTS_MB_ENV = "SENET_VIZ_RESULTS_MB"
_RESULTS_MB_DEFAULT = 2048  # ui/serving.py BUDGETS_MB["SENET_VIZ_RESULTS_MB"]; the library does not import ui


def replay_enabled(replay: bool | None = None) -> bool:
    """Whether passes replay tails: ``replay`` when given, else ``$SENET_VIZ_TAIL_REPLAY`` (default on; "0",
    "false", "no" or "off" turn it off)."""
    if replay is not None:
        return bool(replay)
    return os.environ.get(REPLAY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cuts_budget_bytes() -> int:
    """Bytes a full pass may keep of cut activations (:class:`KeptCuts`): ``$SENET_VIZ_CUTS_MB`` MiB, else a quarter
    of ``$SENET_VIZ_RESULTS_MB`` (default 2048, so 512 MiB). They live inside the cached result, so the result
    cache's own byte budget counts them too."""
    results_mb = env_int(_RESULTS_MB_ENV, _RESULTS_MB_DEFAULT, minimum=1)
    return env_int(CUTS_MB_ENV, results_mb // 4, minimum=0) * 2**20


@dataclass(frozen=True)
class Cut:
    """A point of the graph through which the whole computation flows: the output of node ``node``."""

    node: str  # graph node whose output is the only value live across the cut
    where: str  # readable: the module path of that node, else the node's name
    position: int  # index of the node in the graph's order
    first_block: str  # name of the first SE block whose gate comes after the cut
    shape: tuple[int, ...]  # the activation of one image
    dtype: torch.dtype  # what the network computes it in, in fp32
    tail_share: float  # share of one forward's MACs spent after the cut (the tail's cost)
    mutated: bool = False  # an op after the cut writes into the activation in place: taps and replays copy it

    def describe(self) -> str:
        """``tail from <where> (before <block>, x% of MACs)``: how a replayed pass was computed."""
        return f"tail from {self.where} (before {self.first_block}, {100 * self.tail_share:.0f}% of MACs)"

    def bytes_per_image(self, itemsize: int | None = None) -> int:
        size = itemsize if itemsize is not None else torch.empty(0, dtype=self.dtype).element_size()
        return math.prod(self.shape) * size


def full_pass_note(reason: str) -> str:
    """How a pass that could not replay a tail was computed: ``full pass: <reason>``."""
    return f"full pass: {reason}"


class _Tapped(nn.Module):
    """The full network returning its logits; the activations at the cuts of the last forward are in ``taps``
    (one object per pass: a redone batch, e.g. in fp32, replaces them)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm
        self.taps: tuple[torch.Tensor, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, taps = self.gm(x)
        self.taps = tuple(taps)
        return out


class _Tail(nn.Module):
    """The network after a cut: activation -> logits. Without autocast (fp32, or the fp32 redo of a batch whose
    activation was computed in reduced precision) the activation is brought to the dtype the network computes it
    in, as the full fp32 forward would have."""

    def __init__(self, gm: fx.GraphModule, dtype: torch.dtype, copy: bool) -> None:
        super().__init__()
        self.gm = gm
        self.dtype = dtype
        self.copy = copy  # the tail writes into its input: replay from a copy (the activation is shared)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.dtype != self.dtype and a.is_floating_point() and not torch.is_autocast_enabled(a.device.type):
            a = a.to(self.dtype)
        elif self.copy:
            a = a.clone()
        return self.gm(a)


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


def _trace(model: nn.Module, blocks: Sequence[SEBlock], example: torch.Tensor) -> fx.GraphModule:
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


def _constant_nodes(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes that depend on no input: parameters, buffers, constants and what is computed from them only (they can
    be recomputed in a tail, so they never block a cut)."""
    const: set[fx.Node] = set()
    for n in nodes:
        if n.op == "get_attr" or (n.op in ("call_function", "call_method", "call_module")
                                  and all(a in const for a in n.all_input_nodes) and n.op != "call_module"):
            const.add(n)
    return const


def _cut_positions(nodes: list[fx.Node], const: set[fx.Node]) -> list[int]:
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


def _gate_positions(nodes: list[fx.Node], blocks: Sequence[SEBlock]) -> dict[str, int | str]:
    """Per block: the position of the first node that runs its gate module (the gate itself, or a leaf module that
    holds it), or the reason there is none."""
    out: dict[str, int | str] = {}
    calls = [(i, str(n.target)) for i, n in enumerate(nodes) if n.op == "call_module"]
    for b in blocks:
        hits = [i for i, target in calls if b.gate_path == target or b.gate_path.startswith(target + ".")]
        out[b.name] = hits[0] if hits else f"the gate {b.gate_path} of {b.name} is not a module call of the graph"
    return out


_INPLACE_OPS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.iand, operator.ior}


def _mutates(user: fx.Node, gm: fx.GraphModule) -> bool:
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


class _Probe(fx.Interpreter):
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


class TailPlan:
    """Where ``model`` can be cut, for its SE ``blocks``; see the module docstring. Build with :func:`find_cuts`."""

    def __init__(self, gm: fx.GraphModule | None, nodes: list[fx.Node], cuts: dict[str, Cut | str],
                 reason: str | None = None, macs: int = 0) -> None:
        self._gm = gm
        self._nodes = nodes
        self._by_block = cuts  # block name -> latest cut before its gate, or why there is none
        self.reason = reason  # why no tail can be replayed at all (None: some can)
        self.macs = macs  # MACs of one image's forward
        self._modules: dict[tuple, nn.Module] = {}
        self._lock = threading.Lock()

    @property
    def cuts(self) -> tuple[Cut, ...]:
        """The distinct cuts (the latest before some SE gate), in network order."""
        found = {c.node: c for c in self._by_block.values() if isinstance(c, Cut)}
        return tuple(sorted(found.values(), key=lambda c: c.position))

    def cut_of(self, block: SEBlock) -> Cut | None:
        cut = self._by_block.get(block.name)
        return cut if isinstance(cut, Cut) else None

    def cut_before(self, blocks: Sequence[SEBlock]) -> Cut | None:
        """The latest cut before the first (in network order) gate of ``blocks``; None when there is none (see
        :meth:`why_not`) or ``blocks`` is empty."""
        if not blocks or self._gm is None:
            return None
        return self.cut_of(min(blocks, key=lambda b: b.order))

    def why_not(self, blocks: Sequence[SEBlock]) -> str:
        """Why :meth:`cut_before` is None for ``blocks`` (a plain sentence)."""
        if self.reason:
            return self.reason
        if not blocks:
            return "nothing is ablated"
        first = min(blocks, key=lambda b: b.order)
        why = self._by_block.get(first.name)
        return why if isinstance(why, str) else f"no cut before the gate of {first.name}"

    def note(self, blocks: Sequence[SEBlock]) -> str:
        """How a pass ablating ``blocks`` is computed: :meth:`Cut.describe` or ``full pass: <reason>``."""
        cut = self.cut_before(blocks)
        return cut.describe() if cut is not None else full_pass_note(self.why_not(blocks))

    def _position(self, cut: Cut) -> int:
        if self._gm is None or cut.position >= len(self._nodes) or self._nodes[cut.position].name != cut.node:
            raise ValueError(f"cut {cut.node} is not a cut of this plan")
        return cut.position

    def tapped(self, cuts: Sequence[Cut]) -> _Tapped:
        """The full network returning its logits and keeping, in ``.taps`` (in the order of ``cuts``), the
        activations at ``cuts`` (a new wrapper per call; the graph is built once per set of cuts)."""
        key = ("tapped", tuple(c.node for c in cuts))
        with self._lock:
            gm = self._modules.get(key)
            if gm is None:
                positions = {self._position(c): c for c in cuts}
                graph = fx.Graph()
                env: dict[fx.Node, fx.Node] = {}
                taps: dict[str, fx.Node] = {}
                for i, n in enumerate(self._nodes):
                    if n.op == "output":
                        out = fx.map_arg(n.args[0], lambda a: env[a])
                        graph.output((out, tuple(taps[c.node] for c in cuts)))
                        continue
                    env[n] = graph.node_copy(n, lambda a: env[a])
                    if i in positions:  # a copy before an in-place op of the network overwrites it
                        taps[n.name] = graph.call_method("clone", (env[n],)) if positions[i].mutated else env[n]
                gm = self._modules[key] = _module(self._gm, graph)
        return _Tapped(gm)

    def tail(self, cut: Cut) -> _Tail:
        """The network after ``cut``: its activation -> the network's output (built once per cut)."""
        key = ("tail", cut.node)
        with self._lock:
            gm = self._modules.get(key)
            if gm is None:
                pos = self._position(cut)
                graph = fx.Graph()
                env: dict[fx.Node, fx.Node] = {self._nodes[pos]: graph.placeholder("activation")}

                def copy(node: fx.Node) -> fx.Node:
                    # a constant computed before the cut is recomputed in the tail (parameters are get_attr)
                    if node not in env:
                        for a in node.all_input_nodes:
                            copy(a)
                        env[node] = graph.node_copy(node, lambda a: env[a])
                    return env[node]

                for n in self._nodes[pos + 1:]:
                    if n.op == "output":
                        graph.output(fx.map_arg(n.args[0], copy))
                    else:
                        copy(n)
                gm = self._modules[key] = _module(self._gm, graph)
        return _Tail(gm, cut.dtype, cut.mutated)


def _module(root: fx.GraphModule, graph: fx.Graph) -> fx.GraphModule:
    gm = fx.GraphModule(root, graph, class_name="Tail")
    gm.training = False  # the GraphModule object only: the shared submodules keep their own flag
    return gm


_plans: weakref.WeakKeyDictionary[nn.Module, dict[tuple, TailPlan]] = weakref.WeakKeyDictionary()
_plans_guard = threading.Lock()


def find_cuts(loaded) -> TailPlan:
    """The :class:`TailPlan` of ``loaded`` (a :class:`senet_viz.models.loaded.LoadedModel`), cached per model
    object, input size and blocks. Never raises for a network that cannot be cut: the plan's ``reason`` says why."""
    model: nn.Module = loaded.model
    key = (tuple(loaded.input_size), tuple(b.gate_path for b in loaded.blocks), str(loaded.device))
    with _plans_guard:
        plan = _plans.get(model, {}).get(key)
    if plan is not None:
        return plan
    with model_lock(model):  # one build per model; the probe forward must not be seen by another user's capture
        with _plans_guard:
            plan = _plans.get(model, {}).get(key)
        if plan is None:
            plan = _build(model, list(loaded.blocks), tuple(loaded.input_size), loaded.device)
            with _plans_guard:
                _plans.setdefault(model, {})[key] = plan
    return plan


def _build(model: nn.Module, blocks: list[SEBlock], input_size: tuple[int, ...], device: torch.device) -> TailPlan:
    from senet_viz.gates.fx import PerImage

    if isinstance(model, torch.jit.ScriptModule):
        return TailPlan(None, [], {}, "a TorchScript network cannot be traced by torch.fx")
    if isinstance(model, PerImage):
        return TailPlan(None, [], {}, "the network runs one image at a time (a graph exported for a batch of 1)")
    if not blocks:
        return TailPlan(None, [], {}, "the network has no SE block")
    gen = torch.Generator().manual_seed(0)
    # batch 2: a network that treats a single image apart (a squeeze, a per-image path) shows it
    x = torch.rand((2, *input_size), generator=gen).to(device)
    try:
        gm = _trace(model, blocks, x)
    except Exception as error:  # noqa: BLE001 - any tracing failure is a reason, not an error
        return TailPlan(None, [], {}, f"torch.fx cannot trace {type(model).__name__} ({type(error).__name__}: "
                                      f"{str(error).splitlines()[0][:200] if str(error) else ''})")
    gm.training = False
    nodes = list(gm.graph.nodes)
    gates = _gate_positions(nodes, blocks)
    missing = [why for why in gates.values() if isinstance(why, str)]
    if len(missing) == len(blocks):
        return TailPlan(None, [], {}, missing[0])
    probe = _Probe(gm)
    try:
        with torch.inference_mode():
            traced = probe.run(x)
            eager = model(x)
    except Exception as error:  # noqa: BLE001
        return TailPlan(None, [], {}, f"the traced graph does not run on a 2 x {input_size} input "
                                      f"({type(error).__name__}: {str(error)[:200]})")
    if not (isinstance(traced, torch.Tensor) and isinstance(eager, torch.Tensor)):
        return TailPlan(None, [], {}, "the network does not return one tensor")
    scale = float(eager.abs().max()) or 1.0
    if traced.shape != eager.shape or not torch.allclose(traced.float(), eager.float(), rtol=1e-4, atol=1e-5 * scale):
        return TailPlan(None, [], {}, "the traced graph does not reproduce the network's output")
    const = _constant_nodes(nodes)
    positions = _cut_positions(nodes, const)
    macs = [probe.macs.get(n.name, 0) for n in nodes]
    total = sum(macs)
    after = np.cumsum(macs[::-1])[::-1]  # after[i]: MACs of nodes i.. to the end
    by_block: dict[str, Cut | str] = {}
    for b in blocks:
        gate = gates[b.name]
        if isinstance(gate, str):
            by_block[b.name] = gate
            continue
        before = [p for p in positions if p < gate and nodes[p].name in probe.meta]
        if not before:
            by_block[b.name] = f"no single tensor carries the whole computation before the gate of {b.name}"
            continue
        p = before[-1]
        n = nodes[p]
        shape, dtype = probe.meta[n.name]
        tail_macs = int(after[p + 1]) if p + 1 < len(nodes) else 0
        where = str(n.target) if n.op == "call_module" else n.name
        by_block[b.name] = Cut(node=n.name, where=where, position=p, first_block=b.name, shape=tuple(shape[1:]),
                               dtype=dtype, tail_share=tail_macs / total if total else 1.0,
                               mutated=any(_mutates(u, gm) for u in n.users))
    # the same cut can be the latest before several gates: name it after the first of them
    first: dict[str, Cut] = {}
    for b in sorted(blocks, key=lambda b: b.order):
        c = by_block[b.name]
        if isinstance(c, Cut):
            by_block[b.name] = first.setdefault(c.node, c)
    return TailPlan(gm, nodes, by_block, None, int(total))


# ------------------------------------------------------------------------------------- activations kept per image


@dataclass
class KeptCuts:
    """Activations at ``cuts`` kept per image by a full pass (row i: image i of its :class:`Result`), read-only,
    in the dtype the network computed them in (bfloat16 stored as its 16-bit pattern)."""

    cuts: tuple[Cut, ...]
    arrays: dict[str, np.ndarray]  # cut node -> (N, *shape)
    dtypes: dict[str, str]  # cut node -> torch dtype name ("float32", "bfloat16", ...)
    note: str = ""  # which cuts were left out for the budget

    def cut(self, wanted: Cut | None) -> Cut | None:
        """``wanted`` if its activations are kept."""
        return wanted if wanted is not None and wanted.node in self.arrays else None

    def rows(self, node: str, rows: np.ndarray | slice) -> torch.Tensor:
        """The activations of images ``rows`` at cut ``node`` as a (new, writable) CPU tensor."""
        arr = np.array(self.arrays[node][rows])  # a copy: torch would warn on a read-only array
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if self.dtypes[node] == "bfloat16" else t

    def select(self, rows: np.ndarray) -> KeptCuts:
        """The activations of images ``rows`` only (read-only copies)."""
        arrays = {k: _read_only(np.ascontiguousarray(v[rows])) for k, v in self.arrays.items()}
        return KeptCuts(self.cuts, arrays, dict(self.dtypes), self.note)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def to_host(t: torch.Tensor) -> np.ndarray:
    """A device activation as a host array (bfloat16 as its bit pattern, see :class:`KeptCuts`)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.to("cpu").numpy()


@dataclass
class CutCollector:
    """Accumulates the activations at ``cuts`` batch by batch, for a :class:`KeptCuts`."""

    cuts: tuple[Cut, ...]
    note: str = ""
    chunks: dict[str, list[np.ndarray]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    def add(self, activations: Sequence[torch.Tensor]) -> None:
        for cut, a in zip(self.cuts, activations, strict=True):
            name = self.dtypes.setdefault(cut.node, str(a.dtype).removeprefix("torch."))
            if str(a.dtype).removeprefix("torch.") != name:  # a batch redone in fp32: one dtype per array
                a = a.to(getattr(torch, name))
            self.chunks.setdefault(cut.node, []).append(to_host(a))

    def result(self) -> KeptCuts | None:
        if not self.cuts:
            return None
        arrays = {}
        for c in self.cuts:
            chunks = self.chunks.get(c.node, [])
            arrays[c.node] = _read_only(np.concatenate(chunks) if chunks else np.zeros((0, *c.shape), np.float32))
            self.dtypes.setdefault(c.node, str(c.dtype).removeprefix("torch."))
        return KeptCuts(self.cuts, arrays, self.dtypes, self.note)


def cuts_to_keep(plan: TailPlan, blocks: Sequence[SEBlock], n_images: int, itemsize: int,
                 budget: int | None = None) -> tuple[tuple[Cut, ...], str]:
    """The cuts a full pass keeps for ``n_images`` images (``itemsize`` bytes per element) and why others are not:
    the cut before the last stage's first gate first, then those before its later gates while the activations
    fit in ``budget`` bytes (None: :func:`cuts_budget_bytes`). None at all when the first does not fit."""
    budget = cuts_budget_bytes() if budget is None else budget
    if not blocks or plan.reason:
        return (), plan.reason or "the network has no SE block"
    last = max(b.stage for b in blocks)
    wanted: list[Cut] = []
    for b in sorted((b for b in blocks if b.stage == last), key=lambda b: b.order):
        c = plan.cut_of(b)
        if c is not None and c not in wanted:
            wanted.append(c)
    if not wanted:
        return (), plan.why_not([min((b for b in blocks if b.stage == last), key=lambda b: b.order)])
    kept, used, left_out = [], 0, []
    for c in wanted:
        need = c.bytes_per_image(itemsize) * n_images
        if used + need <= budget:
            kept.append(c)
            used += need
        else:
            left_out.append(c)
    if not kept:
        need = wanted[0].bytes_per_image(itemsize) * n_images
        return (), (f"the activations of {n_images} images at {wanted[0].where} need {need / 2**20:.0f} MiB, over "
                    f"the {budget / 2**20:.0f} MiB budget for kept activations ({CUTS_MB_ENV})")
    note = f"{len(left_out)} later cut(s) not kept for the {budget / 2**20:.0f} MiB budget ({CUTS_MB_ENV})" \
        if left_out else ""
    return tuple(kept), note
