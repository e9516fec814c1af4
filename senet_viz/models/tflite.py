"""Import a (quantized) TFLite MobileNetV3 into timm's ``tf_mobilenetv3_*`` models.

The TFLite flatbuffer is parsed with the maintained ``tflite`` package. Every CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED operator, in execution order, is paired with the torch ``Conv2d`` / ``Linear`` modules in the
order a forward pass calls them; shapes and strides are checked pair by pair, so a file of another
architecture or width fails with a message that names both sides instead of loading garbage.

Per pair the importer

* dequantizes weights and biases, ``scale * (q - zero_point)``, per channel along ``quantized_dimension``
  where the file has one scale per channel (float32 / float16 tensors and DEQUANTIZE'd weights pass through);
* re-lays kernels out: TFLite conv OHWI -> torch OIHW, depthwise 1HW(C*M) -> torch (C*M)1HW, a 1x1
  conv used as classifier [O,1,1,I] -> Linear [O,I];
* folds batch norm: TFLite files from TOCO already carry BN inside the conv bias, so the torch BN that follows
  a conv becomes ``weight 1, bias b, running_mean 0, running_var 1 - eps`` (``var + eps == 1`` exactly),
  i.e. identity plus bias;
* drops the background logit (index 0) when the file has one class more than the model (1001 vs 1000).

Activations (ReLU, hard-swish, the SE hard-sigmoid) and padding are not weights: they come from the torch
architecture, which is why the target must be a ``tf_`` timm variant (TF 'SAME' padding). A model with
symmetric padding where the file pads 'SAME' with stride 2 still loads, with a warning.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tflite
import torch
from torch import nn

__all__ = ["TFLiteImportError", "load_tflite_state_dict"]


class TFLiteImportError(ValueError):
    """The file is not a usable TFLite model, or its layers do not match the target torch model."""


_OP_CONV = tflite.BuiltinOperator.CONV_2D
_OP_DEPTHWISE = tflite.BuiltinOperator.DEPTHWISE_CONV_2D
_OP_FC = tflite.BuiltinOperator.FULLY_CONNECTED
_OP_DEQUANTIZE = tflite.BuiltinOperator.DEQUANTIZE
_LAYER_OPS = {_OP_CONV: "CONV_2D", _OP_DEPTHWISE: "DEPTHWISE_CONV_2D", _OP_FC: "FULLY_CONNECTED"}

# TFLite is little-endian on disk.
_DTYPES = {
    tflite.TensorType.FLOAT32: np.dtype("<f4"),
    tflite.TensorType.FLOAT16: np.dtype("<f2"),
    tflite.TensorType.INT32: np.dtype("<i4"),
    tflite.TensorType.UINT8: np.dtype("u1"),
    tflite.TensorType.INT8: np.dtype("i1"),
    tflite.TensorType.INT16: np.dtype("<i2"),
    tflite.TensorType.INT64: np.dtype("<i8"),
}


@dataclass
class _TFLiteLayer:
    """One weight-bearing TFLite operator, weights already dequantized (float32, TFLite layout)."""

    op_index: int
    op_name: str  # CONV_2D | DEPTHWISE_CONV_2D | FULLY_CONNECTED
    output_name: str
    weight_name: str
    weight: np.ndarray  # conv: OHWI, depthwise: 1HW(C*M), fc: [O, I]
    bias: np.ndarray | None
    stride: tuple[int, int] | None
    dilation: tuple[int, int] | None
    same_padding: bool

    def describe(self) -> str:
        return (
            f"TFLite op #{self.op_index} {self.op_name} -> '{self.output_name}' "
            f"(weight tensor '{self.weight_name}' {list(self.weight.shape)})"
        )


@dataclass
class _TorchLayer:
    """One torch Conv2d/Linear in forward order, with the batch norm that consumes its output (if any)."""

    name: str
    module: nn.Module
    bn_name: str | None = None
    bn: nn.BatchNorm2d | None = None

    def describe(self) -> str:
        kind = type(self.module).__name__
        extra = f", groups={self.module.groups}" if isinstance(self.module, nn.Conv2d) else ""
        return f"torch module '{self.name}' ({kind}, weight {list(self.module.weight.shape)}{extra})"


# ---------------------------------------------------------------------------------------------------------
# TFLite side


def _read_model(path: Path) -> tuple[bytes, tflite.Model]:
    data = path.read_bytes()
    # A TFLite flatbuffer carries the file identifier "TFL3" at bytes 4..8; checking it first turns
    # "random bytes / a renamed text file" into a clear message instead of a flatbuffer IndexError.
    if len(data) < 8 or not tflite.Model.ModelBufferHasIdentifier(data, 0):
        head = data[:8]
        raise TFLiteImportError(
            f"{path} is not a TFLite model: a .tflite flatbuffer has the identifier b'TFL3' at bytes 4-8, "
            f"this file starts with {head!r} ({len(data)} bytes). Pass a model exported by the TFLite "
            "converter (e.g. mobilenet_v3_small_224_1.0_uint8.tflite), not a renamed or truncated file."
        )
    return data, tflite.Model.GetRootAsModel(data, 0)


def _opcode(model: tflite.Model, op: tflite.Operator) -> int:
    code = model.OperatorCodes(op.OpcodeIndex())
    # Old files store the code only in the int8 `deprecated_builtin_code`, new ones in `builtin_code`.
    return max(code.BuiltinCode(), code.DeprecatedBuiltinCode())


def _tensor_array(data: bytes, model: tflite.Model, graph: tflite.SubGraph, index: int,
                  producers: dict[int, tflite.Operator]) -> np.ndarray:
    """The constant tensor ``index`` as float32, dequantized, in TFLite layout."""
    tensor = graph.Tensors(index)
    name = tensor.Name().decode("utf-8", "replace")
    buffer = model.Buffers(tensor.Buffer())
    if buffer.Offset() > 1:  # >2 GB files keep tensor data after the flatbuffer
        raw = data[buffer.Offset(): buffer.Offset() + buffer.Size()]
    elif buffer.DataLength() > 0:
        raw = buffer.DataAsNumpy().tobytes()
    else:
        producer = producers.get(index)
        if producer is not None and _opcode(model, producer) == _OP_DEQUANTIZE:
            # float16 / dynamic-range files: weights are constants fed through a DEQUANTIZE op.
            return _tensor_array(data, model, graph, int(producer.Inputs(0)), producers)
        raise TFLiteImportError(
            f"tensor '{name}' should hold constant weights but has no data in the file; "
            "only models with constant (frozen) weights can be imported."
        )
    dtype = _DTYPES.get(tensor.Type())
    if dtype is None:
        raise TFLiteImportError(f"tensor '{name}' has unsupported TFLite type {tensor.Type()}.")
    shape = [int(s) for s in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    values = np.frombuffer(raw, dtype=dtype)
    if values.size != int(np.prod(shape)):
        raise TFLiteImportError(
            f"tensor '{name}' has {values.size} values for shape {shape}: the file is corrupt or truncated."
        )
    values = values.reshape(shape)
    if dtype.kind == "f":
        return values.astype(np.float32)

    quant = tensor.Quantization()
    if quant is None or quant.ScaleLength() == 0:
        raise TFLiteImportError(
            f"tensor '{name}' is {dtype.name} without quantization scales; cannot turn it into float weights."
        )
    scale = quant.ScaleAsNumpy().astype(np.float64)
    zero_point = (quant.ZeroPointAsNumpy().astype(np.float64) if quant.ZeroPointLength()
                  else np.zeros_like(scale))
    if scale.size > 1:  # per-channel: one (scale, zero point) per slice along quantized_dimension
        axis = quant.QuantizedDimension()
        if axis >= values.ndim or values.shape[axis] != scale.size:
            raise TFLiteImportError(
                f"tensor '{name}' {shape} has {scale.size} per-channel scales along dimension {axis}; "
                "the file is inconsistent."
            )
        bshape = [1] * values.ndim
        bshape[axis] = scale.size
        scale, zero_point = scale.reshape(bshape), zero_point.reshape(bshape)
    return (scale * (values.astype(np.float64) - zero_point)).astype(np.float32)


def _tflite_layers(data: bytes, model: tflite.Model) -> list[_TFLiteLayer]:
    """Weight-bearing operators of subgraph 0, in execution order (the order of the operator list)."""
    if model.SubgraphsLength() < 1:
        raise TFLiteImportError("the TFLite file has no subgraph: nothing to import.")
    graph = model.Subgraphs(0)
    producers: dict[int, tflite.Operator] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for out in op.OutputsAsNumpy():
            producers[int(out)] = op

    layers = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = _opcode(model, op)
        if code not in _LAYER_OPS:
            continue
        inputs = [int(t) for t in op.InputsAsNumpy()]
        weight_index = inputs[1]
        bias_index = inputs[2] if len(inputs) > 2 and inputs[2] >= 0 else None
        stride = dilation = None
        same_padding = False
        options = op.BuiltinOptions()
        if code in (_OP_CONV, _OP_DEPTHWISE) and options is not None:
            opts = tflite.Conv2DOptions() if code == _OP_CONV else tflite.DepthwiseConv2DOptions()
            opts.Init(options.Bytes, options.Pos)
            stride = (opts.StrideH(), opts.StrideW())
            dilation = (opts.DilationHFactor(), opts.DilationWFactor())
            same_padding = opts.Padding() == tflite.Padding.SAME
        layers.append(_TFLiteLayer(
            op_index=i,
            op_name=_LAYER_OPS[code],
            output_name=graph.Tensors(int(op.Outputs(0))).Name().decode("utf-8", "replace"),
            weight_name=graph.Tensors(weight_index).Name().decode("utf-8", "replace"),
            weight=_tensor_array(data, model, graph, weight_index, producers),
            bias=None if bias_index is None else _tensor_array(data, model, graph, bias_index, producers),
            stride=stride,
            dilation=dilation,
            same_padding=same_padding,
        ))
    if not layers:
        raise TFLiteImportError("the TFLite file has no CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED ops.")
    return layers


# ---------------------------------------------------------------------------------------------------------
# torch side


def _torch_layers(model: nn.Module) -> list[_TorchLayer]:
    """Conv2d/Linear modules in the order one forward pass calls them, each with the BN fed by its output.

    Forward order (not registration order) is what matches TFLite's execution order. A BN is paired with a
    conv only when the BN's input *is* the conv's output tensor, so no naming convention is assumed.
    The model's hooks and ``training`` flag are restored afterwards.
    """
    names = {m: n for n, m in model.named_modules()}
    layers: list[_TorchLayer] = []
    by_output: dict[int, _TorchLayer] = {}
    keep_alive: list[torch.Tensor] = []  # keeps ids in by_output unique during the trace

    def on_layer(module, _inputs, output):
        layer = _TorchLayer(names[module], module)
        layers.append(layer)
        by_output[id(output)] = layer
        keep_alive.append(output)

    def on_bn(module, inputs):
        layer = by_output.get(id(inputs[0]))
        if layer is not None and layer.bn is None:
            layer.bn_name, layer.bn = names[module], module

    handles = []
    training = {m: m.training for m in model.modules()}  # per module: a frozen BN may sit in a training net
    try:
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                handles.append(module.register_forward_hook(on_layer))
            elif isinstance(module, nn.BatchNorm2d):
                handles.append(module.register_forward_pre_hook(on_bn))
        param = next(model.parameters())
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = tuple(cfg.get("input_size", (3, 224, 224)))
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *size), dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
    return layers


# ---------------------------------------------------------------------------------------------------------
# matching and conversion


def _mismatch(tfl: _TFLiteLayer, layer: _TorchLayer, why: str) -> TFLiteImportError:
    return TFLiteImportError(
        f"layer mismatch: {tfl.describe()} cannot load into {layer.describe()}: {why}. The file and the "
        "model are different architectures or widths; create the timm model the file was exported from "
        "(e.g. tf_mobilenetv3_small_100 for mobilenet_v3_small_224_1.0)."
    )


def _convert_pair(tfl: _TFLiteLayer, layer: _TorchLayer, is_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """torch-layout (weight, bias) for one matched pair; raises on any shape disagreement."""
    module = layer.module
    target = tuple(module.weight.shape)
    w = tfl.weight
    if isinstance(module, nn.Linear):
        if tfl.op_name == "CONV_2D" and w.ndim == 4 and w.shape[1:3] == (1, 1):
            w = w.reshape(w.shape[0], w.shape[3])  # classifier exported as a 1x1 conv on a 1x1 map
        elif tfl.op_name != "FULLY_CONNECTED" or w.ndim != 2:
            raise _mismatch(tfl, layer, "a Linear needs a FULLY_CONNECTED op or a 1x1 CONV_2D")
    elif module.groups == 1:
        if tfl.op_name != "CONV_2D" or w.ndim != 4:
            raise _mismatch(tfl, layer, "a dense Conv2d (groups=1) needs a CONV_2D op")
        w = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
    elif module.groups == module.in_channels:
        if tfl.op_name != "DEPTHWISE_CONV_2D" or w.ndim != 4 or w.shape[0] != 1:
            raise _mismatch(tfl, layer, "a depthwise Conv2d needs a DEPTHWISE_CONV_2D op")
        # 1 x H x W x (C*M) -> (C*M) x 1 x H x W; TFLite's channel c*M+m and torch's output o=c*M+m both
        # read input channel c, so no reordering of the channel axis is needed.
        w = w.transpose(3, 0, 1, 2)
    else:
        raise _mismatch(tfl, layer, f"grouped convolutions (groups={module.groups}) are not supported")

    bias = tfl.bias if tfl.bias is not None else np.zeros(w.shape[0], np.float32)
    if is_last and w.shape[0] == target[0] + 1 and w.shape[1:] == target[1:]:
        # TF-slim ImageNet classifiers have 1001 outputs, index 0 = "background".
        w, bias = w[1:], bias[1:]
    if tuple(w.shape) != target:
        raise _mismatch(tfl, layer, f"converted weight has shape {list(w.shape)}, expected {list(target)}")
    if bias.shape != (target[0],):
        raise _mismatch(tfl, layer, f"bias has shape {list(bias.shape)}, expected [{target[0]}]")
    if isinstance(module, nn.Conv2d) and tfl.stride is not None:
        if tuple(module.stride) != tfl.stride:
            raise _mismatch(tfl, layer, f"stride {tfl.stride} in the file, {tuple(module.stride)} in torch")
        if tfl.dilation is not None and tuple(module.dilation) != tfl.dilation:
            raise _mismatch(
                tfl, layer, f"dilation {tfl.dilation} in the file, {tuple(module.dilation)} in torch"
            )
        kernel_padded = any(k > 1 for k in module.kernel_size)
        torch_same = module.padding == "same" or type(module).__name__ == "Conv2dSame"
        if tfl.same_padding and kernel_padded and max(tfl.stride) > 1 and not torch_same:
            warnings.warn(
                f"{layer.name}: the file pads 'SAME' (asymmetric for stride 2) but the torch conv pads "
                "symmetrically; outputs will differ slightly. Use the timm 'tf_' model variant.",
                stacklevel=4,
            )
    return w, bias


def load_tflite_state_dict(path: str | Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Convert a TFLite MobileNetV3 file into a state dict for ``model``.

    Args:
        path: the ``.tflite`` file (float or uint8/int8 quantized, per-tensor or per-channel).
        model: the target architecture, e.g. ``timm.create_model('tf_mobilenetv3_small_100',
            num_classes=1000)``. It is traced once with a zero input to find the forward order of its
            layers; it is not modified (hooks removed, ``training`` flag restored).

    Returns:
        A float32 state dict with every key of ``model.state_dict()``, loadable with
        ``model.load_state_dict(sd, strict=True)``.

    Raises:
        TFLiteImportError: the file is not a TFLite model, is corrupt, or its layers (count, kind, shapes,
            strides) do not match the model's; the message names the mismatching tensor and module.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    data, tfl_model = _read_model(path)
    try:
        tfl_layers = _tflite_layers(data, tfl_model)
    except TFLiteImportError:
        raise
    except (IndexError, struct.error, ValueError, TypeError, UnicodeError) as exc:
        # Valid identifier but broken tables: the flatbuffer reader runs off the end of the buffer.
        raise TFLiteImportError(
            f"{path} has a TFLite header but could not be parsed ({type(exc).__name__}: {exc}); "
            "the file is corrupt or truncated. Re-download or re-export it."
        ) from exc

    torch_layers = _torch_layers(model)
    same_count = len(tfl_layers) == len(torch_layers)
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    # Pair by pair first: a wrong width or kind fails on the exact tensor, before the count check.
    for k, (tfl, layer) in enumerate(zip(tfl_layers, torch_layers, strict=False)):
        w, bias = _convert_pair(tfl, layer, is_last=same_count and k == len(tfl_layers) - 1)
        out[f"{layer.name}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        bias_t = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
        has_bias = getattr(layer.module, "bias", None) is not None
        if layer.bn is not None:
            prefix, n = layer.bn_name, bias_t.numel()
            if has_bias:  # conv bias and BN both present: the bias goes to the conv, BN is pure identity
                out[f"{layer.name}.bias"] = bias_t
                bias_t = torch.zeros_like(bias_t)
            # The file's bias already contains the folded BN; make the torch BN exactly identity + bias.
            out[f"{prefix}.weight"] = torch.ones(n)
            out[f"{prefix}.bias"] = bias_t
            out[f"{prefix}.running_mean"] = torch.zeros(n)
            out[f"{prefix}.running_var"] = torch.full((n,), 1.0 - layer.bn.eps)
            if f"{prefix}.num_batches_tracked" in state:
                out[f"{prefix}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
        elif has_bias:
            out[f"{layer.name}.bias"] = bias_t
        elif tfl.bias is not None and np.any(tfl.bias != 0):
            raise _mismatch(tfl, layer, "the file has a bias but the torch layer has neither bias nor BN")
    if not same_count:
        n = min(len(tfl_layers), len(torch_layers))
        extra = tfl_layers[n].describe() if len(tfl_layers) > n else torch_layers[n].describe()
        raise TFLiteImportError(
            f"layer count mismatch: the file has {len(tfl_layers)} conv/depthwise/fully-connected ops, the "
            f"model {len(torch_layers)} Conv2d/Linear modules; the first unmatched one is {extra}. "
            "Use the timm model the file was exported from (e.g. tf_mobilenetv3_small_100)."
        )

    missing = [key for key in state if key not in out]
    if missing:
        raise TFLiteImportError(
            f"the TFLite file provides no values for {len(missing)} model entries, e.g. {missing[:5]}; "
            "the model has parameters or buffers outside its conv/linear/batch-norm layers."
        )
    for key, value in out.items():
        if key not in state or tuple(state[key].shape) != tuple(value.shape):
            raise TFLiteImportError(f"internal shape check failed for '{key}': {list(value.shape)}")
    return {key: out[key] for key in state}


def runtime_crop(path: str | Path, size: int = 224, resize: int = 256) -> np.ndarray:
    """The preprocessing the TFLite runtime is scored with (shared README): shorter side to ``resize``
    (bilinear), center crop ``size``, uint8 HWC. Used by the oracle test and benchmark."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
