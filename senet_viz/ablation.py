"""Remove SE blocks (gate = 1) or freeze them to their mean gate, and measure what changes.

Calibration split (for ``mode="mean"``): the per-channel mean gate of each block is measured on a calibration
subset and the ablated network is evaluated on the rest, so the constant is never fitted on the images it is
scored on. The split is deterministic: an image belongs to the calibration set when the first 8 hex digits of
``sha1(key)`` taken as an integer, modulo 1000, fall below ``1000 * fraction`` (default fraction 0.2). Pass
``calibrate_on_eval=True`` to fit and score on the same images.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from .blocks import SEBlock
from .capture import ablate, capture, model_lock
from .cost import model_cost
from .data import ImageSet, Skipped
from .run import PrecisionPolicy, ProgressFn, Result, run_model
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
             progress: ProgressFn | None = None, full: Result | None = None, precision: str = "auto") -> dict:
    """Accuracy, agreement and cost of the full network and, if ``ablate_blocks``, of the ablated one.

    Every pass (calibration, full, ablated) runs at the same ``precision`` (see :class:`senet_viz.run.PrecisionPolicy`;
    a ``full`` result passed in should come from the same precision).

    Returns a JSON-ready dict: ``top1``/``top5`` of the evaluated network (ablated if blocks are given),
    ``full_top1``/``full_top5``, ``agreement`` (share of images whose top-1 equals the full network's),
    ``kl`` (mean KL(full || ablated), nats), ``params``, ``params_removed``, ``gmacs``, ``gmacs_removed``,
    ``n_images`` (evaluated), ``n_scored`` (of those, the ones labelled with a model class: top-1/top-5 are
    over these), ``n_calibration``, ``n_skipped``, ``skipped`` and the per-class accuracy change.
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
        calib_result = run_model(loaded, calib, blocks=ablate_blocks, batch_size=batch_size, keep_logits=False,
                                 precision=precision)
        means = mean_gates(calib_result, ablate_blocks)
        calib_n = calib_result.n
    if full is None or full.keys != [it.key for it in eval_images.items]:
        full = run_model(loaded, eval_images, blocks=[], batch_size=batch_size, progress=progress,
                         precision=precision)
    out: dict = {"model": loaded.name, "weights": loaded.weights_source, "mode": mode if ablate_blocks else None,
                 "ablated": [b.name for b in ablate_blocks]}
    if ablate_blocks:
        keep = set(full.keys)
        ablated_images = replace(eval_images, items=[it for it in eval_images.items if it.key in keep], skipped=[])
        ablated = run_model(loaded, ablated_images, blocks=[], ablate_blocks=ablate_blocks, mode=mode, means=means,
                            batch_size=batch_size, progress=progress, precision=precision)
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
        "n_scored": int((full.labels >= 0).sum()),  # images with a label in the model's classes (top-1/top-5)
        "n_calibration": calib_n,
        "n_skipped": len(full.skipped),
        "skipped": [{"file": s.file, "reason": s.reason} for s in full.skipped],
        "per_class_top1_change": {loaded.class_names[c]: abl_pc[c] - full_pc[c] for c in full_pc} if ablate_blocks
        else {},
    })
    return out


# ---------------------------------------------------------------------------------------------- sweeps


def _decode(loaded: LoadedModel, images: ImageSet, batch_size: int) -> tuple[torch.Tensor, list, list]:
    """Decode and transform every image once (a sweep reuses the pixels for every configuration)."""
    from .run import _collate, _ImageDataset

    loader = DataLoader(_ImageDataset(images.items, loaded.transform), batch_size=batch_size, collate_fn=_collate)
    tensors, kept, skipped = [], [], list(images.skipped)
    for indices, batch, failed in loader:
        skipped += [Skipped(images.items[i].origin, why) for i, why in failed]
        if batch is not None:
            tensors.append(batch)
            kept += [images.items[i] for i in indices]
    empty = torch.zeros((0, *loaded.input_size))
    return (torch.cat(tensors) if tensors else empty), kept, skipped


def _logits(loaded: LoadedModel, pixels: torch.Tensor, batch_size: int, policy: PrecisionPolicy,
            blocks: Sequence[SEBlock] = (), mode: str = "identity", means: dict[str, np.ndarray] | None = None
            ) -> np.ndarray:
    out = []
    policy.new_pass()
    with contextlib.ExitStack() as stack:
        if blocks:
            stack.enter_context(ablate(loaded.model, blocks, mode=mode, means=means))
        else:
            stack.enter_context(model_lock(loaded.model))
            stack.enter_context(torch.inference_mode())
        for start in range(0, len(pixels), batch_size):
            logits = policy.forward(loaded.model, pixels[start:start + batch_size].to(loaded.device))
            out.append(logits.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, loaded.num_classes), np.float32)


def sweep_configs(blocks: Sequence[SEBlock]) -> list[tuple[str, str, list[SEBlock]]]:
    """(kind, label, blocks) for every single block, every stage and every "last k blocks" (k >= 2)."""
    configs = [("block", b.name, [b]) for b in blocks]
    for stage in sorted({b.stage for b in blocks}):
        configs.append(("stage", f"stage {stage}", [b for b in blocks if b.stage == stage]))
    for k in range(2, len(blocks) + 1):
        configs.append(("last", f"last {k}", list(blocks[-k:])))
    return configs


def sweep(loaded: LoadedModel, images: ImageSet, modes: Sequence[str] = ("identity", "mean"),
          configs: Sequence[tuple[str, str, list[SEBlock]]] | None = None, *, fraction: float = CALIBRATION_FRACTION,
          batch_size: int = 64, progress: Callable[[int, int], None] | None = None, precision: str = "auto"
          ) -> pd.DataFrame:
    """Ablate each configuration in each mode and measure it against the full network on the same images.

    With ``"mean"`` among the modes, the images are split (see :func:`split_calibration`): every mode is
    scored on the evaluation part only, so identity and mean rows are comparable. One row per
    (configuration, mode): top-1 / top-5 and their change in points, agreement, KL, parameters and GMACs saved.
    Every forward (calibration, full network, each configuration) runs at the same ``precision``; the frame's
    ``attrs`` hold ``precision`` and ``fp32_fallback_batches`` (batches redone in fp32, see
    :class:`senet_viz.run.PrecisionPolicy`).
    """
    for mode in modes:
        if mode not in ("identity", "mean"):
            raise ValueError(f"unknown ablation mode {mode!r}; use identity and/or mean")
    configs = list(configs) if configs is not None else sweep_configs(loaded.blocks)
    policy = PrecisionPolicy(precision, loaded.device)
    if "mean" in modes:
        calib, eval_images = split_calibration(images, fraction)
        calib_pixels, _, _ = _decode(loaded, calib, batch_size)
        if len(calib_pixels) == 0:
            raise ValueError("no calibration image could be read; mean ablation needs some")
        with capture(loaded.model, loaded.blocks, per_batch=True) as rec:
            for start in range(0, len(calib_pixels), batch_size):
                policy.forward(loaded.model, calib_pixels[start:start + batch_size].to(loaded.device), rec)
                rec.commit()
        means = {name: g.astype(np.float32).mean(axis=0) for name, g in rec.gates.items()}
        n_calib = len(calib_pixels)
    else:
        eval_images, means, n_calib = images, None, 0
    pixels, kept, skipped = _decode(loaded, eval_images, batch_size)
    labels = np.array([it.label if it.label is not None else -1 for it in kept], dtype=np.int64)
    known = labels >= 0
    cost = model_cost(loaded.model, loaded.blocks, (), loaded.input_size, loaded.name)
    block_macs = dict(zip(cost.blocks["name"], cost.blocks["macs"], strict=True))
    full = _logits(loaded, pixels, batch_size, policy)

    def accuracy(logits: np.ndarray, k: int) -> float | None:
        if not known.any():
            return None
        top = np.argsort(-logits[known], axis=1)[:, :k]
        return float((top == labels[known, None]).any(axis=1).mean())

    full_top1, full_top5 = accuracy(full, 1), accuracy(full, 5)
    rows = []
    total = len(configs) * len(modes)
    for i, ((kind, label, blocks), mode) in enumerate(itertools.product(configs, modes)):
        logits = _logits(loaded, pixels, batch_size, policy, blocks, mode, means)
        top1, top5 = accuracy(logits, 1), accuracy(logits, 5)
        params_removed = sum(b.params for b in blocks)
        rows.append({
            "model": loaded.name, "kind": kind, "config": label, "blocks": ",".join(b.name for b in blocks),
            "n_blocks": len(blocks), "mode": mode, "top1": top1, "top5": top5, "full_top1": full_top1,
            "full_top5": full_top5,
            "d_top1": None if top1 is None else (top1 - full_top1) * 100,
            "d_top5": None if top5 is None else (top5 - full_top5) * 100,
            "agreement": float((logits.argmax(1) == full.argmax(1)).mean()) if len(full) else None,
            "kl": _kl(full, logits) if len(full) else None,
            "params": cost.params, "params_removed": params_removed,
            "params_saved_pct": 100 * params_removed / cost.params,
            "gmacs_removed": sum(block_macs[b.name] for b in blocks) / 1e9,
            "n_images": len(kept), "n_scored": int(known.sum()), "n_calibration": n_calib,
            "n_skipped": len(skipped),
        })
        if progress is not None:
            progress(i + 1, total)
    frame = pd.DataFrame(rows)
    frame.attrs.update(precision=policy.name, fp32_fallback_batches=policy.fallback_batches)
    return frame


def pareto_front(frame: pd.DataFrame, x: str = "params_saved_pct", y: str = "d_top1") -> pd.DataFrame:
    """Rows not dominated by another (more parameters saved and no larger accuracy loss), sorted by ``x``."""
    rows = frame.dropna(subset=[y]).sort_values([x, y], ascending=[False, False])
    best, keep = -np.inf, []
    for idx, value in zip(rows.index, rows[y], strict=True):
        if value > best:
            keep.append(idx)
            best = value
    return frame.loc[keep].sort_values(x)
