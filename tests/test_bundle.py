"""Analysis bundles: round trip, exact merge of shard bundles, and clear errors on files that are not bundles."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from senet_viz.analysis.bundle import BundleError, merge_bundles, provenance, read_bundle, write_bundle
from senet_viz.analysis.stats import GateStats

BLOCKS = [{"name": "SE_2_1", "stage": 2, "channels": 8}, {"name": "SE_5_1", "stage": 5, "channels": 16}]
CLASSES = ["a", "b", "c"]


def stats_of(gates: dict[str, np.ndarray], labels: np.ndarray) -> GateStats:
    stats = GateStats.for_blocks("toy", BLOCKS, CLASSES)
    for name, g in gates.items():
        stats.update(name, g, labels)
    return stats


def data(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    return {b["name"]: rng.uniform(size=(n, b["channels"])) for b in BLOCKS}, labels


def prov(n: int) -> dict:
    return provenance(model="toy", weights="toy.safetensors", weights_digest="abc", images="/data/x",
                      n_images=n, n_classes=3, command=["python", "-m", "senet_viz", "paper"])


def test_round_trip_keeps_statistics_and_provenance(tmp_path):
    gates, labels = data(90, 0)
    stats = stats_of(gates, labels)
    path = write_bundle(tmp_path / "run", stats, prov(90), metrics={"top1": 0.5})
    assert path.name == "run.senetviz.zip"
    back = read_bundle(path)
    assert back.provenance["n_images"] == 90 and back.provenance["command"] == "python -m senet_viz paper"
    assert back.provenance["versions"]["numpy"] == np.__version__
    assert back.metrics == {"top1": 0.5}
    a, b = stats.indices(), back.stats.indices()
    assert list(a["block"]) == list(b["block"])
    np.testing.assert_allclose(a["specificity"], b["specificity"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a["mean_gate"], b["mean_gate"], rtol=0, atol=1e-12)
    assert read_bundle(path.read_bytes()).provenance == back.provenance  # an upload reads the same


def test_bundles_of_shards_merge_into_one_pass(tmp_path):
    gates, labels = data(120, 1)
    whole = stats_of(gates, labels)
    parts = []
    for i, sl in enumerate((slice(0, 50), slice(50, 120))):
        part = stats_of({k: v[sl] for k, v in gates.items()}, labels[sl])
        parts.append(read_bundle(write_bundle(tmp_path / f"part{i}", part, prov(sl.stop - sl.start))))
    merged = merge_bundles(parts)
    assert merged.provenance["n_images"] == 120 and merged.provenance["merged_from"] == 2
    a, b = whole.indices(), merged.stats.indices()
    np.testing.assert_allclose(a["eta2"], b["eta2"], rtol=0, atol=1e-10)
    assert list(a["n_images"]) == list(b["n_images"])


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buffer.getvalue()


@pytest.mark.parametrize(("blob", "says"), [
    (b"hello, not a zip", "not a zip archive"),
    (_zip({"readme.txt": b"x"}), "it has no bundle.json"),
    (_zip({"bundle.json": b"{broken"}), "not valid JSON"),
    (_zip({"bundle.json": json.dumps({"format": "other"}).encode()}), "format field"),
    (_zip({"bundle.json": json.dumps({"format": "senet-viz-bundle", "version": 99}).encode()}), "newer"),
    (_zip({"bundle.json": json.dumps({"format": "senet-viz-bundle", "version": 1}).encode(),
           "stats.parquet": b"not parquet"}), "statistics in the bundle cannot be read"),
])
def test_files_that_are_not_bundles_are_refused_with_the_reason(blob, says):
    with pytest.raises(BundleError, match=says):
        read_bundle(blob)


def test_a_member_that_lies_about_its_size_is_refused(monkeypatch):
    from senet_viz.analysis import bundle
    monkeypatch.setitem(bundle.MAX_MEMBER_BYTES, "bundle.json", 100)
    big = json.dumps({"format": "senet-viz-bundle", "version": 1, "pad": "x" * 1000}).encode()
    with pytest.raises(BundleError, match="over the"):
        read_bundle(_zip({"bundle.json": big}))
