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
it, and the public entry points take ``replay: bool | None`` (None: the environment's setting). The tracing and
the graph analysis live in :mod:`senet_viz.inference.tail_graph`.

The app's full pass keeps the activations at the last stage's cuts per image
(:mod:`senet_viz.inference.tail_kept`), bounded by ``SENET_VIZ_CUTS_MB`` (default a quarter of the result cache's
``SENET_VIZ_RESULTS_MB``, i.e. 512 MiB), so that the Remove page's toggle replays only the tail.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from senet_viz.gates.capture import model_lock
from senet_viz.gates.kinds import SEBlock
from senet_viz.inference.tail_graph import (
    Probe,
    constant_nodes,
    cut_positions,
    gate_positions,
    mutates,
    trace_network,
)

__all__ = ["REPLAY_ENV", "Cut", "TailPlan", "find_cuts", "full_pass_note", "replay_enabled"]

REPLAY_ENV = "SENET_VIZ_TAIL_REPLAY"


def replay_enabled(replay: bool | None = None) -> bool:
    """Whether passes replay tails: ``replay`` when given, else ``$SENET_VIZ_TAIL_REPLAY`` (default on; "0",
    "false", "no" or "off" turn it off)."""
    if replay is not None:
        return bool(replay)
    return os.environ.get(REPLAY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


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
        gm = trace_network(model, blocks, x)
    except Exception as error:  # noqa: BLE001 - any tracing failure is a reason, not an error
        return TailPlan(None, [], {}, f"torch.fx cannot trace {type(model).__name__} ({type(error).__name__}: "
                                      f"{str(error).splitlines()[0][:200] if str(error) else ''})")
    gm.training = False
    nodes = list(gm.graph.nodes)
    gates = gate_positions(nodes, blocks)
    missing = [why for why in gates.values() if isinstance(why, str)]
    if len(missing) == len(blocks):
        return TailPlan(None, [], {}, missing[0])
    probe = Probe(gm)
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
    const = constant_nodes(nodes)
    positions = cut_positions(nodes, const)
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
                               mutated=any(mutates(u, gm) for u in n.users))
    # the same cut can be the latest before several gates: name it after the first of them
    first: dict[str, Cut] = {}
    for b in sorted(blocks, key=lambda b: b.order):
        c = by_block[b.name]
        if isinstance(c, Cut):
            by_block[b.name] = first.setdefault(c.node, c)
    return TailPlan(gm, nodes, by_block, None, int(total))
