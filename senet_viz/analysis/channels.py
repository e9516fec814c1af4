"""Class selectivity of single SE channels, from the streaming statistics (:class:`senet_viz.analysis.stats.GateStats`).

For one block with ``K`` classes and ``C`` channels, ``m_kc`` the mean gate of channel c over the images of class k
(``stats.class_means``), ``n_k`` the class sizes and ``v_kc`` the within-class variance (``stats.class_std``):

- **selectivity** (Morcos et al. 2018, "On the importance of single directions for generalization")::

      SI_c = (mu_max - mu_rest) / (mu_max + mu_rest),   mu_max = max_k m_kc,   mu_rest = mean of m_kc over k != argmax

  0 when every class has the same mean gate, 1 when the channel opens for one class only (the others' mean gate
  is 0). Gates are in [0, 1], so SI is in [0, 1]; a channel closed for every class (all means 0) gets 0.
  ``preferred`` is the class with the largest mean; :func:`channel_table` gives none (``preferred_class`` None,
  ``preferred_index`` -1) when the top two class means tie within :data:`TIE_TOL` (e.g. a constant channel).
- **eta2** per channel: the share of the channel's gate variance explained by class (the correlation ratio)::

      eta2_c = sum_k n_k (m_kc - m_c)^2 / (sum_k n_k (m_kc - m_c)^2 + sum_k (n_k - 1) v_kc)

  NaN when no class has two images (the within-class spread is unknown: every class mean is one image).

Both use the class means (and M2) the statistics keep for every class, so they work at ImageNet scale (1,000
classes x 15,104 SE-ResNet-50 channels: one block's (K, C) means at a time, never per-image arrays). With one image
per class, a "class mean" is a single image: SI then measures how much one image stands out on that channel, not
tuning to a class (:func:`block_summary` says so in ``class_means_from``).

Per block (:func:`block_summary`): the distribution of SI (and eta2) across the block's channels, median and
quartiles; :func:`depth_trend` tests whether the median rises with depth (Spearman's rho against block position,
with an exact permutation p-value up to 10 blocks, else a Monte Carlo one: :func:`senet_viz.analysis.correlation.
spearman`), leaving out blocks whose gate never changes (switched off or constant:
:mod:`senet_viz.analysis.verdict_blocks`) and, given a chance table, setting each block beside its chance level.
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
from senet_viz.analysis.verdict_blocks import inert_of_row

SUMMARY_QUANTILES = (0.25, 0.5, 0.75)
TIE_TOL = 1e-12
"""Class means closer than this to the largest one tie: the channel then has no preferred class."""
EXACT_MAX = 10
"""Up to this many blocks the trend's permutation p is exact (every order)."""


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
    its images ``preferred_count``; None / -1 / 0 when the top class means tie), ``mu_max``, ``mu_rest``, ``eta2``,
    ``mean_gate`` (over the classes' images) and the number of classes; over every class of the statistics, or
    ``classes``."""
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
    tie = np.zeros(info.channels, bool)
    if k >= 2:  # the second-largest mean equals the largest: no preferred class (e.g. a constant channel)
        top2 = np.partition(means, k - 2, axis=0)[k - 2:]
        tie = top2[1] - top2[0] <= TIE_TOL
    table = pd.DataFrame({
        "model": stats.model, "block": info.name, "stage": info.stage, "order": info.order,
        "channel": np.arange(info.channels), "selectivity": si,
        "preferred_class": [None if t else names[p] for p, t in zip(pref, tie, strict=True)] if k
        else [None] * info.channels,
        "preferred_index": np.where(tie, -1, ids[pref]) if k else np.full(info.channels, -1),
        "preferred_count": np.where(tie, 0, counts[pref]) if k else np.zeros(info.channels, np.int64),
        "mu_max": mu_max, "mu_rest": mu_rest, "eta2": eta_squared(counts, means, m2), "mean_gate": mean_gate,
        "n_classes": k,
    })
    return table, counts


def preferred_text(value: object) -> str:
    """A channel's ``preferred_class`` for display: "none (class means tie)" where it has none."""
    return "none (class means tie)" if value is None or pd.isna(value) else str(value)


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
    distinct preferred classes the channels have, the class sizes, ``class_means_from``: "single images" when
    every class has one image (then a class mean is one image), else "classes", and whether the gate is constant:
    ``all_std_max`` (largest per-channel std over all images), ``gate_min`` / ``gate_max``."""
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
        acc = stats.accumulators[name]
        row.update({"all_std_max": float(np.sqrt(acc.m2 / (acc.n - 1)).max()) if acc.n > 1 else float("nan"),
                    "gate_min": float(acc.min.min()) if acc.n else float("nan"),
                    "gate_max": float(acc.max.max()) if acc.n else float("nan")})
        for column in ("selectivity", "eta2"):
            values = table[column].to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            q = np.quantile(finite, SUMMARY_QUANTILES) if finite.size else [np.nan] * len(SUMMARY_QUANTILES)
            row.update({f"{column}_q25": float(q[0]), f"{column}_median": float(q[1]), f"{column}_q75": float(q[2]),
                        f"{column}_mean": float(finite.mean()) if finite.size else float("nan")})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("order", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------ the trend with depth


def depth_trend(summary: pd.DataFrame, column: str = "selectivity_median", chance: pd.DataFrame | None = None
                ) -> dict:
    """Does ``column`` of a :func:`block_summary` rise with depth? Spearman's rho against block position (``order``)
    with its two-sided permutation p-value (exact up to :data:`EXACT_MAX` blocks), the first and last blocks'
    values and the number of blocks used.

    Blocks whose gate is the same for every image (switched off or constant; known when the summary has
    ``all_std_max``, ``gate_min``, ``gate_max``) are left out: ``left_out`` lists them as ``{"block", "reason"}``.
    With ``chance`` (:func:`senet_viz.analysis.chance.chance_table`: ``<column>_chance`` and ``<column>_above_chance``
    per block) the result also holds ``chance`` and ``above_chance`` (block -> value, for the blocks used),
    ``n_above_chance``, and ``excess_rho`` / ``excess_p`` / ``excess_verdict``: the same test on the value minus its
    chance level (the class tuning beyond what each block's gate distribution gives with shuffled labels)."""
    table = summary.sort_values("order", kind="stable")
    inert = [inert_of_row(r) for _, r in table.iterrows()]
    left_out = [{"block": b.block, "reason": b.reason} for b in inert if b is not None]
    table = table[[b is None for b in inert]]
    order = table["order"].to_numpy(dtype=np.float64)
    values = table[column].to_numpy(dtype=np.float64)
    rho, p = spearman(order, values, exact_max=EXACT_MAX)
    out = {"column": column, "rho": rho, "p_value": p, "n_blocks": int(len(table)),
           "first": float(values[0]) if len(values) else float("nan"),
           "last": float(values[-1]) if len(values) else float("nan"), "verdict": _trend_word(rho, p),
           "left_out": left_out}
    if chance is not None:
        by_block = chance.set_index(chance["block"].astype(str))
        blocks = table["block"].astype(str).tolist()

        def per_block(col: str, fill: object) -> list:
            return [by_block.at[b, col] if col in by_block and b in by_block.index else fill for b in blocks]

        base = np.array(per_block(f"{column}_chance", np.nan), dtype=np.float64)
        above = [bool(a) for a in per_block(f"{column}_above_chance", False)]
        ex_rho, ex_p = spearman(order, values - base, exact_max=EXACT_MAX)
        out.update({"chance": dict(zip(blocks, base.tolist(), strict=True)),
                    "above_chance": dict(zip(blocks, above, strict=True)), "n_above_chance": int(sum(above)),
                    "excess_rho": ex_rho, "excess_p": ex_p, "excess_verdict": _trend_word(ex_rho, ex_p)})
    return out


def left_out_text(trend: dict) -> str:
    """The blocks a :func:`depth_trend` left out, in words ("" when none)."""
    out = trend.get("left_out") or []
    return "" if not out else "left out (gate never changes): " + ", ".join(
        f"{b['block']} {b['reason']}" for b in out)


def _trend_word(rho: float, p: float) -> str:
    if not np.isfinite(rho):
        return "not enough blocks"
    return ("rises with depth" if rho > 0 and p < 0.05 else "falls with depth" if rho < 0 and p < 0.05
            else "no significant trend with depth")


# ------------------------------------------------------------------------------------------ from extract files


def stats_for_extract(paths: str | Path | Sequence[str | Path], blocks: Sequence[str] | None = None,
                      by: str = "labels", batch_rows: int = 4096) -> GateStats:
    """Per-class statistics of ``blocks`` (default: all) from ``extract`` shards, streamed in batches of
    ``batch_rows`` images and one block column at a time, grouped by the stored labels or by the stored top-1
    prediction (``by="prediction"``; classes are then the file's class names, which ``extract`` takes from the
    model). Memory: the statistics and one batch of one block. Per-channel histograms are kept for no class
    (:func:`senet_viz.analysis.stats.stats_from_parquet` with ``detail_classes=[]``)."""
    return stats_from_parquet(paths, detail_classes=[], chunk=batch_rows, blocks=blocks, by=by)
