"""Decoded pixels are reused across passes over the same images, never across different content."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from senet_viz.data import decode as data
from senet_viz.data.folders import folder_source
from senet_viz.inference.pipeline import PixelCache
from senet_viz.inference.run import run_model
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.zoo import load_model

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "fmnist_samples"


@pytest.fixture(scope="module")
def fmnist_model() -> LoadedModel:
    return load_model("se_resnet_fmnist", device="cpu")


@pytest.fixture(scope="module")
def fmnist_samples() -> Path:
    return SAMPLES


@pytest.mark.slow
def test_a_second_pass_decodes_nothing_and_gives_the_same_result(fmnist_model, fmnist_samples, monkeypatch):
    images = folder_source(fmnist_samples)
    cache = PixelCache()
    first = run_model(fmnist_model, images, pixel_cache=cache)
    decoded = []
    real = data.decode_image
    monkeypatch.setattr(data, "decode_image", lambda *a, **k: decoded.append(a) or real(*a, **k))
    second = run_model(fmnist_model, images, pixel_cache=cache)
    assert cache.misses == len(images.items) and cache.hits == len(images.items)
    assert not decoded, "the second pass decoded images again"
    np.testing.assert_array_equal(first.logits, second.logits)
    for name, gates in first.gates.items():
        np.testing.assert_array_equal(second.gates[name], gates)
    outside = run_model(fmnist_model, images)  # no cache given: decoded again
    assert cache.hits == len(images.items)
    np.testing.assert_array_equal(outside.logits, first.logits)


@pytest.mark.slow
def test_same_relative_names_in_other_folders_or_changed_files_are_not_confused(fmnist_model, fmnist_samples,
                                                                                 tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(fmnist_samples, a)
    shutil.copytree(fmnist_samples, b)
    files_b = sorted(p for p in b.rglob("*.png"))
    files_a = sorted(p for p in a.rglob("*.png"))
    # folder b: every image replaced by another sample's pixels, same relative names
    for dst, src in zip(files_b, files_a[1:] + files_a[:1], strict=True):
        shutil.copyfile(src, dst)
    cache = PixelCache()
    ra = run_model(fmnist_model, folder_source(a), pixel_cache=cache)
    rb = run_model(fmnist_model, folder_source(b), pixel_cache=cache)
    assert cache.hits == 0, "different files under the same relative names were served from the cache"
    assert ra.keys == rb.keys and not np.array_equal(ra.logits, rb.logits)


def test_the_cache_stays_under_its_byte_bound_dropping_the_least_recently_used():
    cache = PixelCache(max_bytes=3 * 100)
    for k in range(3):
        cache.put(k, torch.zeros(100, dtype=torch.uint8))
    assert cache.get(0) is not None  # 0 is now the most recently used
    cache.put(3, torch.zeros(100, dtype=torch.uint8))
    assert cache.bytes == 300 and cache.get(1) is None and cache.get(0) is not None and cache.get(3) is not None
    cache.put("huge", torch.zeros(1000, dtype=torch.uint8))  # larger than the bound: not kept, nothing dropped
    assert cache.get("huge") is None and cache.bytes == 300
