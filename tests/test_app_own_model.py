"""AppTest: "Your own model" in the sidebar. A TorchScript file of the embedded SE-ResNet (its trained weights,
scripted here) is uploaded with its class names, input size and normalisation on a server that allows code
(TorchScript carries code: SENET_VIZ_ALLOW_CODE=1); the Fashion-MNIST samples are read from the server's folder,
and Compare classes draws Fig. 6 for the file's gates. A file that is not a model and a Python entry point on a
server that does not allow code are refused with st.error and the app keeps going. Hostile files:
tests/test_hostile_models.py.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from apptest_helpers import assert_ok, open_page, own_model_app, shown
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires

from senet_viz.models import registry, zoo
from senet_viz.models.embedded.data import CLASS_NAMES, MEAN, STD

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "fmnist_samples"
PER_CLASS = 3
TIMEOUT = 240
PAGES = {"explore": "Explore one image", "channels": "Channels", "depth": "Depth profile",
         "remove": "Remove SE blocks", "attribution": "Attribution", "cost": "Cost", "export": "Export"}

pytestmark = [requires(embedded_model_ready(), EMBEDDED_MISSING),
              pytest.mark.filterwarnings("ignore::FutureWarning")]  # torch.jit is deprecated for torch.export


@pytest.fixture(scope="module")
def scripted_fmnist(tmp_path_factory) -> bytes:
    """The trained embedded SE-ResNet as a TorchScript archive (what a user would upload)."""
    loaded = zoo.load_model("se_resnet_fmnist", device="cpu")
    path = tmp_path_factory.mktemp("own") / "se_resnet_fmnist_scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(loaded.model).save(str(path))
    return path.read_bytes()




@pytest.mark.slow
def test_an_uploaded_torchscript_model_draws_fig6_on_compare_classes(scripted_fmnist, monkeypatch, tmp_path):
    monkeypatch.setenv("SENET_VIZ_ALLOW_CODE", "1")
    # PER_CLASS samples of each class: every page runs on them, and each pass costs in proportion to their number
    folder = tmp_path / "samples"
    for cls in sorted(p for p in SAMPLES.iterdir() if p.is_dir()):
        (folder / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.png"))[:PER_CLASS]:
            shutil.copy2(f, folder / cls.name / f.name)
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))  # the typed folder lies inside the server's roots
    at = own_model_app()
    assert "Upload a model file" in " ".join(i.value for i in at.info)  # nothing loaded yet, no error
    at.get("file_uploader")[0].set_value(("se_resnet_fmnist_scripted.pt", scripted_fmnist,
                                          "application/octet-stream"))
    at.text_input(key="own_input_size").set_value("1,28,28")
    at.text_input(key="own_resize").set_value("28")
    at.text_input(key="own_mean").set_value(str(MEAN))
    at.text_input(key="own_std").set_value(str(STD))
    classes = [u for u in at.get("file_uploader") if u.key == "own_classes_upload"][0]
    classes.set_value(("fmnist.txt", "\n".join(CLASS_NAMES).encode(), "text/plain"))
    at.run()
    assert_ok(at)
    caption = shown(" ".join(c.value for c in at.sidebar.caption))
    assert "se_resnet_fmnist_scripted.pt · torchscript · 5 gates" in caption, caption
    assert "10 classes · input 1x28x28" in caption, caption
    at.radio(key="image_source").set_value("Folder on the server")
    at.run()
    at.text_input(key="server_folder").set_value(str(folder))
    at.run()
    assert_ok(at)
    figures = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert figures, "no chart on Compare classes"
    fig6 = figures[0]
    assert fig6["layout"]["title"]["text"].startswith("Mean excitation per channel — se_resnet_fmnist_scripted")
    names = {t.get("name") for t in fig6["data"]} - {None}
    assert f"all (n={10 * PER_CLASS})" in names, names
    labelled = [n.rpartition(" (n=")[0] for n in names if n.endswith(f"(n={PER_CLASS})")]
    assert len(labelled) >= 2 and set(labelled) <= set(CLASS_NAMES), names  # the samples labelled by the file's classes

    # every other page works on the file's gates too
    for page, header in PAGES.items():
        open_page(at, page, header)


@pytest.mark.slow
def test_a_file_that_is_no_model_and_code_without_permission_are_refused(monkeypatch, tmp_path):
    monkeypatch.delenv("SENET_VIZ_ALLOW_CODE", raising=False)
    at = own_model_app()
    at.get("file_uploader")[0].set_value(("broken.onnx", b"not an onnx file", "application/octet-stream"))
    at.run()
    assert not at.exception
    message = shown(at.error[0].value)
    assert "Could not load broken.onnx" in message and "is not an ONNX model" in message, message
    at.text_input(key="own_model_path").set_value(f"{ROOT / 'examples' / 'se_vgg16.py'}:build")
    at.run()
    assert not at.exception
    message = shown(at.error[0].value)
    assert "runs that code" in message and "SENET_VIZ_ALLOW_CODE=1" in message, message
    assert "Pick a model" not in message
    # back to the zoo: the curated picker works as before
    at.radio(key="model_from").set_value("Zoo")
    at.run()
    assert_ok(at)
    assert at.selectbox(key="model_name").value in registry.REGISTRY


ENTRY_POINT = """
from torch import nn


class Gate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pool, self.fc1, self.act = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU()
        self.fc2, self.gate = nn.Conv2d(c // 4, c, 1), nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, 4, 1), Gate(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
"""


@pytest.mark.slow
def test_a_python_entry_point_loads_when_the_server_allows_code(monkeypatch, tmp_path):
    code = tmp_path / "my_net.py"
    code.write_text(ENTRY_POINT)
    monkeypatch.setenv("SENET_VIZ_ALLOW_CODE", "1")
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))  # a typed path: inside the operator's roots
    at = own_model_app()
    at.text_input(key="own_model_path").set_value(f"{code}:build")
    at.text_input(key="own_input_size").set_value("3,64,64")
    at.run()
    assert_ok(at)
    caption = shown(" ".join(c.value for c in at.sidebar.caption))
    assert f"{code}:build · entry-point · 1 gate (se) · 3 classes · input 3x64x64" in caption, caption
