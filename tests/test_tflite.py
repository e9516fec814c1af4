"""Tests of the TFLite importer: real-file tests against the TFLite runtime, plus bad-input tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite
import timm
import torch
from conftest import requires
from PIL import Image
from torch import nn

from senet_viz.models.tflite import TFLiteImportError, load_tflite_state_dict, runtime_crop

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL_FILE = SHARED / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"
IMAGES = SHARED / "data" / "imagenet-samples"
GATE_SUFFIX = "squeeze_excite/Conv_1/mul"  # the SE hard-sigmoid output in the TFLite graph
N_IMAGES = 48

needs_shared = requires(MODEL_FILE.is_file() and IMAGES.is_dir(),
                        f"the shared model and ImageNet samples at {SHARED} (see ../shared/README.md)")


# ---------------------------------------------------------------------------------------------------------
# fixtures on the real file


@pytest.fixture(scope="module")
def converted() -> nn.Module:
    model = timm.create_model("tf_mobilenetv3_small_100", num_classes=1000)
    model.load_state_dict(load_tflite_state_dict(MODEL_FILE, model), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def samples() -> tuple[list[Path], np.ndarray]:
    """A fixed spread of N_IMAGES shared images (every k-th of the sorted list) and their class indices."""
    files = sorted(IMAGES.glob("*.JPEG"))
    files = files[:: len(files) // N_IMAGES][:N_IMAGES]
    info = timm.data.ImageNetInfo()
    wnid_to_index = {info.index_to_label_name(i): i for i in range(1000)}
    return files, np.array([wnid_to_index[f.name.split("_", 1)[0]] for f in files])


@pytest.fixture(scope="module")
def runtime(samples) -> dict[str, np.ndarray | list[np.ndarray]]:
    """The TFLite runtime (oracle) on the samples: uint8 crops, 1000-class scores, dequantized gates."""
    from ai_edge_litert.interpreter import Interpreter

    graph = tflite.Model.GetRootAsModel(MODEL_FILE.read_bytes(), 0).Subgraphs(0)
    outputs = [graph.Tensors(int(graph.Operators(i).Outputs(0))).Name().decode()
               for i in range(graph.OperatorsLength())]
    gate_names = [n for n in outputs if n.endswith(GATE_SUFFIX)]  # execution order

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": that is what we do here
        warnings.simplefilter("ignore", UserWarning)
        interp = Interpreter(model_path=str(MODEL_FILE), num_threads=1,
                             experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    details = {d["name"]: d for d in interp.get_tensor_details()}
    crops = np.stack([runtime_crop(f) for f in samples[0]])
    scores, gates = [], [[] for _ in gate_names]
    for crop in crops:
        interp.set_tensor(interp.get_input_details()[0]["index"], crop[None])
        interp.invoke()
        scores.append(interp.get_tensor(interp.get_output_details()[0]["index"])[0, 1:].astype(np.float32))
        for i, name in enumerate(gate_names):
            scale, zero_point = details[name]["quantization"]
            q = interp.get_tensor(details[name]["index"]).reshape(-1).astype(np.float32)
            gates[i].append(scale * (q - zero_point))
    return {"crops": crops, "scores": np.stack(scores), "gates": [np.stack(g) for g in gates],
            "gate_names": gate_names}


def _torch_gates(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the output of every ``blocks.i.j.se.gate`` (N x C), hooks removed afterwards."""
    gate_modules = [m for n, m in model.named_modules() if n.endswith(".se.gate")]
    captured: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for i, module in enumerate(gate_modules):
            def hook(_module, _inputs, output, i=i):
                captured[i] = output.detach().flatten(1)
            handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, [captured[i] for i in range(len(gate_modules))]


# ---------------------------------------------------------------------------------------------------------
# real-file tests


@needs_shared
def test_state_dict_loads_strictly_and_leaves_the_model_untouched():
    model = timm.create_model("tf_mobilenetv3_small_100", num_classes=1000)
    model.train()
    model.bn1.eval()  # a frozen BN inside a training model must stay frozen
    sd = load_tflite_state_dict(MODEL_FILE, model)

    assert list(sd) == list(model.state_dict())
    assert model.training and not model.bn1.training, "the importer must restore every training flag"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hook left behind"
    model.load_state_dict(sd, strict=True)
    # BN is identity + bias: weight 1, mean 0, var + eps == 1; the classifier lost the background logit.
    assert torch.equal(sd["bn1.weight"], torch.ones(16))
    assert torch.allclose(sd["bn1.running_var"] + model.bn1.eps, torch.ones(16))
    assert torch.equal(sd["bn1.running_mean"], torch.zeros(16))
    assert sd["classifier.weight"].shape == (1000, 1024) and sd["classifier.bias"].shape == (1000,)
    assert sd["conv_head.bias"].abs().sum() > 0  # conv_head has a real bias (no BN in timm)


@pytest.mark.slow
@needs_shared
def test_converted_model_classifies_shared_images(converted, samples):
    files, labels = samples
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=converted))
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        pred = converted(x).argmax(1).numpy()
    top1 = float(np.mean(pred == labels))
    # The README measures 75.8% over all 900 images; an off-by-one class index or a wrong re-layout gives ~0.
    assert top1 >= 0.6, f"top-1 {top1:.1%} on {len(files)} shared images"


@pytest.mark.slow
@needs_shared
def test_gates_and_predictions_match_the_tflite_runtime(converted, runtime):
    # Same uint8 pixels for both, normalized as the float model expects (mean = std = 0.5).
    x = torch.from_numpy(runtime["crops"]).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    logits, gates = _torch_gates(converted, x)

    assert len(gates) == len(runtime["gates"]) == 9
    for name, ours, oracle in zip(runtime["gate_names"], gates, runtime["gates"], strict=True):
        assert ours.shape == oracle.shape, name
        mad = float(np.abs(ours.numpy() - oracle).mean())
        assert mad < 0.05, f"{name}: gate MAD {mad:.4f} vs the TFLite runtime"
    agreement = float(np.mean(logits.argmax(1).numpy() == runtime["scores"].argmax(1)))
    assert agreement >= 0.8, f"top-1 agreement with the runtime {agreement:.1%}"


@needs_shared
@pytest.mark.parametrize("name", ["tf_mobilenetv3_small_075", "tf_mobilenetv3_large_100"])
def test_a_model_of_another_shape_is_rejected_naming_the_tensor(name):
    model = timm.create_model(name, num_classes=1000)
    pattern = r"layer mismatch: TFLite op #\d+ .*'MobilenetV3/.*torch module"
    with pytest.raises(TFLiteImportError, match=pattern):
        load_tflite_state_dict(MODEL_FILE, model)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@needs_shared
def test_truncated_file_is_rejected(tmp_path):
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(MODEL_FILE.read_bytes()[:4096])  # keeps the TFL3 identifier, loses the tables
    model = timm.create_model("tf_mobilenetv3_small_100", num_classes=1000)
    with pytest.raises(TFLiteImportError, match="corrupt or truncated"):
        load_tflite_state_dict(bad, model)


# ---------------------------------------------------------------------------------------------------------
# files that are not TFLite models (no shared data needed)


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"this is a text file, renamed to model.tflite\n" * 20,
        b"",
    ],
    ids=["random-bytes", "text", "empty"],
)
def test_not_a_tflite_file_raises_a_helpful_error(tmp_path, content):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(content)
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(TFLiteImportError) as info:
        load_tflite_state_dict(bad, model)
    message = str(info.value)
    assert "is not a TFLite model" in message and str(bad) in message and "TFL3" in message
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------------------------
# per-channel quantization on a tiny hand-built file (the shared file is per-tensor only)


def _tiny_tflite(conv_q, conv_scale, conv_zp, bias_q, bias_scale, fc_q, fc_scale, fc_zp, fc_bias) -> bytes:
    """A 2-op TFLite flatbuffer: CONV_2D (int8 per-channel, SAME, stride 1) -> FULLY_CONNECTED (uint8)."""
    b = flatbuffers.Builder(1024)

    def vec_of_tables(start, offsets):
        start(b, len(offsets))
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    def buffer(data: bytes | None):
        vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
        tflite.BufferStart(b)
        if vec is not None:
            tflite.BufferAddData(b, vec)
        return tflite.BufferEnd(b)

    def tensor(name, shape, ttype, buf, scale=None, zp=None, qdim=0):
        name_off = b.CreateString(name)
        shape_off = b.CreateNumpyVector(np.array(shape, np.int32))
        quant = None
        if scale is not None:
            s_off = b.CreateNumpyVector(np.asarray(scale, np.float32))
            z_off = b.CreateNumpyVector(np.asarray(zp, np.int64))
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, s_off)
            tflite.QuantizationParametersAddZeroPoint(b, z_off)
            tflite.QuantizationParametersAddQuantizedDimension(b, qdim)
            quant = tflite.QuantizationParametersEnd(b)
        tflite.TensorStart(b)
        tflite.TensorAddName(b, name_off)
        tflite.TensorAddShape(b, shape_off)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, buf)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        return tflite.TensorEnd(b)

    def operator(opcode_index, inputs, outputs, options_type, options):
        in_off = b.CreateNumpyVector(np.array(inputs, np.int32))
        out_off = b.CreateNumpyVector(np.array(outputs, np.int32))
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, opcode_index)
        tflite.OperatorAddInputs(b, in_off)
        tflite.OperatorAddOutputs(b, out_off)
        tflite.OperatorAddBuiltinOptionsType(b, options_type)
        tflite.OperatorAddBuiltinOptions(b, options)
        return tflite.OperatorEnd(b)

    buffers = [buffer(None), buffer(conv_q.tobytes()), buffer(bias_q.astype("<i4").tobytes()),
               buffer(fc_q.tobytes()), buffer(fc_bias.astype("<f4").tobytes())]
    n_out, n_cls = conv_q.shape[0], fc_q.shape[0]
    tensors = [
        tensor("input", [1, 8, 8, 3], tflite.TensorType.FLOAT32, 0),
        tensor("conv/weights", list(conv_q.shape), tflite.TensorType.INT8, 1, conv_scale, conv_zp, 0),
        tensor("conv/bias", [n_out], tflite.TensorType.INT32, 2, bias_scale, np.zeros(n_out), 0),
        tensor("conv/out", [1, 8, 8, n_out], tflite.TensorType.FLOAT32, 0),
        tensor("pooled", [1, n_out], tflite.TensorType.FLOAT32, 0),
        tensor("fc/weights", list(fc_q.shape), tflite.TensorType.UINT8, 3, [fc_scale], [fc_zp]),
        tensor("fc/bias", [n_cls], tflite.TensorType.FLOAT32, 4),
        tensor("logits", [1, n_cls], tflite.TensorType.FLOAT32, 0),
    ]
    tflite.Conv2DOptionsStart(b)
    tflite.Conv2DOptionsAddPadding(b, tflite.Padding.SAME)
    tflite.Conv2DOptionsAddStrideH(b, 1)
    tflite.Conv2DOptionsAddStrideW(b, 1)
    conv_opts = tflite.Conv2DOptionsEnd(b)
    tflite.FullyConnectedOptionsStart(b)
    fc_opts = tflite.FullyConnectedOptionsEnd(b)
    ops = [operator(0, [0, 1, 2], [3], tflite.BuiltinOptions.Conv2DOptions, conv_opts),
           operator(1, [4, 5, 6], [7], tflite.BuiltinOptions.FullyConnectedOptions, fc_opts)]
    codes = []
    for code in (tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.FULLY_CONNECTED):
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        codes.append(tflite.OperatorCodeEnd(b))

    tensors_vec = vec_of_tables(tflite.SubGraphStartTensorsVector, tensors)
    ops_vec = vec_of_tables(tflite.SubGraphStartOperatorsVector, ops)
    in_vec = b.CreateNumpyVector(np.array([0], np.int32))
    out_vec = b.CreateNumpyVector(np.array([7], np.int32))
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddOperators(b, ops_vec)
    tflite.SubGraphAddInputs(b, in_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    subgraph = tflite.SubGraphEnd(b)

    codes_vec = vec_of_tables(tflite.ModelStartOperatorCodesVector, codes)
    subgraphs_vec = vec_of_tables(tflite.ModelStartSubgraphsVector, [subgraph])
    buffers_vec = vec_of_tables(tflite.ModelStartBuffersVector, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, subgraphs_vec)
    tflite.ModelAddBuffers(b, buffers_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_per_channel_dequantization_and_relayout(tmp_path):
    rng = np.random.default_rng(1)
    conv_q = rng.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8)  # OHWI
    conv_scale = np.array([0.01, 0.02, 0.5, 3.0], np.float32)
    conv_zp = np.array([0, 1, -2, 3])
    bias_q = rng.integers(-1000, 1000, 4).astype(np.int32)
    bias_scale = np.array([0.001, 0.002, 0.003, 0.004], np.float32)
    fc_q = rng.integers(0, 256, (6, 4), dtype=np.uint8)  # 5 classes + background at index 0
    fc_bias = rng.normal(size=6).astype(np.float32)
    path = tmp_path / "tiny.tflite"
    path.write_bytes(_tiny_tflite(conv_q, conv_scale, conv_zp, bias_q, bias_scale, fc_q, 0.5, 128, fc_bias))

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    sd = load_tflite_state_dict(path, model)
    model.load_state_dict(sd, strict=True)

    expected_w = conv_scale[:, None, None, None] * (conv_q.astype(np.float64) - conv_zp[:, None, None, None])
    np.testing.assert_allclose(sd["0.weight"].numpy(), expected_w.transpose(0, 3, 1, 2), rtol=1e-6)
    np.testing.assert_allclose(sd["1.bias"].numpy(), bias_scale * bias_q, rtol=1e-6)
    assert torch.equal(sd["1.weight"], torch.ones(4)) and torch.equal(sd["1.running_mean"], torch.zeros(4))
    np.testing.assert_allclose(sd["5.weight"].numpy(), 0.5 * (fc_q[1:].astype(np.float64) - 128))
    np.testing.assert_array_equal(sd["5.bias"].numpy(), fc_bias[1:])
