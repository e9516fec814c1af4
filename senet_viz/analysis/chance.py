"""Chance levels and uncertainty for every per-block index: what label permutations give on the same images, and a
Poisson bootstrap interval over images (issue 20).

:func:`chance_table` (from per-image gates), for each block and each index of :data:`INDICES` (``eta2``, ``spread``,
``cross_class_corr``, ``selectivity_median``, ``saturation``; the observed values are computed by the functions
:meth:`GateStats.indices` and :func:`channels.block_summary` use, so they equal theirs on the same images):

- **permutation null**: the labels shuffled among the labelled images, class sizes kept, ``options.permutations``
  times (seeded; the same permutations for every block of one call); ``X_chance`` is the mean of the null,
  ``X_null_lo`` / ``X_null_hi`` its central ``level`` band and ``X_p = (k + 1) / (n + 1)`` the one-sided p, with k
  the null values >= the observed one (never 0). ``X_above_chance`` is ``X_p < 1 - level``. For
  ``cross_class_corr`` a class effect *lowers* the value (class patterns differ): read it against ``_null_lo``.
  ``eta2_chance_exact = (K - 1) / (N - 1)`` is the exact permutation expectation of eta2 (T is fixed under
  permutations and E[B] = T (K - 1) / (N - 1)). Saturation does not depend on classes: no null.
- **bootstrap**: ``options.bootstrap`` resamples with weights ~ Poisson(1) per image (seeded; the same weights for
  every block of one call, so the blocks' intervals are comparable). ``X_ci_lo`` / ``X_ci_hi``: the central
  ``level`` percentile interval of the resamples, shifted by the bootstrap bias (mean of the resamples - observed;
  eta2, spread and selectivity grow with within-class noise, and resampling adds more: the plain percentile
  interval of eta2 lies wholly above the observed value on pure noise with 5 images per class), clipped to the
  index's range. A class whose images all draw weight 0 is absent from that resample.
- ``cannot_tell``: why the class indices cannot be tested ("no labelled images", "fewer than 2 classes",
  "constant block", "one image per class", "fewer than 2 classes with 2+ images"); the permutation columns are
  then NaN and ``_above_chance`` False (observed values and intervals are still given where they exist). A
  constant block (no gate ever changes) has NaN class indices.

``options.max_images`` keeps a seeded subsample of whole classes (classes in random order while their images fit;
when fewer than two classes fit, a random subsample of images instead), so class sizes stay as they are.

Defaults: 99 permutations (smallest p 0.01) and 100 resamples, not 199 / 200. ``benchmarks/chance_scale.py``
(SE-ResNet-50's 16 blocks, 15,104 float32 gates, 5,000 images; CPU seconds on the shared 2-core development machine,
wall was 3-5x more under its load): 199 + 200 took 92 s for 1,000 classes x 5 images and 52 s for 100 x 50; the
defaults take 57 s and 26 s, ``max_images=1000`` 7 s and 3 s. Memory: one block at a time; the peak above the
caller's gates is about ``4 N C_max`` (the float32 centred copy) + ``4 N C_max`` (one permuted copy) + the
class-means chunk (<= 32 MB, plus one copy for a bootstrap chunk): measured 149 MB (1,000 x 5) and 137 MB (100 x 50)
at N = 5,000, C_max = 2,048; 17-29 MB with ``max_images=1000``.

:func:`exact_chance` needs only the streaming statistics (any number of classes): the exact eta2 expectation and
the spread of class means of the same sizes drawn at random from the same images. :func:`class_mean_intervals`
bootstraps chosen classes' per-channel means (Fig. 6 / Fig. 7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from senet_viz.analysis.chance_null import (
    CLASS_INDICES,
    BlockData,
    bootstrap_sums,
    class_layout,
    permutation_sums,
    prepare_block,
    replicate_chunk,
    replicate_indices,
)
from senet_viz.analysis.stats import GateStats
from senet_viz.analysis.stats_accumulate import DEFAULT_THRESHOLD

INDICES = ("eta2", "spread", "cross_class_corr", "selectivity_median", "saturation")
RANGES = {"eta2": (0.0, 1.0), "spread": (0.0, np.inf), "cross_class_corr": (-1.0, 1.0),
          "selectivity_median": (0.0, 1.0), "saturation": (0.0, 1.0)}
TIE_RTOL = 1e-6
"""Null values within this relative distance below the observed one count as ties (>=): float32 data, conservative."""

CIRCULAR_NOTE = ("Grouped by predicted class: the network's own output defines the classes, so this grouping is "
                 "circular and class specificity (eta², spread, selectivity) is inflated: read these numbers as an "
                 "upper bound, and group by labels where the images have them.")
"""Shown wherever per-class numbers of a grouping by predicted class appear (Compare, Depth and Channels pages,
the `channels` command)."""


@dataclass(frozen=True)
class ChanceOptions:
    """How :func:`chance_table` draws: permutations (p = (k + 1) / (n + 1)), Poisson bootstrap resamples, the seed,
    the central share ``level`` of the null band and interval, and an optional subsample of at most ``max_images``
    labelled images (whole classes)."""

    permutations: int = 99
    bootstrap: int = 100
    seed: int = 0
    level: float = 0.95
    max_images: int | None = None


def _columns() -> list[str]:
    cols = ["block", "n_images", "n_classes", "min_class_count", "max_class_count", "n_permutations", "n_bootstrap",
            "seed", "level"]
    for x in INDICES:
        cols += [x, f"{x}_chance", f"{x}_null_lo", f"{x}_null_hi", f"{x}_p", f"{x}_ci_lo", f"{x}_ci_hi",
                 f"{x}_above_chance"]
        if x == "eta2":
            cols.append("eta2_chance_exact")
    return [*cols, "cannot_tell"]


def _subsample(labels: np.ndarray, max_images: int | None, rng: np.random.Generator) -> np.ndarray:
    """Rows (ascending) of the labelled images kept: all, or whole classes in random order while they fit."""
    rows = np.flatnonzero(labels >= 0)
    if max_images is None or len(rows) <= max_images:
        return rows
    classes, sizes = np.unique(labels[rows], return_counts=True)
    shuffled = rng.permutation(len(classes))
    fits = np.cumsum(sizes[shuffled]) <= max_images
    keep = classes[shuffled[:int(np.argmin(fits)) if not fits.all() else len(fits)]]
    if len(keep) >= 2:
        return rows[np.isin(labels[rows], keep)]
    return np.sort(rng.choice(rows, size=int(max(max_images, 0)), replace=False))


def _data_reason(counts: np.ndarray) -> str:
    if counts.sum() == 0:
        return "no labelled images"
    if len(counts) < 2:
        return "fewer than 2 classes"
    if counts.max() == 1:
        return "one image per class"
    if (counts >= 2).sum() < 2:
        return "fewer than 2 classes with 2+ images"
    return ""


def _run(data: BlockData, kind: str, draws: np.ndarray, has_within: bool, threshold: float
         ) -> dict[str, np.ndarray]:
    """The indices of every replicate of ``draws`` (permutations or weights), chunk by chunk."""
    parts: dict[str, list[np.ndarray]] = {x: [] for x in INDICES}
    step = replicate_chunk(data, len(draws))
    for a in range(0, len(draws), step):
        chunk = draws[a:a + step]
        sums = permutation_sums(data, chunk) if kind == "perm" else bootstrap_sums(data, chunk)
        for x, v in replicate_indices(*sums, data.mean, has_within, threshold).items():
            parts[x].append(v)
    return {x: np.concatenate(v) if v else np.empty(0) for x, v in parts.items()}


def _interval(boot: np.ndarray, obs: float, level: float, bounds: tuple[float, float]) -> tuple[float, float]:
    """The bootstrap percentile interval shifted by the bootstrap's bias (mean of the resamples - observed), kept in
    the index's range: the class indices are noise-inflated, and resampling inflates them once more, so the plain
    percentile interval of e.g. eta2 lies above the observed value on data without any class effect."""
    finite = boot[np.isfinite(boot)]
    if not finite.size or not np.isfinite(obs):
        return float("nan"), float("nan")
    lo, hi = _quantiles(finite, level)
    bias = float(finite.mean()) - obs
    return float(np.clip(lo - bias, *bounds)), float(np.clip(hi - bias, *bounds))


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def chance_table(gates: Mapping[str, np.ndarray], labels: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                 options: ChanceOptions = ChanceOptions(), blocks: Sequence[str] | None = None) -> pd.DataFrame:
    """Per block (order of ``blocks``, default the mapping's): every index of :data:`INDICES` observed, beside its
    permutation null and bootstrap interval (columns and rules in the module doc). ``gates``: block -> (N, C)
    per-image gates; ``labels`` (N,) class indices, -1 = unlabelled (left out). ``n_permutations`` /
    ``n_bootstrap``: the replicates drawn for that block (0 where the test was not run, e.g. ``cannot_tell``)."""
    if not 0 < options.level < 1:
        raise ValueError(f"level must be in (0, 1), got {options.level}")
    names = list(gates) if blocks is None else list(blocks)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    for name in names:
        g = gates[name]
        if g.ndim != 2 or g.shape[0] != len(labels):
            raise ValueError(f"{name}: gates of shape {g.shape} for {len(labels)} labels, expected (N, C)")
    sub_seed, perm_seed, boot_seed = np.random.SeedSequence(options.seed).spawn(3)
    rows = _subsample(labels, options.max_images, np.random.default_rng(sub_seed))
    y = labels[rows]
    counts = np.unique(y, return_counts=True)[1]
    reason = _data_reason(counts)
    n = len(rows)
    perms = np.empty((0, n), np.int64)
    if not reason and options.permutations > 0:
        base = np.tile(np.arange(n, dtype=np.int32 if n < 2**31 else np.int64), (options.permutations, 1))
        perms = np.random.default_rng(perm_seed).permuted(base, axis=1, out=base)
    weights = np.empty((0, n), np.float32)
    if n and options.bootstrap > 0:
        # Drawn per image in image order, kept in the blocks' layout order (the same weights in every block).
        weights = np.ascontiguousarray(_poisson_weights(boot_seed, options.bootstrap, n)[:, class_layout(y)[0]])
    has_within = bool((counts >= 2).any())
    k = len(counts)
    eta2_exact = (k - 1) / (n - 1) if k >= 2 and has_within and n >= 2 else float("nan")
    out = []
    for name in names:
        row: dict = {"block": name, "n_images": n, "n_classes": k,
                     "min_class_count": int(counts.min()) if k else 0, "max_class_count": int(counts.max()) if k else 0,
                     "n_permutations": 0, "n_bootstrap": 0, "seed": options.seed, "level": options.level}
        nulls: dict[str, np.ndarray] = {}
        boots: dict[str, np.ndarray] = {}
        observed = dict.fromkeys(INDICES, float("nan"))
        block_reason = reason
        if n:
            data = prepare_block(gates[name], rows, y, threshold)
            observed = dict(data.observed)
            if data.constant and reason not in ("fewer than 2 classes",):
                block_reason = "constant block"
                observed.update(dict.fromkeys(CLASS_INDICES, float("nan")))
            if not block_reason and len(perms):
                nulls = _run(data, "perm", perms, has_within, threshold)
                row["n_permutations"] = len(perms)
            if len(weights):
                boots = _run(data, "boot", weights, has_within, threshold)
                row["n_bootstrap"] = len(weights)
            del data
        for x in INDICES:
            obs = observed[x]
            null = nulls.get(x, np.empty(0)) if x != "saturation" else np.empty(0)
            null = null[np.isfinite(null)]
            if null.size and np.isfinite(obs):
                lo, hi = _quantiles(null, options.level)
                k_ge = int((null >= obs - TIE_RTOL * abs(obs) - 1e-12).sum())
                p = (k_ge + 1) / (null.size + 1)
                chance = float(null.mean())
            else:
                lo = hi = p = chance = float("nan")
            ci_lo, ci_hi = _interval(boots.get(x, np.empty(0)), obs, options.level, RANGES[x])
            row.update({x: obs, f"{x}_chance": chance, f"{x}_null_lo": lo, f"{x}_null_hi": hi, f"{x}_p": p,
                        f"{x}_ci_lo": ci_lo, f"{x}_ci_hi": ci_hi,
                        f"{x}_above_chance": bool(np.isfinite(p) and p < 1 - options.level)})
        row["eta2_chance_exact"] = eta2_exact
        row["cannot_tell"] = block_reason
        out.append(row)
    return pd.DataFrame(out, columns=_columns())


def _poisson_weights(seed: np.random.SeedSequence, resamples: int, n: int) -> np.ndarray:
    """(resamples, n) float32 Poisson(1) weights, one column per image in image order."""
    return np.random.default_rng(seed).poisson(1.0, (resamples, n)).astype(np.float32)


def exact_chance(stats: GateStats) -> pd.DataFrame:
    """Per block, from the streaming statistics alone: ``eta2_chance_exact = (K - 1) / (N - 1)`` (NaN without two
    classes or a class of 2+ images) and ``spread_chance``, the spread of class means of the same sizes drawn at
    random from the same images: with ``var_c`` the population variance of channel c over the N images,
    ``E[(m_kc - m_c)^2] = var_c (N - n_k) / (n_k (N - 1))`` and, correcting for the mean of the class means,
    ``E[std_k(m_kc)^2] = var_c N (K - 1) sum_k(1 / n_k) / (K^2 (N - 1))``; ``spread_chance`` is
    ``mean_c sqrt(that) / mean_c sqrt(m_c (1 - m_c))`` (``sqrt E[.]`` >= ``E[sqrt .]``: slightly above the
    permutation mean for few classes)."""
    rows = []
    for b in stats.blocks:
        _, counts, means = stats.class_means(b.name)
        n = counts.astype(np.float64)
        total, k = float(n.sum()), len(n)
        eta2 = spread = float("nan")
        if k >= 2 and total >= 2:
            std = stats.class_std(b.name)
            m2 = std * std * np.maximum(n - 1, 0)[:, None]
            grand = n @ means / total
            var = (m2.sum(axis=0) + n @ (means - grand) ** 2) / total
            if (n >= 2).any():
                eta2 = (k - 1) / (total - 1)
            expected = var * total * (k - 1) * float((1 / n).sum()) / (k * k * (total - 1))
            max_spread = float(np.sqrt(np.clip(grand * (1 - grand), 0, None)).mean())
            spread = float(np.sqrt(np.clip(expected, 0, None)).mean() / max_spread) if max_spread > 0 else 0.0
        rows.append({"block": b.name, "eta2_chance_exact": eta2, "spread_chance": spread})
    return pd.DataFrame(rows, columns=["block", "eta2_chance_exact", "spread_chance"])


def class_mean_intervals(gates: np.ndarray, labels: np.ndarray, classes: Sequence[int],
                         options: ChanceOptions = ChanceOptions()) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval (central ``options.level``) of each chosen class's per-channel mean gate:
    ``(lo, hi)``, each (len(classes), C); rows NaN for a class with fewer than 2 images. Poisson(1) weights per
    labelled image, seeded as in :func:`chance_table` (the same weights per image when ``max_images`` is None,
    which is not used here: every labelled image counts)."""
    gates = np.asarray(gates)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if gates.ndim != 2 or len(gates) != len(labels):
        raise ValueError(f"gates of shape {gates.shape} for {len(labels)} labels, expected (N, C)")
    c = gates.shape[1]
    lo, hi = np.full((len(classes), c), np.nan), np.full((len(classes), c), np.nan)
    rows = np.flatnonzero(labels >= 0)
    if not len(rows) or options.bootstrap <= 0:
        return lo, hi
    boot_seed = np.random.SeedSequence(options.seed).spawn(3)[2]
    weights = _poisson_weights(boot_seed, options.bootstrap, len(rows)).astype(np.float64)
    y = labels[rows]
    q = [(1 - options.level) / 2, (1 + options.level) / 2]
    for i, cls in enumerate(classes):
        members = np.flatnonzero(y == int(cls))
        if len(members) < 2:
            continue
        w = weights[:, members]
        total = w.sum(axis=1)
        ok = total > 0
        means = w[ok] @ np.asarray(gates[rows[members]], np.float64) / total[ok, None]
        lo[i], hi[i] = np.quantile(means, q, axis=0)
    return lo, hi
