"""Make ONNX files that current torch exports convertible by onnx2torch 1.5.15 (issue 22, part 3).

Two things break the conversion of ordinary exports:

- **Shared initializers.** The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) deduplicates equal
  initializers, with or without constant folding: the second name becomes ``Identity(first)``. onnx2torch reads a
  Conv's or a BatchNorm's weights from the initializer table by name, finds an Identity's output there instead, and
  fails with ``KeyError: 'onnx::Conv_403'`` (or ``'blocks.0.0.se.conv_expand.bias'``). :func:`fold_identities` lets
  every consumer read the initializer itself and drops the Identity.
- **New opsets.** onnx2torch knows no converter for opset 18's ``ReduceMean`` (axes became an input; the dynamo
  exporter's default opset is 18), ``Pad`` and ``Split``, nor for the 19 / 21 versions of ``Identity``,
  ``Constant``, ``Cast``, ``Reshape``, ``Shape``, whose only change is new element types, nor ``CastLike`` (the
  dynamo exporter's). :func:`register_converters` adds those (pure Python, once per process); a graph that still
  holds an operator onnx2torch lacks at its opset is converted down to opset 17 by onnx's own version converter
  (``onnx.version_converter``), used only if that leaves nothing unconvertible. The dynamo exporter's
  ``Reshape(allowzero=1)`` with a constant shape without 0 becomes ``allowzero=0`` (:func:`clear_allowzero`).

:func:`normalise` does both and says what it did; it changes a copy only where needed, so a file onnx2torch already
converted is converted exactly as before. Nothing here runs code from the file: it is a graph rewrite.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: The highest default-domain opset onnx2torch 1.5.15 converts for every operator it knows.
ONNX2TORCH_OPSET = 17

# Operators whose newer versions only admit new element types (float8, int4, bfloat16 ...): the newest converter
# onnx2torch has is right for them. (operator, newer version, the registered version that handles it)
_TYPE_ONLY = (("Identity", 19, 16), ("Identity", 21, 16), ("Constant", 19, 13), ("Constant", 21, 13),
              ("Cast", 19, 13), ("Cast", 21, 13), ("Reshape", 19, 14), ("Reshape", 21, 14), ("Shape", 19, 15),
              ("Shape", 21, 15), ("Flatten", 21, 13), ("Transpose", 21, 13), ("Unsqueeze", 21, 13),
              ("Equal", 19, 13))
# Reduce operators whose axes moved from an attribute to an optional input at opset 18 (ReduceSum did at 13, which
# onnx2torch handles); ReduceMax / ReduceMin 20 only add bool.
_REDUCE_18 = (("ReduceMean", 18), ("ReduceMax", 18), ("ReduceMax", 20), ("ReduceMin", 18), ("ReduceMin", 20),
              ("ReduceProd", 18), ("ReduceL1", 18), ("ReduceL2", 18), ("ReduceLogSum", 18), ("ReduceLogSumExp", 18),
              ("ReduceSumSquare", 18))
_registered = False


def _alias_map(graph: Any) -> dict[str, str]:
    """Identity outputs that alias an initializer (directly or through a chain of Identities) -> that initializer;
    graph outputs are left alone (an Identity producing an output must stay)."""
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    for node in graph.node:  # nodes are topologically sorted: a chain resolves in one pass
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.input) != 1:
            continue
        source = alias.get(node.input[0], node.input[0])
        if source in inits and node.output[0] not in outputs:
            alias[node.output[0]] = source
    return alias


def _rename_inputs(graph: Any, alias: dict[str, str]) -> None:
    """Every node input named in ``alias`` reads its target instead, also in subgraphs (If / Loop bodies read
    outer-scope names)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
        for attr in node.attribute:
            if attr.HasField("g"):
                _rename_inputs(attr.g, alias)
            for sub in attr.graphs:
                _rename_inputs(sub, alias)


def fold_identities(proto: Any) -> int:
    """Drop the top graph's ``Identity`` nodes whose input is an initializer, their consumers reading the initializer
    (in place); returns how many were dropped."""
    graph = proto.graph
    alias = _alias_map(graph)
    if not alias:
        return 0
    _rename_inputs(graph, alias)
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias)]
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)


def _constant_values(graph: Any) -> dict[str, Any]:
    """Initializers and ``Constant`` node outputs of the top graph, by name (their protos, not decoded)."""
    values: dict[str, Any] = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = value
    return values


def clear_allowzero(proto: Any) -> int:
    """``Reshape(allowzero=1)`` (the dynamo exporter's) whose shape is a constant with no 0 means the same as
    ``allowzero=0``, which onnx2torch converts (it refuses 1): set it so, in place; returns how many."""
    from onnx import numpy_helper

    constants = _constant_values(proto.graph)
    count = 0
    for node in proto.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        flag = next((a for a in node.attribute if a.name == "allowzero"), None)
        shape = constants[node.input[1]]
        if flag is None or flag.i == 0 or shape.data_location != 0:  # external data: not read here
            continue
        if 0 not in numpy_helper.to_array(shape).reshape(-1).tolist():
            flag.i = 0
            count += 1
    return count


class CastLike(nn.Module):
    """ONNX ``CastLike(x, like)``: ``x`` in ``like``'s element type."""

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)


def _cast_like(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    del graph
    return OperationConverterResult(CastLike(), onnx_mapping_from_node(node))


class ReduceAxesInput(nn.Module):
    """A Reduce* of opset 18+ whose axes input is not a constant: reduce over the axes it gets at run time."""

    def __init__(self, operation_type: str, keepdims: int = 1, noop_with_empty_axes: int = 0) -> None:
        super().__init__()
        from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes

        self.operation_type, self.keepdims, self.noop = operation_type, keepdims, noop_with_empty_axes
        self._static = OnnxReduceStaticAxes  # built per call: its axes come with the input

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        listed = [] if axes is None else [int(a) for a in axes.reshape(-1).tolist()]
        if not listed and self.noop:
            return x
        return self._static(self.operation_type, [a % x.dim() for a in listed] or None, self.keepdims)(x)


def _reduce_18(node: Any, graph: Any) -> Any:
    """onnx2torch converter of a Reduce* with axes as its optional second input (opset 18+)."""
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    keepdims = node.attributes.get("keepdims", 1)
    noop = node.attributes.get("noop_with_empty_axes", 0)
    inputs = [v for v in node.input_values if v]
    data, outputs = inputs[0], node.output_values
    if len(inputs) == 1:  # no axes: every axis, or nothing with noop_with_empty_axes
        module = nn.Identity() if noop else OnnxReduceStaticAxes(node.operation_type, None, keepdims)
        return OperationConverterResult(module, OnnxMapping(inputs=(data,), outputs=outputs))
    try:
        axes = get_const_value(inputs[1], graph)
    except KeyError:
        return OperationConverterResult(ReduceAxesInput(node.operation_type, keepdims, noop),
                                        OnnxMapping(inputs=(data, inputs[1]), outputs=outputs))
    listed = [int(a) for a in (axes.reshape(-1).tolist() if isinstance(axes, torch.Tensor) else list(axes))]
    if not listed and noop:
        return OperationConverterResult(nn.Identity(), OnnxMapping(inputs=(data,), outputs=outputs))
    return OperationConverterResult(OnnxReduceStaticAxes(node.operation_type, listed or None, keepdims),
                                    OnnxMapping(inputs=(data,), outputs=outputs))


class SplitOutputs(nn.Module):
    """ONNX ``Split`` of opset 18+: by the ``split`` input's sizes, else into ``num_outputs`` chunks of
    ceil(length / num_outputs) (the last one smaller when the length does not divide)."""

    def __init__(self, axis: int, num_outputs: int) -> None:
        super().__init__()
        self.axis, self.num_outputs = axis, num_outputs

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if split is not None:
            return torch.split(x, split.tolist(), dim=self.axis)
        return torch.split(x, -(-x.shape[self.axis] // self.num_outputs), dim=self.axis)


def _split_18(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    del graph
    inputs = tuple(v for v in node.input_values if v)
    module = SplitOutputs(node.attributes.get("axis", 0), len(node.output_values))
    return OperationConverterResult(module, OnnxMapping(inputs=inputs, outputs=node.output_values))


def _pad_18(node: Any, graph: Any) -> Any:
    """``Pad`` of opset 18+ without its new ``axes`` input or ``wrap`` mode is opset 13's ``Pad``."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    if len([v for v in node.input_values if v]) > 3 or node.attributes.get("mode", "constant") == "wrap":
        raise NotImplementedError("Pad with an axes input or mode 'wrap' (opset 18 / 19) is not implemented")
    return _CONVERTER_REGISTRY[OperationDescription("", "Pad", 13)](node, graph)


def register_converters() -> None:
    """Add the converters of :data:`_REDUCE_18`, :data:`_TYPE_ONLY`, ``CastLike``, ``Pad`` 18+ (without axes or
    wrap) and ``Split`` 18 to onnx2torch's registry (once; versions it already knows are left as they are)."""
    global _registered
    if _registered:
        return
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    for op, version in _REDUCE_18:
        _CONVERTER_REGISTRY.setdefault(OperationDescription("", op, version), _reduce_18)
    for version in (15, 19, 21):
        _CONVERTER_REGISTRY.setdefault(OperationDescription("", "CastLike", version), _cast_like)
    for version in (18, 19, 21):
        _CONVERTER_REGISTRY.setdefault(OperationDescription("", "Pad", version), _pad_18)
    _CONVERTER_REGISTRY.setdefault(OperationDescription("", "Split", 18), _split_18)
    for op, version, existing in _TYPE_ONLY:
        known = _CONVERTER_REGISTRY.get(OperationDescription("", op, existing))
        if known is not None:
            _CONVERTER_REGISTRY.setdefault(OperationDescription("", op, version), known)
    _registered = True


def default_opset(proto: Any) -> int:
    """The model's default-domain (``ai.onnx``) opset, 1 when it names none."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def unconvertible(proto: Any) -> list[str]:
    """``op_type-version`` of the top graph's operators onnx2torch has no converter for at the model's opsets."""
    from onnx import defs
    from onnx2torch.node_converters.registry import get_converter

    versions = {o.domain or "": o.version for o in proto.opset_import}
    missing: dict[str, None] = {}
    for node in proto.graph.node:
        version = versions.get(node.domain or "", 1)
        try:
            get_converter(operation_type=node.op_type, version=version, domain=node.domain or "")
        except NotImplementedError:
            try:  # the operator's own version (the one its semantics are defined at), as onnx2torch names it
                version = defs.get_schema(node.op_type, max_inclusive_version=version,
                                          domain=node.domain or "").since_version
            except (RuntimeError, defs.SchemaError):
                pass
            missing[f"{node.op_type}-{version}"] = None
    return list(missing)


def normalise(proto: Any) -> tuple[Any, list[str]]:
    """``proto`` ready for onnx2torch, and notes on what was changed (empty: nothing). Identity aliases of initializers
    are folded (in place); when an operator is left that onnx2torch lacks at the model's opset (above
    :data:`ONNX2TORCH_OPSET`), the model is converted down to that opset with ``onnx.version_converter``, which is kept
    only if it leaves nothing unconvertible."""
    register_converters()
    notes = []
    folded = fold_identities(proto)
    if folded:
        notes.append(f"{folded} Identity aliases of initializers folded (shared weights of torch.onnx.export)")
    cleared = clear_allowzero(proto)
    if cleared:
        notes.append(f"allowzero cleared on {cleared} Reshape nodes with constant shapes (no 0 in them)")
    opset = default_opset(proto)
    if opset > ONNX2TORCH_OPSET and unconvertible(proto):
        from onnx import version_converter

        try:
            converted = version_converter.convert_version(proto, ONNX2TORCH_OPSET)
        except Exception:  # noqa: BLE001 - no adapter for some node: onnx2torch then names what it lacks
            return proto, notes
        if not unconvertible(converted):
            notes.append(f"opset {opset} converted to {ONNX2TORCH_OPSET} by onnx.version_converter")
            return converted, notes
    return proto, notes
