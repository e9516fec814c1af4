"""The test session's isolation (tests/conftest.py): a temporary HOME and caches, so nothing a developer has
downloaded or configured changes an outcome, while the embedded model in assets/ is still found. That a subprocess
inherits the isolation is checked in tests/test_library_boundaries.py's fresh interpreter."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from conftest import REPO_ROOT, TEST_HOME

from senet_viz.models import download


def test_home_and_caches_are_the_sessions_temporary_ones(isolated_home):
    assert isolated_home == TEST_HOME and TEST_HOME.is_dir()
    assert Path.home() == TEST_HOME and Path(os.environ["HOME"]) == TEST_HOME
    assert TEST_HOME.name.startswith("senet-viz-tests-home-")
    for var in ("SENET_VIZ_WEIGHTS_DIR", "SENET_VIZ_FMNIST_DIR", "HF_HOME", "TORCH_HOME"):
        assert var not in os.environ, var
    assert download.download_dir() == TEST_HOME / ".cache" / "senet_viz" / "weights"
    assert Path(torch.hub.get_dir()).is_relative_to(TEST_HOME)
    from huggingface_hub import constants

    assert Path(constants.HF_HUB_CACHE).is_relative_to(TEST_HOME)  # read at import: set before it


def test_the_embedded_model_is_found_in_assets_whatever_the_cache():
    assert download.local_weights_file("se_resnet_fmnist") == REPO_ROOT / "assets" / "se_resnet_fmnist.safetensors"
    assert download.weights_status("se_resnet_fmnist") == "file"
