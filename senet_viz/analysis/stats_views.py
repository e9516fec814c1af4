"""Views of the streaming statistics: class tables, class means and std, histograms and quantiles, tidy frames of
bounded size, and the indices that summarise each block (:class:`GateViews`).

Indices per block (:meth:`GateStats.indices`, vectorised over classes), with ``m_kc`` the mean gate of channel c
over the images of class k, ``n_k`` the class sizes, ``m_c`` the all-image mean and ``v_kc`` the within-class
variance:

- **class specificity** (``specificity``): the share of gate variance explained by class, pooled over the
  block's channels (the correlation ratio eta^2: the sum of the channels' between-class variances over the sum of
  their total variances, not an average of per-channel ratios)::

      B_c = sum_k n_k (m_kc - m_c)^2 / N,   W_c = sum_k n_k v_kc / N,   specificity = sum_c B_c / sum_c (B_c + W_c)

  0 when every class gives the same gates, 1 when gates differ only between classes. It needs classes with
  two or more images (``specificity_method = "eta2"``). When every class has a single image (within-class
  spread unknown), the fallback ``"spread"`` is used: the spread of the class means relative to the largest
  spread values in [0, 1] with that mean could have::

      spread = mean_c std_k(m_kc) / mean_c sqrt(m_c (1 - m_c))

  also 0 for identical classes and 1 for classes split between gates 0 and 1. Both are reported as
  ``eta2`` and ``spread`` columns; ``specificity`` is eta2 where defined, else spread.
- **saturation**: share of channels whose all-image mean gate is >= ``threshold`` (default 0.9), plus
  ``mean_abs_1_minus_s`` = mean |1 - s| over all images and channels, and ``share_near_0`` = share of
  channels whose mean gate is <= 1 - threshold.
- **cross-class correlation** (``cross_class_corr``): mean Pearson correlation of the class-mean gate
  vectors over all pairs of classes (1: classes excite channels in the same pattern); computed as
  ``(|sum_k u_k|^2 - sum_k |u_k|^2) / (K (K - 1))`` over the unit centred vectors ``u_k``, without the K x K matrix.
- **constancy and class sizes**: ``all_std_max`` = the largest per-channel std over all images (about 0 when the
  block's gate is a constant, e.g. a hard-sigmoid clipped at 1), ``gate_min`` / ``gate_max`` over all images and
  channels, and ``min_class_count`` / ``max_class_count`` = images in the smallest / largest class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from senet_viz.analysis.stats_accumulate import (
    ALL,
    DEFAULT_THRESHOLD,
    MAX_DETAIL_CLASSES,
    BlockInfo,
    GateAccumulator,
)


@dataclass(frozen=True)
class ImagePlacement:
    """Where one image is compared (:meth:`GateStats.place_image`).

    ``group``: its class, or ``"all"`` when that is not a class of the statistics (or unknown). ``reference``: the
    group whose distribution it is drawn against: ``group``, or ``"all"`` when ``group`` holds only this image
    (``single``: no distribution to rank it in). ``within``: where channel percentiles are taken: ``reference``, or
    ``"all"`` when the reference's per-channel histograms are not kept. ``counts``: images per group ("all" too).
    """

    group: str
    reference: str
    within: str
    single: bool
    counts: dict[str, int]


def specificity(counts: np.ndarray, means: np.ndarray, m2: np.ndarray) -> dict:
    """eta^2 and spread of one block from the class counts (K,), means (K, C) and M2 (K, C)."""
    if len(counts) < 2:
        return {"specificity": float("nan"), "specificity_method": "needs 2+ classes", "eta2": float("nan"),
                "spread": float("nan")}
    n = counts.astype(np.float64)
    total = n.sum()
    grand = n @ means / total
    between = n @ (means - grand) ** 2 / total
    within = m2.sum(axis=0) / total  # sum_k n_k v_kc / N with v = M2 / n_k
    max_spread = np.sqrt(np.clip(grand * (1 - grand), 0, None)).mean()
    spread = float(means.std(axis=0).mean() / max_spread) if max_spread > 0 else 0.0
    has_within = bool((n >= 2).any())
    denom = between.sum() + within.sum()
    eta2 = float(between.sum() / denom) if has_within and denom > 0 else (0.0 if has_within else float("nan"))
    return {"specificity": eta2 if has_within else spread, "specificity_method": "eta2" if has_within else "spread",
            "eta2": eta2, "spread": spread}


def mean_pairwise_corr(vectors: np.ndarray) -> float:
    """Mean Pearson correlation over all pairs of rows, from the sum of unit centred rows (no K x K matrix)."""
    if len(vectors) < 2:
        return float("nan")
    centered = vectors - vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centered, axis=1)
    ok = norms > 0
    m = int(ok.sum())
    if m < 2:
        return 1.0  # constant vectors: identical patterns
    unit = centered[ok] / norms[ok, None]
    total = unit.sum(axis=0)
    return float((total @ total - (unit * unit).sum()) / (m * (m - 1)))


def hist_quantile(hist: np.ndarray, q: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Quantile(s) ``q`` (in [0, 1]) of values binned in ``hist``'s last axis (equal bins over [0, 1]).

    The mass of a bin is spread uniformly over it, so a quantile is linear within the bin where the cumulative
    count reaches ``q * total``. At the edges: ``q = 0`` is the lower edge of the first non-empty bin and ``q = 1``
    the upper edge of the last non-empty one (the support of the data, not 0 and 1); empty bins between them never
    hold a quantile; a histogram without any count gives NaN. A scalar ``q`` gives one value per histogram, a
    sequence one more axis.
    """
    h = np.asarray(hist, dtype=np.float64)
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if qs.ndim != 1 or np.any((qs < 0) | (qs > 1)) or np.isnan(qs).any():
        raise ValueError(f"quantiles must be in [0, 1], got {q!r}")
    bins = h.shape[-1]
    flat = h.reshape(-1, bins)
    cum = np.cumsum(flat, axis=1)
    total = cum[:, -1:]
    out = np.full((len(flat), len(qs)), np.nan)
    for j, qq in enumerate(qs):
        target = qq * total  # (M, 1)
        if qq == 0:
            first = np.argmax(flat > 0, axis=1)[:, None]
            out[:, j] = (first / bins)[:, 0]
        else:
            # The first bin whose cumulative count reaches the target (non-empty: the count grows there).
            idx = np.minimum((cum < target).sum(axis=1, keepdims=True), bins - 1)
            below = np.where(idx > 0, np.take_along_axis(cum, np.maximum(idx - 1, 0), axis=1), 0.0)
            inside = np.take_along_axis(flat, idx, axis=1)
            frac = np.where(inside > 0, (target - below) / np.where(inside > 0, inside, 1), 1.0)
            out[:, j] = ((idx + np.clip(frac, 0, 1)) / bins)[:, 0]
    out[total[:, 0] <= 0] = np.nan
    out = out.reshape(*h.shape[:-1], len(qs))
    return out[..., 0] if np.ndim(q) == 0 else out


class GateViews(GateAccumulator):
    """The statistics with their views and indices (every view reads a bounded part: chosen blocks and classes)."""

    def block_infos(self, blocks: str | Iterable[str] | None = None) -> list[BlockInfo]:
        """The named blocks (one name or several, in the order given; every block when None)."""
        if blocks is None:
            return list(self.blocks)
        names = [blocks] if isinstance(blocks, str) else list(blocks)
        return [self.block_info(n) for n in names]

    def class_table(self, block: str | None = None) -> pd.DataFrame:
        """One row per group of ``block`` (default the first): "all" first, then the classes in index order, with
        ``class_index``, ``class``, ``count`` and ``detail`` (per-channel histograms kept)."""
        if not self.blocks:
            return pd.DataFrame({"class_index": [], "class": [], "count": [], "detail": []})
        acc = self.accumulators[self.block_info(block).name if block else self.blocks[0].name]
        rows = acc.rows_of(None)
        ks = acc.classes[rows]
        return pd.DataFrame({
            "class_index": np.concatenate([[-1], ks]).astype(np.int64),
            "class": [ALL] + [self.class_label(int(k)) for k in ks],
            "count": np.concatenate([[acc.n], acc.count[rows]]).astype(np.int64),
            "detail": [True] + [int(k) in acc.detail for k in ks],
        })

    def largest_classes(self, k: int, block: str | None = None) -> list[str]:
        """The ``k`` classes with the most images (ties: lower class index first), largest first."""
        table = self.class_table(block)
        real = table[table["class_index"] >= 0]
        ranked = real.sort_values(["count", "class_index"], ascending=[False, True], kind="stable")
        return list(ranked["class"].head(k))

    def place_image(self, cls: str | None, block: str | None = None) -> ImagePlacement:
        """Where an image of class ``cls`` (None: unlabelled) is compared: see :class:`ImagePlacement`."""
        table = self.class_table(block).drop_duplicates("class").set_index("class")
        group = cls if cls is not None and cls in table.index else ALL
        single = group != ALL and int(table.loc[group, "count"]) == 1
        reference = ALL if single else group
        within = reference if bool(table.loc[reference, "detail"]) else ALL
        return ImagePlacement(group=group, reference=reference, within=within, single=single,
                              counts={c: int(n) for c, n in table["count"].items()})

    def image_vs_class(self, gates: Mapping[str, np.ndarray], cls: str, blocks: Iterable[str] | None = None
                       ) -> pd.DataFrame:
        """One image's mean gate per block (``gates``: block -> its C gates) beside the mean gate of class ``cls``
        (``"all"``: every image) over the block's channels; columns ``block``, ``mean gate (this image)`` and
        ``mean gate (<cls>)``, blocks in depth order (default: every block of ``gates``)."""
        names = [b.name for b in self.block_infos(blocks) if blocks is not None or b.name in gates]
        pooled = self.block_frame(names, [cls])
        pooled = pooled[pooled["class"] == cls].set_index("block")["mean"]
        return pd.DataFrame({"block": names,
                             "mean gate (this image)": [float(np.mean(gates[b])) for b in names],
                             f"mean gate ({cls})": [float(pooled[b]) for b in names]})

    def class_means(self, block: str, classes: str | Iterable[str | int] | None = None, include_all: bool = False
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(labels, counts, means)`` of ``block``: the mean gate per class and channel, ``means`` (K, C)."""
        acc = self.accumulators[self.block_info(block).name]
        rows = acc.rows_of(None if classes is None else self.resolve_classes(classes))
        labels = [self.class_label(int(k)) for k in acc.classes[rows]]
        counts, means = acc.count[rows], acc.means[rows]  # copies (rows index)
        if include_all:
            labels, counts, means = [*labels, ALL], np.append(counts, acc.n), np.vstack([means, acc.mean])
        return labels, counts, means

    def class_std(self, block: str, classes: str | Iterable[str | int] | None = None) -> np.ndarray:
        """Within-class std (ddof 1; 0 for a one-image class) per class and channel, (K, C), rows as class_means."""
        acc = self.accumulators[self.block_info(block).name]
        return acc.std(acc.rows_of(None if classes is None else self.resolve_classes(classes)))

    def hist(self, block: str, cls: str | int) -> np.ndarray | None:
        """Per-channel histogram (C, bins) of one class (``"all"`` always), or None where it is not kept."""
        acc = self.accumulators[self.block_info(block).name]
        if cls == ALL or (isinstance(cls, (int, np.integer)) and cls < 0):
            return acc.hist.copy()
        ks = self.resolve_classes([cls])
        d = acc.detail.get(ks[0]) if len(ks) == 1 else None
        return None if d is None else d.hist.copy()

    def frame(self, blocks: str | Iterable[str] | None = None, classes: str | Iterable[str | int] | None = None,
              hist: bool = True, include_all: bool = True) -> pd.DataFrame:
        """Tidy per-channel statistics: one row per (model, block, class, channel) of the chosen blocks and classes
        (default: all of them; ``"all"`` is included unless ``include_all=False``). ``hist`` holds the per-channel
        counts where they are kept (else None); ``min`` / ``max`` are NaN for a class without detailed statistics.
        Its size is blocks x classes x channels rows: pass ``blocks`` / ``classes`` for large statistics."""
        chosen = None if classes is None else self.resolve_classes(classes)
        parts = []
        for b in self.block_infos(blocks):
            acc = self.accumulators[b.name]
            if include_all and acc.n > 0:
                std = np.sqrt(acc.m2 / (acc.n - 1)) if acc.n > 1 else np.zeros(b.channels)
                parts.append(self._part(b, -1, acc.n, acc.mean, std, acc.min, acc.max,
                                        list(acc.hist) if hist else None))
            rows = acc.rows_of(chosen)
            stds = acc.std(rows)
            nan = np.full(b.channels, np.nan)
            for r, std in zip(rows, stds, strict=True):
                k = int(acc.classes[r])
                d = acc.detail.get(k)
                parts.append(self._part(b, k, int(acc.count[r]), acc.means[r], std,
                                        d.min if d is not None else nan, d.max if d is not None else nan,
                                        (list(d.hist) if d is not None else [None] * b.channels) if hist else None))
        columns = ["model", "block", "stage", "order", "class", "class_index", "channel", "count", "mean", "std",
                   "min", "max", "hist"]
        if not parts:
            return pd.DataFrame(columns=columns if hist else columns[:-1])
        return pd.concat(parts, ignore_index=True)

    def _part(self, b: BlockInfo, k: int, count: int, mean: np.ndarray, std: np.ndarray, lo: np.ndarray,
              hi: np.ndarray, hist: list | None) -> pd.DataFrame:
        data = {"model": self.model, "block": b.name, "stage": b.stage, "order": b.order,
                "class": self.class_label(k), "class_index": k, "channel": np.arange(b.channels), "count": count,
                "mean": np.array(mean, dtype=np.float64), "std": np.array(std, dtype=np.float64),
                "min": np.array(lo, dtype=np.float64), "max": np.array(hi, dtype=np.float64)}
        if hist is not None:
            data["hist"] = hist
        return pd.DataFrame(data)

    def block_frame(self, blocks: str | Iterable[str] | None = None,
                    classes: str | Iterable[str | int] | None = None, include_all: bool = True) -> pd.DataFrame:
        """One row per (block, class): the class's gates pooled over the block's channels — ``count`` (images),
        ``mean``, ``std`` (over images and channels), ``min``, ``max`` and ``hist`` (``bins`` counts). Kept for every
        class; feeds :func:`senet_viz.plots.distributions` without per-channel histograms."""
        chosen = None if classes is None else self.resolve_classes(classes)
        records = []
        for b in self.block_infos(blocks):
            acc = self.accumulators[b.name]
            if include_all and acc.n > 0:
                records.append(self._pooled(b, -1, acc.n, acc.mean, acc.m2, acc.min.min(), acc.max.max(),
                                            acc.hist.sum(axis=0)))
            for r in acc.rows_of(chosen):
                records.append(self._pooled(b, int(acc.classes[r]), int(acc.count[r]), acc.means[r], acc.m2s[r],
                                            acc.pooled_min[r], acc.pooled_max[r], acc.pooled_hist[r].copy()))
        columns = ["model", "block", "stage", "order", "class", "class_index", "channels", "count", "mean", "std",
                   "min", "max", "hist"]
        return pd.DataFrame(records, columns=columns)

    def _pooled(self, b: BlockInfo, k: int, n: int, mean: np.ndarray, m2: np.ndarray, lo: float, hi: float,
                hist: np.ndarray) -> dict:
        grand = float(mean.mean())
        # Sum of squares over images and channels: within-channel M2 plus each channel's offset from the grand mean.
        ss = float(m2.sum() + n * ((mean - grand) ** 2).sum())
        values = n * b.channels
        return {"model": self.model, "block": b.name, "stage": b.stage, "order": b.order, "class": self.class_label(k),
                "class_index": k, "channels": b.channels, "count": n, "mean": grand,
                "std": float(np.sqrt(ss / (values - 1))) if values > 1 else 0.0, "min": float(lo), "max": float(hi),
                "hist": np.asarray(hist, dtype=np.int64)}

    def tables(self) -> dict[str, pd.DataFrame]:
        """The statistics as tables of bounded size, by name, for export: ``channel_stats`` (one row per class and
        channel, without histograms, while there are at most ``MAX_DETAIL_CLASSES`` classes; past that the
        all-image rows only: 1,000 ImageNet classes x 15,104 channels would be 15 million rows) and, past that,
        ``class_block_stats`` (every class pooled per block, :meth:`block_frame` without histograms)."""
        if len(self.classes()) <= MAX_DETAIL_CLASSES:
            return {"channel_stats": self.frame(hist=False)}
        return {"channel_stats": self.frame(classes=[], hist=False),
                "class_block_stats": self.block_frame().drop(columns=["hist"])}

    def indices(self, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
        """One row per block: specificity, saturation and correlation indices (formulas in the module doc)."""
        rows = []
        for b in self.blocks:
            acc = self.accumulators[b.name]
            if acc.n == 0:
                continue
            counts = acc.count
            row = {"model": self.model, "block": b.name, "stage": b.stage, "order": b.order, "channels": b.channels,
                   "n_images": acc.n, "n_classes": int(acc.rows), "threshold": threshold}
            row.update(specificity(counts, acc.means, acc.m2s))
            row.update({
                "saturation": float((acc.mean >= threshold).mean()),
                "mean_abs_1_minus_s": acc.sum_abs_1m / (acc.n * b.channels),
                "share_near_0": float((acc.mean <= 1 - threshold).mean()),
                "mean_gate": float(acc.mean.mean()),
                "cross_class_corr": mean_pairwise_corr(acc.means),
                # From M2 and the running min/max only: no histogram is read.
                "all_std_max": float(np.sqrt(acc.m2 / (acc.n - 1)).max()) if acc.n > 1 else float("nan"),
                "gate_min": float(acc.min.min()),
                "gate_max": float(acc.max.max()),
                "min_class_count": int(counts.min()) if len(counts) else 0,
                "max_class_count": int(counts.max()) if len(counts) else 0,
            })
            rows.append(row)
        return pd.DataFrame(rows)
