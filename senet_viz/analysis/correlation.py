"""Spearman's rank correlation with a permutation p-value (no scipy needed): the one the channel-selectivity trend
(:func:`senet_viz.analysis.channels.depth_trend`) and the paper verdict (:mod:`senet_viz.analysis.verdict`) use.

Up to ``exact_max`` (default :data:`EXACT_MAX`, 10) pairs the p-value is exact: every one of the n! orders of the y
ranks (ties: average ranks, so the null is that of the tied ranks). The null depends only on the two sets of ranks
(not on their order), so it is computed once per rank pattern and cached (10! = 3,628,800 orders, vectorised in
chunks: about a second the first time). With three pairs the smallest two-sided p is 2/6 = 1/3, so three blocks can
never show a trend at 0.05. Beyond ``exact_max`` a seeded Monte Carlo p with the (k + 1) / (n + 1) correction
(never 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

EXACT_MAX = 10
"""Up to this many pairs the p-value is exact (every order of the ranks)."""
CHUNK = 1 << 18
"""Orders per vectorised step (exact and Monte Carlo)."""


def _ranks(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(method="average").to_numpy(dtype=np.float64)


@lru_cache(maxsize=2)
def _all_orders(n: int) -> np.ndarray:
    """Every permutation of range(n) as rows (n!, n) int8, built by inserting n-1 into each order of n-1."""
    orders = np.zeros((1, 0), np.int8)
    for m in range(1, n + 1):
        rows = len(orders)
        grown = np.empty((rows * m, m), np.int8)
        for pos in range(m):
            part = grown[pos * rows:(pos + 1) * rows]
            part[:, :pos] = orders[:, :pos]
            part[:, pos] = m - 1
            part[:, pos + 1:] = orders[:, pos:]
        orders = grown
    orders.flags.writeable = False
    return orders


@lru_cache(maxsize=4)
def _exact_null(rx: tuple[float, ...], ry: tuple[float, ...]) -> np.ndarray:
    """Sorted |sum_i rx_i ry_pi(i)| over every order pi (centred ranks, each pattern sorted)."""
    x, y = np.array(rx), np.array(ry)
    orders = _all_orders(len(x))
    out = np.empty(len(orders))
    for a in range(0, len(orders), CHUNK):
        out[a:a + CHUNK] = y[orders[a:a + CHUNK]] @ x
    out = np.sort(np.abs(out))
    out.flags.writeable = False
    return out


def spearman(x: Sequence[float], y: Sequence[float], permutations: int = 200_000, seed: int = 0,
             exact_max: int = EXACT_MAX) -> tuple[float, float]:
    """Spearman's rho of ``x`` and ``y`` (average ranks for ties) and its two-sided permutation p-value: exact
    (all n! orders of the y ranks, ties handled) up to ``exact_max`` pairs, else ``permutations`` random orders
    (seeded) with p = (k + 1) / (permutations + 1); ``permutations=0`` skips the test (p NaN). NaN pairs are
    dropped; fewer than 3 pairs, or a constant variable, give NaN."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 3:
        return float("nan"), float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    if norm == 0:
        return float("nan"), float("nan")
    stat = float(rx @ ry)
    rho = stat / norm
    if permutations <= 0:
        return rho, float("nan")
    bar = abs(stat) - 1e-9 * norm  # equal statistics (up to rounding) count as extreme
    if n <= exact_max:
        null = _exact_null(tuple(np.sort(rx)), tuple(np.sort(ry)))
        return rho, float((len(null) - np.searchsorted(null, bar, side="left")) / len(null))
    rng = np.random.default_rng(seed)
    extreme = 0
    for a in range(0, permutations, max(1, CHUNK // n)):
        m = min(permutations - a, max(1, CHUNK // n))
        orders = np.argsort(rng.random((m, n)), axis=1)
        extreme += int((np.abs(ry[orders] @ rx) >= bar).sum())
    return rho, (extreme + 1) / (permutations + 1)
