"""Parameters and multiply-accumulates (MACs) per SE block and stage, with and without chosen SE blocks.

MACs are counted by torch's own ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of a single
image (convolutions and matrix products; FLOPs = 2 x MACs). Element-wise work (the sigmoid, the pooling, the
channel-wise multiply) is not counted, as in the SENet paper's GFLOPs. An SE block that is removed
(gate = 1) or frozen to a constant saves its own parameters and MACs: its two bottleneck layers are no longer
needed. A constant per-channel gate folds into an existing layer: in SE-ResNets into the batch norm that precedes
the SE scale on the residual branch (the BN after the branch's last conv: scale its weight and bias), in
MobileNet / EfficientNet blocks, where the SE sits before the 1x1 projection conv, into that conv's input weights.

Every gate kind of :mod:`senet_viz.gates.blocks` is costed the same way: an SE / ESE / ECA / gather-excite /
global-context module's parameters and MACs are those of its module path; a gate found in a traced graph
(``kind == "fx"``: ONNX, TorchScript, ``.pt2``, inline SE) has no module of its own, so its parameters are those of
the weights its gate branch reads and its MACs those of the graph nodes of the branch (pooling to sigmoid),
counted node by node. :meth:`CostReport.kinds` sums them per gate kind.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.module_tracker import ModuleTracker

from senet_viz.gates.capture import model_lock
from senet_viz.gates.kinds import SEBlock


class Savings:
    """What is left once SE blocks are removed: for a class with ``params``, ``macs`` and their ``*_removed``."""

    params: int
    params_removed: int
    macs: int
    macs_removed: int

    @property
    def params_after(self) -> int:
        return self.params - self.params_removed

    @property
    def macs_after(self) -> int:
        return self.macs - self.macs_removed


@dataclass
class CostReport(Savings):
    model: str
    input_size: tuple[int, int, int]
    params: int  # whole network
    macs: int  # whole network, one image
    se_params: int  # all SE blocks
    se_macs: int
    removed: list[str]  # names of the SE blocks taken out
    params_removed: int
    macs_removed: int
    blocks: pd.DataFrame  # one row per SE block: name, stage, path, channels, params, macs, removed

    def stages(self) -> pd.DataFrame:
        """SE parameters and MACs summed per stage, with their share of the whole network."""
        grouped = self.blocks.groupby("stage").agg(
            blocks=("name", "count"), channels=("channels", "sum"), params=("params", "sum"),
            macs=("macs", "sum"), removed=("removed", "sum")).reset_index()
        grouped["params_share"] = grouped["params"] / self.params
        grouped["macs_share"] = grouped["macs"] / self.macs
        return grouped

    def kinds(self) -> pd.DataFrame:
        """Blocks, parameters and MACs per gate kind ("se", "ese", "eca", ...), with their share of the network."""
        grouped = self.blocks.groupby("gate_kind").agg(
            blocks=("name", "count"), params=("params", "sum"), macs=("macs", "sum"),
            removed=("removed", "sum")).reset_index()
        grouped["params_share"] = grouped["params"] / self.params
        grouped["macs_share"] = grouped["macs"] / self.macs
        return grouped

    def summary(self) -> dict:
        """Plain JSON-ready numbers (GMACs and millions of parameters rounded for reading, counts exact)."""
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "params": self.params,
            "gmacs": round(self.macs / 1e9, 4),
            "se_params": self.se_params,
            "se_gmacs": round(self.se_macs / 1e9, 6),
            "se_params_share": self.se_params / self.params,
            "removed": self.removed,
            "params_removed": self.params_removed,
            "params_after": self.params_after,
            "params_removed_share": self.params_removed / self.params,
            "gmacs_removed": round(self.macs_removed / 1e9, 6),
            "gmacs_after": round(self.macs_after / 1e9, 4),
        }

    def to_dict(self) -> dict:
        out = self.summary()
        out["blocks"] = self.blocks.to_dict(orient="records")
        out["stages"] = self.stages().to_dict(orient="records")
        out["kinds"] = self.kinds().to_dict(orient="records")
        return out


class _ThisThreadModuleTracker(ModuleTracker):
    """torch's ModuleTracker sees the forward of every module in every thread (it registers *global* module
    hooks), so while one thread counts, another user's forward on any model would shift the per-module
    attribution. The FLOP-counting dispatch mode itself is thread-local; this tracker follows only the modules
    entered by the thread that counts."""

    def __enter__(self):
        self._owner = threading.get_ident()
        return super().__enter__()

    def _fw_pre_hook(self, mod, input) -> None:
        if threading.get_ident() == self._owner:
            super()._fw_pre_hook(mod, input)

    def _fw_post_hook(self, mod, input, output) -> None:
        if threading.get_ident() == self._owner:
            super()._fw_post_hook(mod, input, output)


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, dict[str, int]]:
    """Total MACs of one forward pass and MACs per module path ("" is the whole network).

    The forward runs under the model's lock: on a shared model, another user's capture() would otherwise
    record this pass's gates as an extra image. Safe while other threads run other networks (see
    :class:`_ThisThreadModuleTracker`)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = FlopCounterMode(display=False, depth=None)
    counter.mod_tracker = _ThisThreadModuleTracker()
    with model_lock(model):
        was_training = model.training
        model.eval()
        try:
            with counter, torch.no_grad():
                model(torch.zeros((1, *input_size), device=device))
        finally:
            model.train(was_training)
    per_module: dict[str, int] = {}
    for key, by_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        # Keys are "<RootClass>.<module path>"; the root alone is the whole network.
        path = key.partition(".")[2]
        per_module[path] = sum(by_op.values()) // 2
    return counter.get_total_flops() // 2, per_module


def count_node_macs(model: nn.Module, input_size: tuple[int, int, int], nodes: set[str]) -> dict[str, int]:
    """MACs of the named graph nodes (a traced graph's gate branches) in one forward pass of a single image,
    counted per node by running the graph node by node. ``model`` is a GraphModule, or a module holding one as
    ``net`` (:class:`senet_viz.gates.fx.PerImage`)."""
    gm = model if isinstance(model, torch.fx.GraphModule) else getattr(model, "net", None)
    if not isinstance(gm, torch.fx.GraphModule) or not nodes:
        return {}
    counts: dict[str, int] = {}

    class _Counter(torch.fx.Interpreter):
        def run_node(self, n):
            if n.name not in nodes:
                return super().run_node(n)
            counter = FlopCounterMode(display=False, depth=None)
            with counter:
                out = super().run_node(n)
            counts[n.name] = counter.get_total_flops() // 2
            return out

    device = next((t.device for t in [*gm.parameters(), *gm.buffers()]), torch.device("cpu"))
    with model_lock(model), torch.no_grad():
        _Counter(gm).run(torch.zeros((1, *input_size), device=device))
    return counts


def model_cost(model: nn.Module, blocks: Sequence[SEBlock], removed: Sequence[SEBlock] = (),
               input_size: tuple[int, int, int] = (3, 224, 224), name: str = "") -> CostReport:
    """Cost of ``model`` and what removing ``removed`` (a subset of ``blocks``) saves."""
    total_macs, per_module = count_macs(model, input_size)
    per_node = count_node_macs(model, input_size, {n for b in blocks for n in b.branch})
    removed_names = {b.name for b in removed}
    rows = [{**{k: v for k, v in asdict(b).items() if k in ("name", "stage", "index", "path", "channels", "params")},
             "macs": sum(per_node.get(n, 0) for n in b.branch) if b.branch else per_module.get(b.path, 0),
             "removed": b.name in removed_names, "gate_kind": b.gate_kind} for b in blocks]
    table = pd.DataFrame(rows, columns=["name", "stage", "index", "path", "channels", "params", "macs", "removed",
                                        "gate_kind"])
    gone = table[table["removed"].astype(bool)]  # astype: with no block, an empty object column would select columns
    return CostReport(
        model=name or type(model).__name__,
        input_size=tuple(input_size),
        params=sum(p.numel() for p in model.parameters()),
        macs=int(total_macs),
        se_params=int(table["params"].sum()),
        se_macs=int(table["macs"].sum()),
        removed=[b.name for b in blocks if b.name in removed_names],
        params_removed=int(gone["params"].sum()),
        macs_removed=int(gone["macs"].sum()),
        blocks=table,
    )
