"""Remove SE blocks (gate = 1) or freeze them to their mean gate, and measure what changes.

Calibration split (for ``mode="mean"``): the per-channel mean gate of each block is measured on a calibration
subset and the ablated network is evaluated on the rest, so the constant is never fitted on the images it is
scored on. The split is deterministic: an image belongs to the calibration set when the first 8 hex digits of
``sha1(key)`` taken as an integer, modulo 1000, fall below ``1000 * fraction`` (default fraction 0.2). Pass
``calibrate_on_eval=True`` to fit and score on the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .blocks import SEBlock
from .cost import model_cost
from .data import ImageSet
from .run import ProgressFn, Result, run_model
from .zoo import LoadedModel

CALIBRATION_FRACTION = 0.2


def _in_calibration(key: str, fraction: float) -> bool:
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 1000 < fraction * 1000


def split_calibration(images: ImageSet, fraction: float = CALIBRATION_FRACTION) -> tuple[ImageSet, ImageSet]:
    """(calibration, evaluation) subsets of ``images``: disjoint, deterministic, together all of them."""
    calib = [it for it in images.items if _in_calibration(it.key, fraction)]
    rest = [it for it in images.items if not _in_calibration(it.key, fraction)]
    return replace(images, items=calib, skipped=[]), replace(images, items=rest)


def mean_gates(result: Result, blocks: Sequence[SEBlock]) -> dict[str, np.ndarray]:
    """Per-channel mean gate of each block over the images of ``result`` (float32, length C)."""
    if result.n == 0:
        raise ValueError("no image could be used to compute mean gates; add calibration images")
    return {b.name: result.gates[b.name].astype(np.float32).mean(axis=0) for b in blocks}


def _kl(full_logits: np.ndarray, ablated_logits: np.ndarray) -> float:
    """Mean KL(full || ablated) of the softmax outputs, in nats."""
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(full_logits.astype(np.float64)), log_softmax(ablated_logits.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())


def per_class_accuracy(result: Result) -> dict[int, float]:
    known = result.labels >= 0
    out = {}
    for cls in np.unique(result.labels[known]):
        rows = result.labels == cls
        out[int(cls)] = float((result.pred[rows] == cls).mean())
    return out


def evaluate(loaded: LoadedModel, images: ImageSet, ablate_blocks: Sequence[SEBlock] = (), mode: str = "identity",
             *, calibrate_on_eval: bool = False, fraction: float = CALIBRATION_FRACTION, batch_size: int = 32,
             progress: ProgressFn | None = None, full: Result | None = None) -> dict:
    """Accuracy, agreement and cost of the full network and, if ``ablate_blocks``, of the ablated one.

    Returns a JSON-ready dict: ``top1``/``top5`` of the evaluated network (ablated if blocks are given),
    ``full_top1``/``full_top5``, ``agreement`` (share of images whose top-1 equals the full network's),
    ``kl`` (mean KL(full || ablated), nats), ``params``, ``params_removed``, ``gmacs``, ``gmacs_removed``,
    ``n_images``, ``n_skipped``, ``skipped`` and the per-class accuracy change.
    """
    ablate_blocks = list(ablate_blocks)
    calib_n = 0
    means = None
    eval_images = images
    if ablate_blocks and mode == "mean":
        if calibrate_on_eval:
            calib = images
        else:
            calib, eval_images = split_calibration(images, fraction)
        calib_result = run_model(loaded, calib, blocks=ablate_blocks, batch_size=batch_size, keep_logits=False)
        means = mean_gates(calib_result, ablate_blocks)
        calib_n = calib_result.n
    if full is None or full.keys != [it.key for it in eval_images.items]:
        full = run_model(loaded, eval_images, blocks=[], batch_size=batch_size, progress=progress)
    out: dict = {"model": loaded.name, "weights": loaded.weights_source, "mode": mode if ablate_blocks else None,
                 "ablated": [b.name for b in ablate_blocks]}
    if ablate_blocks:
        keep = set(full.keys)
        ablated_images = replace(eval_images, items=[it for it in eval_images.items if it.key in keep], skipped=[])
        ablated = run_model(loaded, ablated_images, blocks=[], ablate_blocks=ablate_blocks, mode=mode, means=means,
                            batch_size=batch_size, progress=progress)
    else:
        ablated = full
    cost = model_cost(loaded.model, loaded.blocks, ablate_blocks, loaded.input_size, loaded.name)
    agreement = float((ablated.pred == full.pred).mean()) if full.n else None
    full_pc, abl_pc = per_class_accuracy(full), per_class_accuracy(ablated)
    out.update({
        "top1": ablated.accuracy(1),
        "top5": ablated.accuracy(5),
        "full_top1": full.accuracy(1),
        "full_top5": full.accuracy(5),
        "agreement": agreement,
        "kl": _kl(full.logits, ablated.logits) if ablate_blocks and full.n else 0.0,
        "params": cost.params,
        "params_removed": cost.params_removed,
        "params_after": cost.params_after,
        "gmacs": round(cost.macs / 1e9, 4),
        "gmacs_removed": round(cost.macs_removed / 1e9, 6),
        "n_images": full.n,
        "n_calibration": calib_n,
        "n_skipped": len(full.skipped),
        "skipped": [{"file": s.file, "reason": s.reason} for s in full.skipped],
        "per_class_top1_change": {loaded.class_names[c]: abl_pc[c] - full_pc[c] for c in full_pc} if ablate_blocks
        else {},
    })
    return out
