"""The open zoo (issue 13): any timm or torchvision name, and a user's own model file, through
:func:`senet_viz.models.zoo.load_model` and the command line.

- a timm name with its pretrained tag, random weights: preprocessing from its pretrained config, ImageNet's 1,000
  class names, its gates found;
- a torchvision name: preprocessing from its weights enum's transforms (a weights member too), its categories;
- the naming rule: a name both libraries have is refused with the two prefixed spellings, a bad tag lists the
  tags; a network without channel gates is refused with what was considered;
- ``blocks --model x.onnx --json`` and ``--model x.pt`` (TorchScript) on files made here from a small SE-ResNet,
  their gates and outputs equal to the eager network's; ``file.py:build`` only with ``--allow-code``;
- ``models --names`` (the weightless census on a few architectures) and its JSON.

Nothing is downloaded: networks are built with ``weights="random"``, files are written to ``tmp_path``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import timm.models
import torch
import torchvision.models as tvm
from conftest import TINY_CLASSES
from tiny_nets import TinySEResNet, make_tiny_seresnet

from senet_viz import cli
from senet_viz.models import zoo
from senet_viz.models.loaded import LoadedModel, NoGatesError
from senet_viz.models.model_files import ModelFileOptions
from senet_viz.models.preprocess import Preprocess
from senet_viz.models.registry import REGISTRY, UnknownModelError, get_spec
from senet_viz.models.weights import file_digest

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
SIZE = (3, 64, 64)
SMALL_NAMES = ["SE_2_1", "SE_3_1", "SE_4_1", "SE_5_1"]


class SmallSEResNet(TinySEResNet):
    """tests/conftest.py's tiny SE-ResNet with one block per stage: converting TorchScript to an exported graph,
    the costly step of loading it, takes about half the time."""

    DEPTHS = (1, 1, 1, 1)


def small_seresnet() -> SmallSEResNet:
    return make_tiny_seresnet(cls=SmallSEResNet)


def run(capsys, *args: str | Path) -> dict | list:
    """``senet_viz <args> --json`` in-process: exit code 0 and one JSON document on stdout."""
    code = cli.main([str(a) for a in args] + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out)


def user_error(capsys, *args: str | Path) -> str:
    code = cli.main([str(a) for a in args])
    _, err = capsys.readouterr()
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------------------------------ open names


def test_a_timm_name_with_its_tag_takes_preprocessing_and_classes_from_its_pretrained_config():
    name = "ecaresnet26t.ra2_in1k"
    loaded = zoo.load_model(name, weights="random", device="cpu")
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg.input_size == (3, 256, 256)  # not the default 224: the config is really read
    assert loaded.transform.preprocess == Preprocess(crop=256, resize=int(256 / cfg.crop_pct),
                                                     interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    assert loaded.input_size == (3, 256, 256)
    assert loaded.num_classes == 1000 and loaded.class_names[1] == "goldfish" and loaded.wnids[0] == "n01440764"
    assert loaded.name == name and loaded.weights_id == "random" and loaded.spec.source == "timm"
    assert len(loaded.blocks) == 8 and {b.gate_kind for b in loaded.blocks} == {"eca"}
    assert name not in REGISTRY  # an open name is not added to the curated list
    assert get_spec(f"timm:{name}").preprocess == loaded.transform.preprocess


@pytest.mark.slow
def test_a_torchvision_name_takes_transforms_and_categories_from_its_weights_enum():
    loaded = zoo.load_model("regnet_y_3_2gf", weights="random", device="cpu")  # not a timm name: no prefix needed
    weights = tvm.get_model_weights("regnet_y_3_2gf").DEFAULT
    t = weights.transforms()
    assert loaded.transform.preprocess == Preprocess(crop=t.crop_size[0], resize=t.resize_size[0],
                                                     interpolation=t.interpolation.value, mean=tuple(t.mean),
                                                     std=tuple(t.std))
    assert loaded.class_names == weights.meta["categories"] and loaded.wnids[0] == "n01440764"
    assert loaded.spec.source == "torchvision" and len(loaded.blocks) == 21
    # a weights member other than DEFAULT: its own transforms (IMAGENET1K_V1 resizes to 256, V2 to 232)
    v1 = get_spec("torchvision:regnet_y_3_2gf.IMAGENET1K_V1")
    assert v1.weights_tag == "IMAGENET1K_V1" and v1.preprocess.resize == 256
    assert loaded.transform.preprocess.resize == 232


def test_the_naming_rule_refuses_ambiguous_names_and_lists_tags():
    with pytest.raises(UnknownModelError, match="write timm:efficientnet_b4 or torchvision:efficientnet_b4"):
        get_spec("efficientnet_b4")
    assert get_spec("timm:efficientnet_b4").source == "timm"
    assert get_spec("torchvision:efficientnet_b4").source == "torchvision"
    with pytest.raises(UnknownModelError, match="no pretrained tag 'nope'.*ra2_in1k"):
        get_spec("seresnet50.nope")
    with pytest.raises(KeyError, match="legacy_seresnet50"):  # the curated names are offered
        get_spec("no_such_net")


def test_a_network_without_channel_gates_is_refused_with_what_was_considered():
    with pytest.raises(NoGatesError, match=r"resnest14d has no channel gate.*split attention \(ResNeSt\)"):
        zoo.load_model("timm:resnest14d", weights="random", device="cpu")


def test_an_unknown_name_exits_2_naming_the_choices(capsys):
    err = user_error(capsys, "blocks", "--model", "efficientnet_b4", "--device", "cpu")
    assert "timm:efficientnet_b4 or torchvision:efficientnet_b4" in err


# ------------------------------------------------------------------------------------------------ model files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A small SE-ResNet as TorchScript (scripted) and ONNX (opset 17, constants not folded: onnx2torch 1.5.15
    converts neither opset 19's Identity nor the folded graph), with its class names; and the eager network."""
    folder = tmp_path_factory.mktemp("own_models")
    model = small_seresnet()
    x = torch.zeros((1, *SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(folder / "tiny.pt"))
        torch.onnx.export(model, (x,), str(folder / "tiny.onnx"), dynamo=False, opset_version=17,
                          do_constant_folding=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    (folder / "classes.txt").write_text("\n".join(TINY_CLASSES) + "\n")
    return {"pt": folder / "tiny.pt", "onnx": folder / "tiny.onnx", "classes": folder / "classes.txt",
            "model": model}  # type: ignore[dict-item]


@pytest.mark.slow
def test_blocks_of_an_onnx_file_as_json(capsys, files):
    rows = run(capsys, "blocks", "--model", files["onnx"], "--device", "cpu")
    assert len(rows) == len(SMALL_NAMES)
    assert all(r["kind"] == "fx" for r in rows)
    eager = LoadedModel.from_module(files["model"], "tiny", TINY_CLASSES, input_size=SIZE).blocks
    # the ONNX file fixes 3 x 64 x 64: the stages are the eager network's (its naming), the channels too
    assert [(r["stage"], r["channels"]) for r in rows] == [(b.stage, b.channels) for b in eager]
    assert [r["name"] for r in rows] == SMALL_NAMES


@pytest.mark.slow
def test_blocks_and_cost_of_a_torchscript_file(capsys, files):
    common = ("--model", files["pt"], "--input-size", "3,64,64", "--device", "cpu")
    rows = run(capsys, "blocks", *common)
    assert [r["name"] for r in rows] == SMALL_NAMES
    assert [r["path"] for r in rows][:2] == ["layer1.0.se", "layer2.0.se"]  # module paths from the scripted source
    eager = {b.name: b for b in LoadedModel.from_module(files["model"], "tiny", TINY_CLASSES,
                                                            input_size=SIZE).blocks}
    assert all(r["params"] == eager[r["name"]].params for r in rows)
    cost = run(capsys, "cost", *common, "--ablate", "stage:5")
    assert cost["se_params"] == sum(b.params for b in eager.values())


@pytest.mark.slow
def test_a_model_file_loads_with_its_options_and_runs_like_the_eager_network(files):
    options = ModelFileOptions(input_size=SIZE, class_names=tuple(TINY_CLASSES))
    x = torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = files["model"](x)
    for key in ("pt", "onnx"):
        loaded = zoo.load_model(str(files[key]), device="cpu", options=options)
        assert loaded.class_names == TINY_CLASSES and loaded.input_size == SIZE and loaded.spec is None
        assert loaded.transform.preprocess == Preprocess(crop=64, resize=round(64 / 0.875))
        assert loaded.weights_id.startswith(file_digest(files[key])) and loaded.file_info.format in (
            "torchscript", "onnx")
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), expected, atol=1e-4, rtol=1e-4)
    # the file's own class names (none: class 0..9) and another preprocessing are other cache keys
    plain = zoo.load_model(str(files["onnx"]), device="cpu")
    assert plain.class_names[:2] == ["class 0", "class 1"] and plain.weights_id == file_digest(files["onnx"])
    grey = ModelFileOptions(mean=(0.5,), std=(0.5,))
    assert zoo.load_model(str(files["onnx"]), device="cpu", options=grey).weights_id != plain.weights_id


@pytest.mark.slow
def test_model_file_options_are_checked(capsys, files):
    err = user_error(capsys, "blocks", "--model", files["onnx"], "--classes", files["classes"], "--device", "cpu",
                     "--input-size", "3,64")
    assert "C,H,W" in err
    short = files["classes"].with_name("three.txt")
    short.write_text("a\nb\nc\n")
    err = user_error(capsys, "blocks", "--model", files["onnx"], "--classes", short, "--device", "cpu")
    assert "3 classes but tiny outputs 10" in err
    err = user_error(capsys, "blocks", "--model", "mobilenet_v3_small", "--input-size", "3,64,64", "--device", "cpu")
    assert "describe a model file" in err


USER_CODE = """
import torch
from torch import nn


class Gate(nn.Module):  # a user's own SE layer: found by its structure
    def __init__(self, c, r=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, c // r, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(c // r, c, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.expand(self.act(self.reduce(self.pool(x)))))


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), Gate(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 5))
"""


def test_python_code_needs_allow_code(capsys, tmp_path):
    code = tmp_path / "mynet.py"
    code.write_text(USER_CODE)
    err = user_error(capsys, "blocks", "--model", f"{code}:build", "--device", "cpu")
    assert "--allow-code" in err
    rows = run(capsys, "blocks", "--model", f"{code}:build", "--allow-code", "--input-size", "3,32,32",
               "--device", "cpu")
    assert [(r["name"], r["path"], r["kind"], r["channels"]) for r in rows] == [("SE_1_1", "2", "structural", 16)]
    loaded = zoo.load_model(f"{code}:build", device="cpu", options=ModelFileOptions(allow_code=True))
    assert loaded.class_names == [f"class {i}" for i in range(5)] and loaded.file_info.format == "entry-point"
    assert len(loaded.weights_id) == 16  # a digest of the built parameters (no weights file)


# ------------------------------------------------------------------------------------------------ census


def test_models_names_counts_gates_per_architecture_without_weights(capsys):
    out = run(capsys, "models", "--names", "timm:seresnet50,torchvision:regnet_y_400mf,ecaresnet26t,timm:resnet18")
    models = out["models"]
    assert models["timm:seresnet50"]["kinds"] == {"se": 16}
    assert models["torchvision:regnet_y_400mf"]["kinds"] == {"se": 16}
    assert models["timm:ecaresnet26t"]["kinds"] == {"eca": 8}
    assert "timm:resnet18" not in models and out["covered"] == 4
    assert out["per_kind"]["se"] == {"models": 2, "gates": 32}
    again = run(capsys, "models", "--names", "timm:seresnet50")  # from the cache, nothing built
    assert again["built"] == 0 and again["models"]["timm:seresnet50"]["gates"] == 16
    assert cli.main(["models", "--names", "timm:seresnet50"]) == 0
    text, _ = capsys.readouterr()
    assert "timm:seresnet50" in text and "se 16" in text and "1 of 1 architectures have channel gates" in text
