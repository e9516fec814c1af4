"""The first page's shipped pass (assets/se_resnet_fmnist_first_page.npz, ui/first_page.py) equals a fresh
computation, applies only to the embedded model on its own samples, and is not stale (regenerate it with
`.venv/bin/python -m ui.first_page`)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import embedded_model_ready, requires

from ui import first_page

pytestmark = requires(embedded_model_ready(), "the embedded model's weights in assets/")


@pytest.fixture(scope="module")
def embedded():
    from senet_viz.models import zoo

    loaded = zoo.load_model(first_page.MODEL, device="cpu")
    images = first_page.embedded_samples(loaded)
    return loaded, images, list(images.class_names or loaded.class_names)


def test_the_shipped_file_is_for_these_weights_and_samples(embedded):
    loaded, images, names = embedded
    assert first_page.ASSET.is_file(), "run `.venv/bin/python -m ui.first_page`"
    assert first_page.ASSET.stat().st_size < 1 << 20  # small: gates in float16
    with np.load(first_page.ASSET, allow_pickle=False) as data:
        meta = str(data["meta"])
    assert first_page.content_key(loaded, images, names) in meta, \
        "stale: the model, its weights or the samples changed; run `.venv/bin/python -m ui.first_page`"
    assert first_page.load(loaded, images, names, keep_gates=True) is not None


@pytest.mark.slow
def test_the_shipped_pass_equals_a_fresh_one(embedded):
    loaded, images, names = embedded
    shipped, shipped_stats = first_page.load(loaded, images, names, keep_gates=True)
    fresh, fresh_stats = first_page.compute(loaded, images, names)
    assert shipped.keys == fresh.keys and shipped.names == fresh.names
    assert shipped.label_names == fresh.label_names and shipped.precision == fresh.precision
    for field in ("labels", "pred", "top5"):
        np.testing.assert_array_equal(getattr(shipped, field), getattr(fresh, field))
    np.testing.assert_allclose(shipped.top5_prob, fresh.top5_prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shipped.logits, fresh.logits, rtol=1e-5, atol=1e-5)
    assert shipped.gates.keys() == fresh.gates.keys()
    for name, gates in fresh.gates.items():
        assert shipped.gates[name].dtype == gates.dtype == np.float16
        # float16 gates: equal, but for a last-bit rounding where the CPU's thread count reorders a sum
        np.testing.assert_allclose(shipped.gates[name].astype(np.float32), gates.astype(np.float32), atol=1e-3)
    a, b = shipped_stats.indices(), fresh_stats.indices()
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a.select_dtypes("number").to_numpy(), b.select_dtypes("number").to_numpy(),
                               rtol=1e-4, atol=1e-4)


def test_it_applies_to_nothing_else(embedded, tmp_path):
    loaded, images, names = embedded
    assert first_page.load(loaded, images, names, keep_gates=False) is None  # a run that keeps no gates
    assert first_page.load(loaded, images, names[::-1], keep_gates=True) is None  # other class names
    fewer = replace(images, items=images.items[:-1])
    assert first_page.load(loaded, fewer, names, keep_gates=True) is None  # another image set
    other = replace(loaded, weights_id="another digest")
    assert first_page.load(other, images, names, keep_gates=True) is None  # other weights
    # the same files copied elsewhere are not the sample folder (an upload or a typed folder computes as always)
    copy = tmp_path / "samples"
    shutil.copytree(loaded.spec.samples_dir, copy)
    moved = replace(images, items=[replace(it, path=str(copy / it.key)) if it.path else it for it in images.items])
    assert first_page.load(loaded, moved, names, keep_gates=True) is None
    # a changed sample file: the content key differs
    with np.load(first_page.ASSET, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["meta"] = np.array(str(arrays["meta"]).replace('"key": "', '"key": "0'))
    stale = tmp_path / "stale.npz"
    np.savez(stale, **arrays)
    assert first_page.load(loaded, images, names, keep_gates=True, path=stale) is None
