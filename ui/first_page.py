"""The first page without a forward pass: the embedded model's pass over its embedded samples, shipped in assets/.

A fresh server opens on ``se_resnet_fmnist`` and its 300 samples (assets/fmnist_samples). Instead of running the
network for them, :func:`load` reads :data:`ASSET` (per-image gates in float16, predictions, top-5, logits: the
arrays of :class:`senet_viz.inference.run.Result`) and replays the statistics' batch updates from those gates, so
the result and the statistics equal what :func:`ui.results._streamed_run` computes (tests/test_precomputed.py).

The file applies only to exactly that pass: its key is a digest of the model name, the weights' content digest
(``LoadedModel.weights_id``), the class names and every sample's key, label and file bytes; any other model,
weights, device or image (an upload, a changed file) computes as always. Regenerate it after changing the model,
its weights or the samples (a test fails while it is stale):

    .venv/bin/python -m ui.first_page
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from senet_viz.analysis.stats import GateStats
from senet_viz.data.sources import ImageSet
from senet_viz.inference.run import Result, RunOptions, run_model
from senet_viz.models.loaded import LoadedModel
from senet_viz.paths import PROJECT_ROOT

MODEL = "se_resnet_fmnist"
ASSET = PROJECT_ROOT / "assets" / f"{MODEL}_first_page.npz"
BATCH = 32  # the batch size of ui.results._streamed_run: the statistics are updated batch by batch alike


def applies(loaded: LoadedModel, images: ImageSet, keep_gates: bool) -> bool:
    """Cheap checks before :func:`content_key` reads the files: the embedded model on the CPU, per-image gates kept,
    every image a readable file of the model's sample folder."""
    spec = loaded.spec
    if loaded.name != MODEL or loaded.device.type != "cpu" or not keep_gates or images.skipped or not images.items:
        return False
    if spec is None or spec.samples_dir is None or not ASSET.is_file():
        return False
    folder = Path(spec.samples_dir).resolve()
    return all(it.path is not None and Path(it.path).resolve().is_relative_to(folder) for it in images.items)


def content_key(loaded: LoadedModel, images: ImageSet, class_names: Sequence[str]) -> str:
    """What the pass depends on, by content: model, weights digest, class names, each image's key, label and bytes."""
    h = hashlib.sha256(json.dumps([loaded.name, loaded.weights_id, list(class_names)]).encode())
    for it in images.items:
        h.update(json.dumps([it.key, it.label, it.label_name]).encode())
        h.update(hashlib.sha256(Path(it.path).read_bytes()).digest())
    return h.hexdigest()


def _stats(loaded: LoadedModel, result: Result, class_names: Sequence[str]) -> GateStats:
    """The statistics as the streamed pass builds them: each block's float16 gates, batch by batch."""
    stats = GateStats.for_blocks(loaded.name, loaded.blocks, list(class_names))
    for start in range(0, result.n, BATCH):
        rows = slice(start, start + BATCH)
        for block in loaded.blocks:
            stats.update(block.name, result.gates[block.name][rows], result.labels[rows])
    return stats


def load(loaded: LoadedModel, images: ImageSet, class_names: Sequence[str], keep_gates: bool,
         path: Path = ASSET) -> tuple[Result, GateStats] | None:
    """The shipped pass of ``loaded`` over ``images`` with its statistics, or None when the file does not apply
    (another model, weights, device or image set; a stale or unreadable file)."""
    if not applies(loaded, images, keep_gates):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError):
        return None
    if meta.get("key") != content_key(loaded, images, class_names):
        return None
    keys = [str(k) for k in arrays["keys"]]
    if keys != [it.key for it in images.items]:
        return None
    by_key = {it.key: it for it in images.items}
    result = Result(model=loaded.name, keys=keys, names=[by_key[k].name for k in keys],
                    labels=arrays["labels"].astype(np.int64),
                    label_names=[by_key[k].label_name for k in keys], pred=arrays["pred"].astype(np.int64),
                    top5=arrays["top5"].astype(np.int64), top5_prob=arrays["top5_prob"],
                    gates={b.name: arrays[f"gates/{b.name}"] for b in loaded.blocks}, logits=arrays["logits"],
                    precision=meta["precision"], cuts_note="precomputed (assets/): no activations kept")
    return result, _stats(loaded, result, class_names)


def compute(loaded: LoadedModel, images: ImageSet, class_names: Sequence[str]) -> tuple[Result, GateStats]:
    """The pass as a fresh server runs it (:func:`ui.results._streamed_run` with per-image gates kept)."""
    stats = GateStats.for_blocks(loaded.name, loaded.blocks, list(class_names))
    options = RunOptions(batch_size=BATCH, keep_gates=True, on_gates=stats.update)
    return run_model(loaded, images, options=options), stats


def embedded_samples(loaded: LoadedModel) -> ImageSet:
    """The sample set the sidebar opens with for the embedded model (every class of its sample folder)."""
    from senet_viz.data.folders import folder_source

    return folder_source(loaded.spec.samples_dir, loaded.class_names, loaded.wnids)


def write(path: Path = ASSET) -> Path:
    """Run the embedded model on its samples (CPU) and write the file :func:`load` reads."""
    from senet_viz.models import zoo

    loaded = zoo.load_model(MODEL, device="cpu")
    images = embedded_samples(loaded)
    names = list(images.class_names or loaded.class_names)
    result, _ = compute(loaded, images, names)
    if result.skipped or result.n != len(images.items):
        raise RuntimeError(f"{len(result.skipped)} sample(s) could not be read: {result.skipped[:3]}")
    meta = {"key": content_key(loaded, images, names), "model": loaded.name, "weights": loaded.weights_id,
            "images": len(images.items), "precision": result.precision}
    arrays = {"meta": np.array(json.dumps(meta)), "keys": np.array(result.keys), "labels": result.labels,
              "pred": result.pred.astype(np.int16), "top5": result.top5.astype(np.int16),
              "top5_prob": result.top5_prob, "logits": result.logits}
    arrays |= {f"gates/{name}": g for name, g in result.gates.items()}
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)
    return path


if __name__ == "__main__":
    out = write(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSET)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
