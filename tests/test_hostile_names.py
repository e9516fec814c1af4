"""Typed model names a stranger may send (issue 18, item 5): a timm network without gates
(``vit_giant_patch14_224``: 1B parameters, ~4 GB once built), one over the models budget, one whose weights are on
the hub only. Each is answered from the network built on the ``meta`` device (shapes, no memory, no weights), in
the library and in the app: the network is never built for real, no weights are read and nothing is fetched.

Every build is watched through :meth:`senet_viz.models.registry.ModelSpec.build`: the bytes of the parameters and
buffers it made for real are recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from apptest_helpers import app_session, shown
from streamlit.testing.v1 import AppTest

from senet_viz.lru import LRU
from senet_viz.models import download, registry, zoo
from senet_viz.models.loaded import NoGatesError
from ui import model_cache

ROOT = Path(__file__).resolve().parents[1]
NO_GATES = "vit_giant_patch14_224"


@pytest.fixture
def builds(monkeypatch):
    """Every ModelSpec.build as (name, default device, bytes of real parameters and buffers made), with the
    weightless check forgotten before and after."""
    made: list[tuple[str, str, int]] = []
    real = registry.ModelSpec.build

    def build(self, reduction=None):
        model = real(self, reduction=reduction)
        tensors = [*model.parameters(), *model.buffers()]
        made.append((self.name, str(torch.get_default_device()),
                     sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)))
        return model

    monkeypatch.setattr(registry.ModelSpec, "build", build)
    zoo.forget_architecture_checks()
    yield made
    zoo.forget_architecture_checks()


@pytest.fixture
def no_weights(monkeypatch):
    """Every way to weights (a file, the hub cache, a download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were read or fetched")

    for module, name in ((zoo, "load_weights_into"), (zoo, "load_from_hub"), (download, "load_from_hub"),
                         (download, "download_weights"), (download, "download_size")):
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.slow
def test_a_typed_timm_name_without_gates_is_refused_without_building_it(builds, no_weights):
    with pytest.raises(NoGatesError, match=f"{NO_GATES} has no channel gate.*without building it"):
        zoo.load_model(NO_GATES, device="cpu")
    assert builds and all(real == 0 for _, _, real in builds), builds  # shapes only: nothing allocated
    with pytest.raises(NoGatesError):
        zoo.check_architecture(NO_GATES)
    assert len(builds) == 1  # remembered per name: a rerun builds nothing


def test_a_typed_name_over_the_models_budget_is_refused_before_it_is_built(builds, no_weights):
    # RegNetY-16GF: 335 MB of parameters; its constructor reads values, so small tensors (< 1%) are made for real.
    with pytest.raises(zoo.ModelTooLargeError, match=r"torchvision:regnet_y_16gf has 319 MiB.*SENET_VIZ_MODELS_MB"):
        zoo.load_model("torchvision:regnet_y_16gf", device="cpu", max_param_bytes=100 << 20)
    assert len(builds) == 1 and builds[0][2] < 335e6 / 100, builds
    assert zoo.check_architecture("torchvision:regnet_y_16gf").param_bytes == 334_852_296  # gated, under no budget


def test_hub_only_weights_are_not_fetched_and_the_network_is_not_built(builds, no_weights, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("SENET_VIZ_CACHE", str(tmp_path / "cache"))  # no downloaded file; the hub caches are empty
    with pytest.raises(download.DownloadNeededError, match="Download from the hub"):
        zoo.load_model("seresnext26d_32x4d", device="cpu", download=False)
    assert all(real == 0 for _, _, real in builds), builds  # the meta check only


def session() -> AppTest:
    return app_session()


def type_model_name(at: AppTest, name: str) -> None:
    """Type ``name`` into the model picker (it accepts new options; AppTest sends only listed ones, so the typed
    name is listed on the test's side, as the browser sends the typed text)."""
    box = at.selectbox(key="model_name")
    box.options.append(name)
    box.set_value(name)
    at.run()


@pytest.mark.slow
def test_the_app_refuses_a_typed_name_without_gates_at_once_and_offers_no_download(builds, monkeypatch):
    monkeypatch.setattr(model_cache, "FAILED_LOADS", LRU(64))
    at = session()
    type_model_name(at, NO_GATES)
    assert not at.exception, [e.message for e in at.exception]
    errors = [shown(e.value) for e in at.error]  # the typed name is shown as text (escaped Markdown)
    assert any(f"{NO_GATES} has no channel gate" in e for e in errors), errors
    assert not at.get("button") or "download_weights" not in [b.key for b in at.button]
    type_model_name(at, NO_GATES)  # a rerun: answered from memory
    assert [name for name, _, _ in builds if name == NO_GATES] == [NO_GATES]
    assert all(real == 0 for name, _, real in builds if name == NO_GATES)


@pytest.mark.slow
def test_the_app_refuses_a_typed_name_over_the_models_budget(builds, monkeypatch):
    monkeypatch.setenv("SENET_VIZ_MODELS_MB", "100")
    at = session()
    type_model_name(at, "torchvision:regnet_y_16gf")
    assert not at.exception, [e.message for e in at.exception]
    errors = [shown(e.value) for e in at.error]
    assert any("319 MiB" in e and "SENET_VIZ_MODELS_MB" in e for e in errors), errors
    assert all(real < 335e6 / 100 for name, _, real in builds if name == "torchvision:regnet_y_16gf")
