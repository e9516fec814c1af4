"""Spearman's rank correlation with a permutation p-value (no scipy needed): the one the channel-selectivity trend
(:func:`senet_viz.analysis.channels.depth_trend`) and the paper verdict (:mod:`senet_viz.analysis.verdict`) use."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

EXACT_UP_TO = 8
"""Up to this many pairs the p-value is exact (every permutation of the ranks)."""


def _ranks(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank(method="average").to_numpy(dtype=np.float64)


def spearman(x: Sequence[float], y: Sequence[float], permutations: int = 200_000, seed: int = 0
             ) -> tuple[float, float]:
    """Spearman's rho of ``x`` and ``y`` (average ranks for ties) and its two-sided permutation p-value: exact
    (every permutation of the y ranks) up to :data:`EXACT_UP_TO` values, else ``permutations`` random ones
    (seeded); ``permutations=0`` skips the test (p NaN). NaN pairs are dropped; fewer than 3 pairs, or a constant
    variable, give NaN."""
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
    rho = float(rx @ ry / norm)
    if permutations <= 0:
        return rho, float("nan")
    if n <= EXACT_UP_TO:
        perms = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((permutations, n)), axis=1)
    null = ry[perms] @ rx / norm
    p = float(np.mean(np.abs(null) >= abs(rho) - 1e-12))
    return rho, p
