"""The engine behind :mod:`senet_viz.analysis.chance`: one block's labelled gates laid out by class, their observed
indices (computed by the very functions :meth:`GateStats.indices` and :func:`channels.block_summary` use), and the
class indices of many *replicates* at once — label permutations or Poisson bootstrap resamples — from weighted class
sums.

Layout (:class:`BlockData`): images sorted by (class size, class), so the classes of one size are contiguous and a
class sum is a ``reshape(classes, size, C).sum(1)``, no ``reduceat``. The data are kept centred (``x - m``, ``m``
the all-image mean) in float32; every class sum is accumulated in float64.

A replicate r is given by its class weights ``n[r, k] = sum_i w_ri [class_r(i) = k]``, class means
``d[r, k] = sum_i w_ri [class_r(i) = k] (x_i - m) / n[r, k]`` (relative to m) and total
``T[r] = sum_i w_ri |x_i - m|^2``: a permutation has w = 1 and the classes shuffled; a bootstrap resample keeps the
classes and draws w ~ Poisson(1) (a class whose weights are all 0 is absent from that resample, d = 0).
:func:`replicate_indices` then gives, per replicate, with ``g = sum_k n_k d_k / N`` (replicate mean - m)::

    eta2 = (sum_k n_k |d_k|^2 - N |g|^2) / (T - N |g|^2)
    spread = mean_c std_k(d_kc) / mean_c sqrt((m + g)(1 - m - g))
    cross_class_corr, selectivity_median: the formulas of stats_views.mean_pairwise_corr / channels.selectivity_index
        on the class means m + d_k, with the row norms expanded (|a + d_k - dbar_k|^2 with a = m - mean(m)) so that no
        (K, C) array is made beyond d
    saturation = share of channels with m + g >= threshold

which are the reference formulas rewritten (tests check the identity replicate against them).

Memory per block: the float32 centred copy (4 N C bytes) and, while it is made, one float64 class chunk; a
replicate chunk holds at most :data:`CHUNK_BYTES` of float64 class means (one more such array in
:func:`replicate_indices` for a bootstrap chunk with an absent class); a permutation gathers one (N, C) float32 copy
at a time. All reductions over (R, K, C) are einsum / ufunc reductions (stacked ``matmul`` with a vector operand is
an order of magnitude slower here).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from senet_viz.analysis.channels import selectivity_index
from senet_viz.analysis.stats_views import mean_pairwise_corr, specificity

CHUNK_BYTES = 32 << 20
"""Budget of one replicate chunk's float64 class sums (and of one observed-statistics class chunk)."""
CLASS_INDICES = ("eta2", "spread", "cross_class_corr", "selectivity_median")


@dataclass
class BlockData:
    """One block's labelled images, sorted by (class size, class): centred float32 gates and the class layout."""

    xc: np.ndarray  # (N, C) float32, x - m, rows in layout order
    mean: np.ndarray  # (C,) float64 all-image mean m
    row_ss: np.ndarray  # (N,) float64 |x_i - m|^2
    counts: np.ndarray  # (K,) int64 class sizes, layout order
    groups: list[tuple[int, int, int, int, int]]  # (row start, row end, class start, class end, size)
    constant: bool  # every channel's gate is the same for every image
    observed: dict[str, float]


def class_layout(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int, int]]]:
    """``(order, counts, groups)``: the row order that sorts images by (class size, class), the class sizes in
    that order and the runs of equal size (rows ``[r0, r1)``, classes ``[k0, k1)``, size)."""
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    class_order = np.lexsort((classes, sizes))  # by size, then class index
    rank = np.empty(len(classes), np.int64)
    rank[class_order] = np.arange(len(classes))
    order = np.argsort(rank[inverse], kind="stable")
    counts = sizes[class_order].astype(np.int64)
    groups = []
    r = k = 0
    for size in np.unique(counts):
        kk = int((counts == size).sum())
        groups.append((r, r + kk * int(size), k, k + kk, int(size)))
        r, k = r + kk * int(size), k + kk
    return order, counts, groups


def _class_chunks(groups: list[tuple[int, int, int, int, int]], channels: int
                  ) -> Iterator[tuple[int, int, int, int, int]]:
    """The groups cut into pieces whose float64 copy stays under CHUNK_BYTES."""
    for r0, _, k0, k1, size in groups:
        step = max(1, CHUNK_BYTES // (8 * size * channels))
        for a in range(k0, k1, step):
            b = min(k1, a + step)
            yield r0 + (a - k0) * size, r0 + (b - k0) * size, a, b, size


def prepare_block(gates: np.ndarray, rows: np.ndarray, labels: np.ndarray, threshold: float) -> BlockData:
    """Lay out ``gates[rows]`` (labels ``labels``, the rows' classes) and compute the observed indices."""
    order, counts, groups = class_layout(labels)
    taken = rows[order]
    n, c = len(taken), gates.shape[1]
    k = len(counts)
    mean = np.zeros(c)
    step = max(1, CHUNK_BYTES // (8 * c))
    for a in range(0, n, step):
        mean += np.asarray(gates[taken[a:a + step]], np.float64).sum(axis=0)
    mean /= max(n, 1)
    means, m2 = np.empty((k, c)), np.empty((k, c))
    xc = np.empty((n, c), np.float32)
    lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
    for r0, r1, k0, k1, size in _class_chunks(groups, c):
        x = np.asarray(gates[taken[r0:r1]], np.float64)
        lo, hi = np.minimum(lo, x.min(axis=0)), np.maximum(hi, x.max(axis=0))
        x3 = x.reshape(k1 - k0, size, c)
        means[k0:k1] = x3.mean(axis=1)
        dev = x3 - means[k0:k1, None]
        m2[k0:k1] = np.einsum("knc,knc->kc", dev, dev)
        x -= mean
        xc[r0:r1] = x
    row_ss = np.einsum("nc,nc->n", xc, xc, dtype=np.float64)
    constant = bool(n == 0 or (hi <= lo).all())
    observed = {"saturation": float((mean >= threshold).mean()) if n else float("nan")}
    observed.update(specificity(counts, means, m2) if k else {"eta2": float("nan"), "spread": float("nan")})
    observed["cross_class_corr"] = mean_pairwise_corr(means)
    si, _ = selectivity_index(means)
    finite = si[np.isfinite(si)]
    observed["selectivity_median"] = float(np.quantile(finite, 0.5)) if finite.size else float("nan")
    observed = {key: float(observed[key]) for key in ("saturation", *CLASS_INDICES)}
    return BlockData(xc=xc, mean=mean, row_ss=row_ss, counts=counts, groups=groups, constant=constant,
                     observed=observed)


def replicate_chunk(data: BlockData, replicates: int) -> int:
    """How many replicates one chunk of this block holds (class sums and, for permutations, gathered rows)."""
    n, c = data.xc.shape
    per = max(8 * len(data.counts) * c, 4 * n * c, 1)
    return int(max(1, min(replicates, CHUNK_BYTES // per)))


def permutation_sums(data: BlockData, perms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(d, n, T)`` of the permutations ``perms`` (R, N) (row r: the layout rows that take the labels of rows
    0..N-1, i.e. class sizes kept): class means - m, class weights, totals."""
    r = len(perms)
    c = data.xc.shape[1]
    means = np.empty((r, len(data.counts), c))
    for j in range(r):
        x = data.xc[perms[j]]
        for r0, r1, k0, k1, size in data.groups:
            part = means[j, k0:k1]
            x[r0:r1].reshape(k1 - k0, size, c).sum(axis=1, dtype=np.float64, out=part)
            part *= 1.0 / size
    weights = np.broadcast_to(data.counts.astype(np.float64), (r, len(data.counts)))
    return means, weights, np.full(r, float(data.row_ss.sum()))


def bootstrap_sums(data: BlockData, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(d, n, T)`` of Poisson weights ``weights`` (R, N) float32 (layout order): one batched matmul per run of
    equal class sizes (float32 products summed over one class's images), then divided by the class weights in
    float64 (an absent class: 0)."""
    r = len(weights)
    c = data.xc.shape[1]
    k = len(data.counts)
    means = np.empty((r, k, c))
    class_w = np.empty((r, k))
    for r0, r1, k0, k1, size in data.groups:
        w = weights[:, r0:r1].reshape(r, k1 - k0, size)
        class_w[:, k0:k1] = w.sum(axis=2, dtype=np.float64)
        x3 = data.xc[r0:r1].reshape(k1 - k0, size, c)
        step = max(1, CHUNK_BYTES // (4 * r * size * c))
        for a in range(0, k1 - k0, step):
            b = min(k1 - k0, a + step)
            part = np.matmul(w[:, a:b].transpose(1, 0, 2), x3[a:b])  # (classes, R, C)
            means[:, k0 + a:k0 + b] = part.transpose(1, 0, 2)
    present = class_w > 0
    means *= np.divide(1.0, class_w, out=np.zeros_like(class_w), where=present)[:, :, None]
    total = weights.astype(np.float64) @ data.row_ss
    return means, class_w, total


def replicate_indices(d: np.ndarray, weights: np.ndarray, total: np.ndarray, mean: np.ndarray,
                      has_within: bool, threshold: float) -> dict[str, np.ndarray]:
    """The indices of each replicate from its class means - m ``d`` (R, K, C; 0 for an absent class), class
    weights (R, K) and totals (R,) (formulas in the module doc): arrays (R,)."""
    r, _, c = d.shape
    present = weights > 0
    keff = present.sum(axis=1)
    n_tot = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.einsum("rk,rkc->rc", weights, d) / n_tot[:, None]
    gg = np.einsum("rc,rc->r", g, g)
    dd = np.einsum("rkc,rkc->rk", d, d)
    few = keff < 2
    out: dict[str, np.ndarray] = {}
    # eta2
    between = np.einsum("rk,rk->r", weights, dd) - n_tot * gg
    tot = total - n_tot * gg
    eta2 = np.divide(between, tot, out=np.zeros(r), where=tot > 0)
    out["eta2"] = np.where(few | (not has_within), np.nan, eta2)
    # spread
    kf = np.maximum(keff, 1).astype(np.float64)[:, None]
    sd = d.sum(axis=1)
    mk = sd / kf
    var = np.clip(np.einsum("rkc,rkc->rc", d, d) / kf - mk * mk, 0, None)
    grand = mean + g
    max_spread = np.sqrt(np.clip(grand * (1 - grand), 0, None)).mean(axis=1)
    spread = np.divide(np.sqrt(var).mean(axis=1), max_spread, out=np.zeros(r), where=max_spread > 0)
    out["spread"] = np.where(few, np.nan, spread)
    # cross-class correlation of the class means m + d_k
    a = mean - mean.mean()
    dbar = d.sum(axis=2) / c
    norm2 = a @ a + 2 * np.einsum("rkc,c->rk", d, a) + dd - c * dbar * dbar
    ok = present & (norm2 > 1e-12 * (a @ a + dd) + 1e-300)
    q = np.divide(1.0, np.sqrt(np.where(ok, norm2, 1.0)), out=np.zeros_like(norm2), where=ok)
    t = a * q.sum(axis=1)[:, None] + np.einsum("rk,rkc->rc", q, d) - (q * dbar).sum(axis=1)[:, None]
    m = ok.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(m >= 2, (np.einsum("rc,rc->r", t, t) - m) / (m * (m - 1)), 1.0)
    out["cross_class_corr"] = np.where(few, np.nan, corr)
    # Morcos selectivity of the class means, median over channels
    top = (d if present.all() else np.where(present[:, :, None], d, -np.inf)).max(axis=1)
    with np.errstate(invalid="ignore"):  # a resample without any class: -inf, NaN below (few)
        mu_max = mean + top
        mu_rest = (keff[:, None] * mean + sd - mu_max) / np.maximum(keff - 1, 1)[:, None]
        denom = mu_max + mu_rest
        si = np.divide(mu_max - mu_rest, denom, out=np.zeros_like(denom), where=denom > 0)
    out["selectivity_median"] = np.where(few, np.nan, np.median(si, axis=1))
    out["saturation"] = np.where(n_tot > 0, (grand >= threshold).mean(axis=1), np.nan)
    return out
