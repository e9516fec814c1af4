"""ONNX files exported the common ways load through ``--model net.onnx`` (issue 22, part 3).

The TorchScript exporter (``dynamo=False``) at opsets 13 to 20, with and without constant folding; the dynamo
exporter (``dynamo=True``, its defaults: optimised, opset 18; onnxscript is a dev requirement); for the tiny SE-ResNet
of tests/tiny_nets.py and timm's MobileNetV3-Small (random weights, hard-sigmoid SE). Each file loads through the
model-file path (:func:`senet_viz.models.zoo.load_model`, what the CLI's ``--model`` and the sidebar call) with the
torch model's gates (names and channels) and its logits within 1e-5. The graph rewrites of
:mod:`senet_viz.models.onnx_fix` are checked on small hand-built graphs; a file onnx cannot read safely (external
data outside its folder) is still refused.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires
from tiny_nets import make_tiny_seresnet

from senet_viz.gates.blocks import find_se_blocks
from senet_viz.models.loaders import ModelLoadError, load_model_arg
from senet_viz.models.onnx_fix import clear_allowzero, fold_identities, normalise
from senet_viz.models.zoo import load_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]
HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None


def export(model: torch.nn.Module, path: Path, size: int, **kwargs) -> Path:
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kwargs.get("dynamo"):
            torch.onnx.export(model, (x,), str(path), input_names=["x"],
                              dynamic_shapes={"x": {0: torch.export.Dim("n")}}, **kwargs)
        else:
            torch.onnx.export(model, (x,), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}}, **kwargs)
    return path


def assert_same_network(model: torch.nn.Module, path: Path, size: int) -> list[str]:
    """``path`` loads as the model file with ``model``'s gates and logits; returns the loader's notes."""
    loaded = load_model(str(path), device="cpu")
    expected = find_se_blocks(model, (3, size, size))
    assert [(b.name, b.channels) for b in loaded.blocks] == [(b.name, b.channels) for b in expected]
    torch.manual_seed(1)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        want, got = model(x), loaded.model(x)
    assert want.abs().max() > 1e-3  # logits of some size: equality below is no accident of tiny numbers
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    return loaded.file_info.notes


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_seresnet()


@pytest.mark.slow
@pytest.mark.parametrize("fold", [False, True], ids=["no-folding", "folding"])
@pytest.mark.parametrize("opset", range(13, 21))
def test_torchscript_exporter_files_load_with_the_same_gates_and_logits(tiny, tmp_path, opset, fold):
    path = export(tiny, tmp_path / "net.onnx", 64, dynamo=False, opset_version=opset, do_constant_folding=fold)
    assert_same_network(tiny, path, 64)


@pytest.mark.slow
@pytest.mark.parametrize("opset", [13, 17, 18, 20])
def test_timm_mobilenetv3_exported_with_shared_weights_loads(tmp_path, opset):
    """timm's MobileNetV3-Small at initialisation has many equal tensors (batch-norm weights and running variances
    of ones): the exporter shares them through Identity nodes, which failed with ``KeyError: 'onnx::Conv_403'``."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=10).eval()
    with torch.no_grad():  # logits of some size: timm initialises the classifier near zero
        model.get_classifier().weight.normal_(0, 1)
    path = export(model, tmp_path / "mnv3.onnx", 224, dynamo=False, opset_version=opset, do_constant_folding=True)
    proto = onnx.load(str(path))
    assert any(n.op_type == "Identity" for n in proto.graph.node)  # the case this test is about
    notes = assert_same_network(model, path, 224)
    assert any("Identity aliases" in n for n in notes), notes


@pytest.mark.slow
@requires(HAS_ONNXSCRIPT, "onnxscript and onnx-ir for the dynamo exporter (requirements-dev.txt; make venv)")
@pytest.mark.parametrize("opset", [18, 20])
@pytest.mark.parametrize("fold", [False, True], ids=["no-folding", "folding"])
def test_dynamo_exporter_files_load(tiny, tmp_path, opset, fold):
    path = export(tiny, tmp_path / "net.onnx", 64, dynamo=True, opset_version=opset, do_constant_folding=fold)
    assert_same_network(tiny, path, 64)


# ------------------------------------------------------------------------------------- the rewrites, by hand


def _model(nodes, inits, outputs=("y",), opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_identity_chains_of_initializers_fold_and_graph_outputs_stay():
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    nodes = [helper.make_node("Identity", ["w"], ["w1"]), helper.make_node("Identity", ["w1"], ["w2"]),
             helper.make_node("Identity", ["w"], ["out2"]),  # a graph output: kept
             helper.make_node("Add", ["x", "w2"], ["y"])]
    proto = _model(nodes, [w], outputs=("y", "out2"))
    assert fold_identities(proto) == 2
    assert [(n.op_type, list(n.input)) for n in proto.graph.node] == [("Identity", ["w"]), ("Add", ["x", "w"])]


def test_allowzero_is_cleared_only_for_constant_shapes_without_zero():
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["y"], allowzero=1),
             helper.make_node("Reshape", ["x", "s0"], ["z"], allowzero=1)]
    inits = [numpy_helper.from_array(np.array([4, 2], np.int64), "s1"),
             numpy_helper.from_array(np.array([0, 8], np.int64), "s0")]
    proto = _model(nodes, inits, outputs=("y", "z"))
    assert clear_allowzero(proto) == 1
    assert [a.i for n in proto.graph.node for a in n.attribute] == [0, 1]


def test_reduce_mean_18_with_axes_input_converts_and_computes(tmp_path):
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    proto = _model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)], [axes], opset=18)
    proto, notes = normalise(proto)
    from onnx2torch import convert

    x = torch.randn(2, 4)
    torch.testing.assert_close(convert(proto)(x), x.mean(1))


def test_an_onnx_file_reaching_outside_its_folder_for_data_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    (tmp_path / "in").mkdir()
    for location in (str(secret), "../secret.bin"):
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 4], data_location=TensorProto.EXTERNAL)
        w.external_data.add(key="location", value=location)
        path = tmp_path / "in" / "net.onnx"
        path.write_bytes(_model([helper.make_node("Add", ["x", "w"], ["y"])], [w]).SerializeToString())
        with pytest.raises(ModelLoadError, match="not an ONNX model"):
            load_model_arg(str(path))


def test_an_operator_onnx2torch_lacks_is_named_in_the_error(tmp_path):
    proto = _model([helper.make_node("Hardmax", ["x"], ["y"])], [], opset=17)
    path = tmp_path / "hardmax.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="no converter for Hardmax-13"):
        load_model_arg(str(path))


@pytest.mark.slow
def test_the_slim_exports_onnx_loads_back_with_the_remaining_gates(tiny_seresnet, tmp_path):
    from senet_viz.analysis.latency import last_stage
    from senet_viz.analysis.slim import save_slim, slim_network

    slim = slim_network(tiny_seresnet, last_stage(tiny_seresnet.blocks))
    path = save_slim(slim, tiny_seresnet, tmp_path, formats=("onnx",))["onnx"]
    assert_same_network(slim.model, path, 64)
    assert [b.name for b in load_model(str(path), device="cpu").blocks] == ["SE_2_1", "SE_3_1", "SE_3_2", "SE_4_1",
                                                                             "SE_4_2"]


@pytest.mark.parametrize("case", ["reduce_mean_18", "pad_18", "pad_19", "split_18_uneven", "cast_like", "identity_19"])
def test_newer_operators_convert_as_onnxruntime_computes_them(case):
    ort = pytest.importorskip("onnxruntime")
    from onnx2torch import convert

    shape = [1, 2, 3, 5]
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 2], np.int64), "pads")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    like = numpy_helper.from_array(np.zeros(1, np.float32), "like")
    nodes, inits, outputs, opset = {
        "reduce_mean_18": ([helper.make_node("ReduceMean", ["x", "axes"], ["y"])], [axes], ["y"], 18),
        "pad_18": ([helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")], [pads], ["y"], 18),
        "pad_19": ([helper.make_node("Pad", ["x", "pads"], ["y"], mode="constant")], [pads], ["y"], 19),
        "split_18_uneven": ([helper.make_node("Split", ["x"], ["a", "b"], axis=3, num_outputs=2)], [], ["a", "b"],
                            18),
        "cast_like": ([helper.make_node("CastLike", ["x", "like"], ["y"])], [like], ["y"], 19),
        "identity_19": ([helper.make_node("Identity", ["x"], ["y"])], [], ["y"], 19),
    }[case]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = convert(normalise(proto)[0])(torch.from_numpy(x))
    got = list(got) if isinstance(got, tuple | list) else [got]
    assert [a.shape for a in want] == [tuple(b.shape) for b in got]
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-6, atol=1e-6)
