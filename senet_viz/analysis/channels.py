"""Class selectivity of single SE channels, from the streaming statistics (:class:`senet_viz.analysis.stats.GateStats`).

For one block with ``K`` classes and ``C`` channels, ``m_kc`` the mean gate of channel c over the images of class k
(``stats.class_means``), ``n_k`` the class sizes and ``v_kc`` the within-class variance (``stats.class_std``):

- **selectivity** (Morcos et al. 2018, "On the importance of single directions for generalization")::

      SI_c = (mu_max - mu_rest) / (mu_max + mu_rest),   mu_max = max_k m_kc,   mu_rest = mean of m_kc over k != argmax

  0 when every class has the same mean gate, 1 when the channel opens for one class only (the others' mean gate
  is 0). Gates are in [0, 1], so SI is in [0, 1]; a channel closed for every class (all means 0) gets 0.
  ``preferred`` is the class with the largest mean (the lower class index on a tie).
- **eta2** per channel: the share of the channel's gate variance explained by class (the correlation ratio)::

      eta2_c = sum_k n_k (m_kc - m_c)^2 / (sum_k n_k (m_kc - m_c)^2 + sum_k (n_k - 1) v_kc)

  NaN when no class has two images (the within-class spread is unknown: every class mean is one image).

Both use the class means (and M2) the statistics keep for every class, so they work at ImageNet scale (1,000
classes x 15,104 SE-ResNet-50 channels: one block's (K, C) means at a time, never per-image arrays). With one image
per class, a "class mean" is a single image: SI then measures how much one image stands out on that channel, not
tuning to a class (:func:`block_summary` says so in ``class_means_from``).

Per block (:func:`block_summary`): the distribution of SI (and eta2) across the block's channels, median and
quartiles; :func:`depth_trend` tests whether the median rises with depth (Spearman's rho against block position,
with an exact or Monte Carlo permutation p-value: :func:`senet_viz.analysis.correlation.spearman`).
:func:`most_selective` ranks the channels of a block. :func:`stats_for_extract` streams the class statistics of
chosen blocks from ``extract`` Parquet shards, grouped by label or by predicted class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from senet_viz.analysis.correlation import spearman
from senet_viz.analysis.stats import GateStats, stats_from_parquet

SUMMARY_QUANTILES = (0.25, 0.5, 0.75)


# ------------------------------------------------------------------------------------------ indices from arrays


def selectivity_index(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Morcos et al.'s selectivity of every channel from class means ``(K, C)``: ``(SI (C,), preferred row (C,))``.

    With fewer than two classes SI is NaN (nothing to compare)."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2:
        raise ValueError(f"class means must be (classes, channels), got shape {means.shape}")
    k, c = means.shape
    if k == 0:
        return np.full(c, np.nan), np.zeros(c, np.int64)
    preferred = means.argmax(axis=0)
    if k < 2:
        return np.full(c, np.nan), preferred
    mu_max = means.max(axis=0)
    mu_rest = (means.sum(axis=0) - mu_max) / (k - 1)
    denom = mu_max + mu_rest
    safe = np.where(denom > 0, denom, 1.0)
    si = np.where(denom > 0, (mu_max - mu_rest) / safe, 0.0)
    return si, preferred


def eta_squared(counts: np.ndarray, means: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Share of each channel's gate variance explained by class, from class sizes ``(K,)``, means and M2 ``(K, C)``
    (M2: the sum of squared deviations from the class mean). NaN per channel when no class has two images; 0 for a
    channel whose gate never varies."""
    n = np.asarray(counts, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    c = means.shape[1] if means.ndim == 2 else 0
    if len(n) < 2 or not (n >= 2).any():
        return np.full(c, np.nan)
    grand = n @ means / n.sum()
    dev = means - grand
    dev *= dev
    between = n @ dev
    total = between + np.asarray(m2, dtype=np.float64).sum(axis=0)
    return np.where(total > 0, between / np.where(total > 0, total, 1.0), 0.0)


# ------------------------------------------------------------------------------------------ from the statistics


def _class_rows(stats: GateStats, block: str, classes: Iterable[str | int] | None
                ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(names, class indices, counts, means, M2) of ``block``'s classes, rows in class-index order."""
    chosen = None if classes is None else stats.resolve_classes(classes)
    names, counts, means = stats.class_means(block, chosen)
    std = stats.class_std(block, chosen)
    m2 = std * std * np.maximum(counts.astype(np.float64) - 1, 0)[:, None]
    table = stats.class_table(block)
    index_of = dict(zip(table["class"], table["class_index"], strict=True))
    ids = np.array([int(index_of[c]) for c in names], np.int64)
    return names, ids, counts, means, m2


def channel_table(stats: GateStats, block: str, classes: Iterable[str | int] | None = None) -> pd.DataFrame:
    """One row per channel of ``block``: ``selectivity``, ``preferred_class`` (its name, ``preferred_index``, and
    its images ``preferred_count``), ``mu_max``, ``mu_rest``, ``eta2``, ``mean_gate`` (over the classes' images) and
    the number of classes; over every class of the statistics, or ``classes``."""
    return _table(stats, block, classes)[0]


def _table(stats: GateStats, block: str, classes: Iterable[str | int] | None) -> tuple[pd.DataFrame, np.ndarray]:
    info = stats.block_info(block)
    names, ids, counts, means, m2 = _class_rows(stats, block, classes)
    si, pref = selectivity_index(means)
    k = len(names)
    if k:
        mu_max = means.max(axis=0)
        mu_rest = (means.sum(axis=0) - mu_max) / max(k - 1, 1)
        mean_gate = counts.astype(np.float64) @ means / max(int(counts.sum()), 1)
    else:
        mu_max = mu_rest = mean_gate = np.full(info.channels, np.nan)
    table = pd.DataFrame({
        "model": stats.model, "block": info.name, "stage": info.stage, "order": info.order,
        "channel": np.arange(info.channels), "selectivity": si,
        "preferred_class": [names[p] for p in pref] if k else [None] * info.channels,
        "preferred_index": ids[pref] if k else np.full(info.channels, -1),
        "preferred_count": counts[pref] if k else np.zeros(info.channels, np.int64),
        "mu_max": mu_max, "mu_rest": mu_rest, "eta2": eta_squared(counts, means, m2), "mean_gate": mean_gate,
        "n_classes": k,
    })
    return table, counts


def most_selective(table: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """The ``n`` channels of a :func:`channel_table` with the highest selectivity (ties: lower channel first)."""
    ranked = table.sort_values(["selectivity", "channel"], ascending=[False, True], kind="stable",
                               na_position="last")
    out = ranked.head(int(n)).reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def block_summary(stats: GateStats, blocks: str | Iterable[str] | None = None,
                  classes: Iterable[str | int] | None = None) -> pd.DataFrame:
    """One row per block (depth order): the distribution of the channels' selectivity (``selectivity_q25``,
    ``selectivity_median``, ``selectivity_q75``, ``selectivity_mean``) and of their eta2 (same columns), how many
    distinct preferred classes the channels have, the class sizes, and ``class_means_from``: "single images" when
    every class has one image (then a class mean is one image), else "classes"."""
    names = [b.name for b in stats.blocks] if blocks is None else (
        [blocks] if isinstance(blocks, str) else list(blocks))
    rows = []
    for name in names:
        table, counts = _table(stats, name, classes)
        info = stats.block_info(name)
        row = {"model": stats.model, "block": name, "stage": info.stage, "order": info.order,
               "channels": info.channels, "n_classes": len(counts), "n_images": int(counts.sum()),
               "min_class_count": int(counts.min()) if len(counts) else 0,
               "max_class_count": int(counts.max()) if len(counts) else 0,
               "class_means_from": "single images" if len(counts) and counts.max() == 1 else "classes",
               "preferred_classes": int(table["preferred_class"].nunique())}
        for column in ("selectivity", "eta2"):
            values = table[column].to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            q = np.quantile(finite, SUMMARY_QUANTILES) if finite.size else [np.nan] * len(SUMMARY_QUANTILES)
            row.update({f"{column}_q25": float(q[0]), f"{column}_median": float(q[1]), f"{column}_q75": float(q[2]),
                        f"{column}_mean": float(finite.mean()) if finite.size else float("nan")})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("order", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------ the trend with depth


def depth_trend(summary: pd.DataFrame, column: str = "selectivity_median") -> dict:
    """Does ``column`` of a :func:`block_summary` rise with depth? Spearman's rho against block position (``order``)
    with its permutation p-value, the first and last blocks' values and the number of blocks."""
    table = summary.sort_values("order", kind="stable")
    rho, p = spearman(table["order"].to_numpy(), table[column].to_numpy())
    values = table[column].to_numpy(dtype=np.float64)
    verdict = "not enough blocks" if not np.isfinite(rho) else (
        "rises with depth" if rho > 0 and p < 0.05 else "falls with depth" if rho < 0 and p < 0.05
        else "no significant trend with depth")
    return {"column": column, "rho": rho, "p_value": p, "n_blocks": int(len(table)),
            "first": float(values[0]) if len(values) else float("nan"),
            "last": float(values[-1]) if len(values) else float("nan"), "verdict": verdict}


# ------------------------------------------------------------------------------------------ from extract files


def stats_for_extract(paths: str | Path | Sequence[str | Path], blocks: Sequence[str] | None = None,
                      by: str = "labels", batch_rows: int = 4096) -> GateStats:
    """Per-class statistics of ``blocks`` (default: all) from ``extract`` shards, streamed in batches of
    ``batch_rows`` images and one block column at a time, grouped by the stored labels or by the stored top-1
    prediction (``by="prediction"``; classes are then the file's class names, which ``extract`` takes from the
    model). Memory: the statistics and one batch of one block. Per-channel histograms are kept for no class
    (:func:`senet_viz.analysis.stats.stats_from_parquet` with ``detail_classes=[]``)."""
    return stats_from_parquet(paths, detail_classes=[], chunk=batch_rows, blocks=blocks, by=by)
