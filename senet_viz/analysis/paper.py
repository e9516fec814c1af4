"""The SENet paper's protocol and reference numbers (Hu et al., Squeeze-and-Excitation Networks, TPAMI 2019).

Reference values are transcribed from the paper's tables (single-crop 224 ImageNet validation error and the
paper's parameter / GFLOP counts) so that every measured number can be shown beside the paper's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from senet_viz.analysis.chance import ChanceOptions, class_mean_intervals
from senet_viz.analysis.stats import GateStats
from senet_viz.analysis.stats_accumulate import DEFAULT_BINS
from senet_viz.data.sources import ImageSet
from senet_viz.inference.pipeline import PixelCache
from senet_viz.inference.precision import ForwardCounter
from senet_viz.inference.run import Result, RunOptions, run_model
from senet_viz.inference.shards import ONE_PROCESS, Shards
from senet_viz.models.loaded import LoadedModel

# Fig. 6/7 of the paper show these four ImageNet classes ("goldfish, pug, plane, cliff"); "plane" is taken as
# the ImageNet class "airliner".
PAPER_CLASSES = ("n01443537", "n02110958", "n02690373", "n09246464")
PAPER_IMAGES_PER_CLASS = 50
PAPER_CHANNELS = 50

# Table 10: SE-ResNet-50 with reduction ratio r (top-1 / top-5 error %, parameters in millions).
TABLE10_REDUCTION = pd.DataFrame({
    "reduction": [2, 4, 8, 16, 32],
    "top1_err": [22.29, 22.25, 22.26, 22.28, 22.72],
    "top5_err": [6.00, 6.09, 5.99, 6.03, 6.20],
    "params_m": [45.7, 35.7, 30.7, 28.1, 26.9],
})
# Table 13: ResNet-50 with SE blocks in one stage only (errors %, GFLOPs, parameters in millions). The paper's
# "GFLOPs" count multiply-adds, as ResNet's "3.8 billion FLOPs (multiply-adds)" do: they are GMACs, the unit of
# senet_viz.analysis.cost (ResNet-50: 3.86 in the paper, 3.858 counted here), half of GFLOPs in the usual sense.
TABLE13_STAGES = pd.DataFrame({
    "variant": ["ResNet-50", "SE_Stage_2", "SE_Stage_3", "SE_Stage_4", "SE_All"],
    "se_stages": [(), (2,), (3,), (4,), (2, 3, 4, 5)],
    "top1_err": [23.30, 23.03, 23.04, 22.68, 22.28],
    "top5_err": [6.55, 6.48, 6.32, 6.22, 6.03],
    "gflops": [3.86, 3.86, 3.86, 3.86, 3.87],
    "params_m": [25.6, 25.6, 25.7, 26.4, 28.1],
})
# Section "role of excitation": removing the SE blocks of the last stage of SE-ResNet-50 (and retraining)
# costs a marginal amount of accuracy for the ~1.6M parameters (about 6% of 28.1M) they hold.
PAPER_LAST_STAGE_CLAIM = {"model": "legacy_seresnet50", "blocks": "stage:5", "params_saved_share": 0.056,
                          "top1_change_points": -0.1, "note": "paper: marginal loss (<0.1%), after retraining"}

# Timings of ResNet-50 vs SE-ResNet-50 (Table 2 and the "model and computational complexity" paragraph): CPU inference
# of one 224 x 224 image, and one forward + backward pass of a training mini-batch of 256 images on a server with 8
# NVIDIA Titan X GPUs; with the multiply-adds of Table 13 (GMACs, see TABLE13_STAGES).
PAPER_TIMINGS = {"cpu_ms": {"ResNet-50": 164.0, "SE-ResNet-50": 167.0},
                 "gpu_train_ms": {"ResNet-50": 190.0, "SE-ResNet-50": 209.0},
                 "gmacs": {"ResNet-50": 3.86, "SE-ResNet-50": 3.87}}


@dataclass
class PresetResult:
    """What the Fig. 6/7 protocol produced: statistics over the chosen classes plus the all-image curve."""

    stats: GateStats
    classes: list[str]  # class names shown, in order
    images_per_class: dict[str, int]
    n_images: int  # images behind the "all" curve
    skipped: list


def pick_classes(images: ImageSet, classes: Sequence[str | int] | None, wnids: Sequence[str] | None) -> list[int]:
    """Class indices: the given names / wnids / indices, else the four classes with the most images.

    Ties are broken deterministically: the paper's four classes (goldfish, pug, plane, cliff) first, in the
    paper's order, then by class index.
    """
    present = images.classes_present()
    if classes:
        wanted = []
        lower = {n.lower(): i for i, n in enumerate(images.class_names)}
        wnid_index = {w: i for i, w in enumerate(wnids or [])}
        for c in classes:
            if isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
                wanted.append(int(c))
            elif c in wnid_index:
                wanted.append(wnid_index[c])
            elif c.lower() in lower:
                wanted.append(lower[c.lower()])
            else:
                raise ValueError(f"class {c!r} is not in the image set; use a class name, wnid or index")
        missing = [images.class_names[k] if k < len(images.class_names) else k for k in wanted if k not in present]
        if missing:
            raise ValueError(f"no images of class(es) {missing} in this image set")
        return wanted
    counts: dict[int, int] = {}
    for it in images.items:
        if it.label is not None:
            counts[it.label] = counts.get(it.label, 0) + 1
    paper_rank = {wnids.index(w): i for i, w in enumerate(PAPER_CLASSES) if wnids and w in wnids}
    ranked = sorted(present, key=lambda k: (-counts[k], paper_rank.get(k, len(PAPER_CLASSES)), k))
    return ranked[:4]


def paper_class_names(wnids: Sequence[str] | None, class_names: Sequence[str] | None) -> list[str]:
    """The names the paper's four classes (:data:`PAPER_CLASSES`) have in a model's class list (``wnids`` and
    ``class_names`` in output-index order), in the paper's order; those the model lacks left out (none without
    wnids)."""
    if not wnids or not class_names:
        return []
    index = {w: i for i, w in enumerate(wnids)}
    return [class_names[index[w]] for w in PAPER_CLASSES if w in index and index[w] < len(class_names)]


def default_classes(stats: GateStats, wnids: Sequence[str] | None, class_names: Sequence[str] | None,
                    k: int = 4) -> list[str]:
    """The ``k`` classes of ``stats`` to show first, ranked as :func:`pick_classes` ranks them (the sidebar's and
    ``paper``'s choice): most images first, ties broken by the paper's four classes (in the paper's order), then
    by class index. ``wnids`` / ``class_names``: the model's (see :func:`paper_class_names`), matched by name, so
    the 900 one-image ImageNet samples give goldfish, pug, airliner, cliff."""
    from senet_viz.data.labels import norm_name

    rank = {norm_name(n): i for i, n in enumerate(paper_class_names(wnids, class_names))}
    table = stats.class_table()
    real = table[table["class_index"] >= 0]
    keys = [(-int(n), rank.get(norm_name(str(c)), len(rank)), int(i))
            for c, n, i in zip(real["class"], real["count"], real["class_index"], strict=True)]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return [str(real["class"].iloc[j]) for j in order[:k]]


def interval_note(options: ChanceOptions | None = None) -> str:
    """What the class-mean intervals of :func:`class_mean_bands` are, for a caption."""
    o = options or ChanceOptions()
    return f"{o.level:.0%} bootstrap interval of the class mean ({o.bootstrap} resamples, seed {o.seed})"


def class_mean_bands(result: Result, by: str, stats: GateStats, blocks: Sequence[str], classes: Sequence[str],
                     options: ChanceOptions | None = None) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Fig. 6 / Fig. 7 intervals: block -> class label -> ``(lo, hi)`` per channel, the bootstrap interval of the
    class's mean gate (:func:`senet_viz.analysis.chance.class_mean_intervals`), for the ``classes`` of ``stats``
    with 2+ images; grouped as ``stats`` is (``by``: "labels", or "predicted class" / "prediction"). Empty when
    ``result`` kept no per-image gates."""
    table = stats.class_table()
    index = {str(c): int(k) for c, k, n in zip(table["class"], table["class_index"], table["count"], strict=True)
             if k >= 0 and n >= 2}
    wanted = [c for c in classes if c in index]
    labels = np.asarray(result.pred if by in ("predicted class", "prediction") else result.labels)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    if not wanted:
        return out
    for block in blocks:
        gates = result.gates.get(block)
        if gates is None:
            continue
        lo, hi = class_mean_intervals(gates, labels, [index[c] for c in wanted], options or ChanceOptions())
        out[block] = {c: (lo[i], hi[i]) for i, c in enumerate(wanted)}
    return out


def preset_items(images: ImageSet, per_class: int, classes: Collection[int] | None = None
                 ) -> tuple[list, dict[int, int]]:
    """The preset's images: the first ``per_class`` labelled images of each class (of ``classes`` only, when given),
    in the set's order, and how many each class gave."""
    taken: dict[int, int] = {}
    items = []
    for it in images.items:
        if it.label is None or (classes is not None and it.label not in classes):
            continue
        if taken.get(it.label, 0) < per_class:
            taken[it.label] = taken.get(it.label, 0) + 1
            items.append(it)
    return items, taken


def paper_preset(loaded: LoadedModel, images: ImageSet, classes: Sequence[str | int] | None = None,
                 per_class: int = PAPER_IMAGES_PER_CLASS, bins: int = DEFAULT_BINS, batch_size: int = 32,
                 progress: Callable[[int, int], None] | None = None, precision: str = "auto", *,
                 pixel_cache: PixelCache | None = None, counter: ForwardCounter | None = None,
                 shards: Shards = ONE_PROCESS) -> PresetResult | None:
    """Run the paper's Fig. 6/7 protocol on any labelled image set and any model.

    Up to ``per_class`` images of each chosen class (default: the paper's goldfish, pug, plane, cliff when the
    set has them) give one curve per class; the "all" curve is the mean over up to ``per_class`` images of every
    class in the set, as the paper's all-class curve is. ``precision``: see
    :class:`senet_viz.inference.precision.PrecisionPolicy`; ``pixel_cache`` and ``counter``: see
    :func:`senet_viz.inference.run.run_model`. ``shards`` (:class:`senet_viz.inference.distributed.Group`): every
    process picks the same classes and images from the whole set, runs its share of the batches, and the
    statistics are reduced on rank 0 (None on the other ranks; never None in a single process).
    """
    chosen = pick_classes(images, classes, loaded.wnids)
    items, taken = preset_items(images, per_class)
    subset = replace(images, items=items)
    stats = GateStats.for_blocks(loaded.name, loaded.blocks, images.class_names, bins=bins)
    chosen_set = set(chosen)

    def on_gates(block: str, gates: np.ndarray, labels: np.ndarray) -> None:
        # The all-class curve uses every image; per-class curves only for the chosen classes.
        stats.update(block, gates, np.where(np.isin(labels, list(chosen_set)), labels, -1))

    options = RunOptions(batch_size=batch_size, precision=precision, keep_gates=False, keep_logits=False,
                         progress=progress, on_gates=on_gates, counter=counter)
    part = run_model(loaded, shards.shard(subset, batch_size), None, options, pixel_cache=pixel_cache)
    total, result = shards.reduce_stats(stats), shards.gather_result(part, subset)
    if total is None or result is None:
        return None
    names = [images.class_names[k] for k in chosen]
    return PresetResult(stats=total, classes=names, images_per_class={images.class_names[k]: taken[k] for k in chosen},
                        n_images=result.n, skipped=result.skipped)


# Table 13's compute columns: both multiply-adds, named so that nobody reads the paper's as 2 x ours.
PAPER_GMACS_COLUMN = "paper GMACs (its 'GFLOPs' = multiply-adds)"
OURS_GMACS_COLUMN = "ours GMACs"


def table13_frame(measured: Sequence[tuple[float, float]]) -> pd.DataFrame:
    """Table 13 beside ``measured``: (parameters, MACs) of each variant of :data:`TABLE13_STAGES`, in its order.
    The paper's "GFLOPs" are shown as what they are, multiply-adds (see :data:`TABLE13_STAGES`)."""
    if len(measured) != len(TABLE13_STAGES):
        raise ValueError(f"one (params, macs) per Table 13 variant ({len(TABLE13_STAGES)}), got {len(measured)}")
    rows = []
    for r, (params, macs) in zip(TABLE13_STAGES.itertuples(index=False), measured, strict=True):
        rows.append({"variant": r.variant, "paper params (M)": r.params_m, "ours params (M)": params / 1e6,
                     PAPER_GMACS_COLUMN: r.gflops, OURS_GMACS_COLUMN: macs / 1e9,
                     "paper top-1 err (%)": r.top1_err, "paper top-5 err (%)": r.top5_err})
    return pd.DataFrame(rows)


def table13_measured(model: str = "legacy_seresnet50") -> pd.DataFrame:
    """Table 13 beside our counts: SE kept only in the variant's stages, the others' SE blocks removed."""
    from senet_viz.analysis.cost import model_cost
    from senet_viz.gates.blocks import find_se_blocks
    from senet_viz.gates.census import build_on_meta
    from senet_viz.models.registry import get_spec

    net = build_on_meta(get_spec(model).build)  # counts need shapes only: no weights, no initialisation
    blocks = find_se_blocks(net)
    cost = model_cost(net, blocks, name=model)  # one count; each variant then removes the other stages' blocks
    measured = []
    for r in TABLE13_STAGES.itertuples(index=False):
        gone = cost.blocks[~cost.blocks["stage"].isin(r.se_stages)]
        measured.append((cost.params - int(gone["params"].sum()), cost.macs - int(gone["macs"].sum())))
    return table13_frame(measured)


def table10_measured(model: str = "legacy_seresnet50") -> pd.DataFrame:
    """Table 10 beside our parameter counts of the same network built with reduction ratio r."""
    from senet_viz.gates.census import build_on_meta
    from senet_viz.models.registry import get_spec

    rows = []
    for r in TABLE10_REDUCTION.itertuples(index=False):
        net = build_on_meta(lambda r=r: get_spec(model).build(reduction=int(r.reduction)))  # parameter counts only
        rows.append({"reduction r": int(r.reduction), "paper params (M)": r.params_m,
                     "ours params (M)": sum(p.numel() for p in net.parameters()) / 1e6,
                     "paper top-1 err (%)": r.top1_err, "paper top-5 err (%)": r.top5_err})
    return pd.DataFrame(rows)
