"""The accumulators of one SE block: what is kept per block, the batch update, the exact merge and the block's
plain-data state (:meth:`BlockAccumulator.state` / :meth:`BlockAccumulator.from_state`).

What is kept, per block with ``C`` channels, ``bins`` histogram bins on [0, 1] and ``K`` classes seen (memory is
fixed by these, never by the number of images):

- **"all" images** (every image, labelled or not): count, per-channel mean and M2 (float64, Welford; partial
  results merge with Chan et al.'s formula), per-channel min / max, a per-channel histogram ``(C, bins)`` and the
  sum of |1 - s|.
- **every class**: count, per-channel mean and M2 (float64), and a compact *sketch* pooled over the block's
  channels: a histogram ``(bins,)`` of all the class's gates, their min, max and sum of |1 - s|. The means and M2
  serve every index, Fig. 6, Fig. 7 (mean +- std), the heatmap and the depth profile; the sketch serves the
  per-stage distributions.
- **detailed classes** only: per-channel histograms ``(C, bins)`` and per-channel min / max, needed for quantiles
  within a class channel by channel (Explore's percentiles); which classes is the statistics' policy
  (:class:`senet_viz.analysis.stats_accumulate.GateAccumulator`).

Memory, bytes per block: ``16 K C`` (means, M2) + ``K (8 bins + 40)`` (counts and sketches) + ``C (8 bins + 32)``
("all") + ``D C (8 bins + 16)`` for ``D`` detailed classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np


@dataclass
class ChannelDetail:
    """Per-channel histogram, min and max of one class in one block (kept for detailed classes only)."""

    hist: np.ndarray  # (C, bins) int64
    min: np.ndarray  # (C,) float64
    max: np.ndarray  # (C,) float64


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only view (the array itself stays writable)."""
    view = a.view()
    view.flags.writeable = False
    return view


def _adopt(a: Any, dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``a`` as a writable C-contiguous array of ``dtype`` and ``shape``: taken over when it already is one, else
    copied (a read-only view from :meth:`BlockAccumulator.state` is copied)."""
    out = np.require(np.asarray(a, dtype=dtype), dtype, ["C", "W"])
    if out.shape != shape:
        raise ValueError(f"{what} of shape {out.shape}, expected {shape}")
    return out


def empty_block_state(channels: int, bins: int, classes: Sequence[int] | np.ndarray = ()) -> dict[str, Any]:
    """The state of a block that has seen no image, with zeroed rows for ``classes`` (writable arrays that a
    reader fills in place and :meth:`BlockAccumulator.from_state` takes over without copying)."""
    k = len(classes)
    return {"n": 0, "mean": np.zeros(channels), "m2": np.zeros(channels), "min": np.full(channels, np.inf),
            "max": np.full(channels, -np.inf), "hist": np.zeros((channels, bins), np.int64), "sum_abs_1m": 0.0,
            "classes": np.array(classes, np.int64), "count": np.zeros(k, np.int64), "means": np.zeros((k, channels)),
            "m2s": np.zeros((k, channels)), "pooled_hist": np.zeros((k, bins), np.int64),
            "pooled_min": np.full(k, np.inf), "pooled_max": np.full(k, -np.inf), "pooled_sum_abs_1m": np.zeros(k),
            "detail": {}}


class BlockAccumulator:
    """Accumulators of one block: "all" images, every class (rows in order of first appearance), detailed classes.

    Class rows live in arrays with spare capacity (doubling, capped at the known number of classes) so a stream
    that meets classes one at a time (ImageNet's validation set sorted by class) copies O(K) rows, not O(K^2).
    """

    def __init__(self, channels: int, bins: int, n_classes_hint: int = 0) -> None:
        self.channels, self.bins, self.hint = channels, bins, n_classes_hint
        self.n = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)
        self.min = np.full(channels, np.inf)
        self.max = np.full(channels, -np.inf)
        self.hist = np.zeros((channels, bins), np.int64)
        self.sum_abs_1m = 0.0
        self.rows = 0
        self.row_of: dict[int, int] = {}
        self._cls = np.zeros(0, np.int64)
        self._count = np.zeros(0, np.int64)
        self._mean = np.zeros((0, channels))
        self._m2 = np.zeros((0, channels))
        self._phist = np.zeros((0, bins), np.int64)
        self._pmin = np.zeros(0)
        self._pmax = np.zeros(0)
        self._psum = np.zeros(0)
        self.detail: dict[int, ChannelDetail] = {}

    # ------------------------------------------------------------------ rows

    @property
    def classes(self) -> np.ndarray:
        return self._cls[:self.rows]

    @property
    def count(self) -> np.ndarray:
        return self._count[:self.rows]

    @property
    def means(self) -> np.ndarray:
        return self._mean[:self.rows]

    @property
    def m2s(self) -> np.ndarray:
        return self._m2[:self.rows]

    @property
    def pooled_hist(self) -> np.ndarray:
        return self._phist[:self.rows]

    @property
    def pooled_min(self) -> np.ndarray:
        return self._pmin[:self.rows]

    @property
    def pooled_max(self) -> np.ndarray:
        return self._pmax[:self.rows]

    @property
    def pooled_sum_abs_1m(self) -> np.ndarray:
        return self._psum[:self.rows]

    def rows_of(self, classes: Iterable[int] | None = None) -> np.ndarray:
        """Rows of the classes (every class when None, in class-index order); classes without a row are skipped."""
        if classes is None:
            return np.array([self.row_of[k] for k in sorted(self.row_of)], np.int64)
        return np.array([self.row_of[k] for k in classes if k in self.row_of], np.int64)

    def reserve(self, classes: np.ndarray) -> None:
        """Rows for ``classes`` (distinct indices) not seen yet, allocated at once with no spare capacity."""
        self._rows_for(np.asarray(classes, np.int64), exact=True)

    def _rows_for(self, classes: np.ndarray, exact: bool = False) -> np.ndarray:
        """Row of each class index, adding rows for classes not seen yet (``exact``: no spare capacity)."""
        new = [int(k) for k in classes if int(k) not in self.row_of]
        if new:
            need = self.rows + len(new)
            if need > len(self._cls):
                if exact:
                    cap = need
                else:  # doubling; with the class list known never more rows than classes, and no copy left to make
                    cap = max(need, 2 * len(self._cls))  # once past half of them
                    if self.hint >= need and 2 * cap > self.hint:
                        cap = self.hint
                grow = cap - len(self._cls)

                def more(a: np.ndarray, fill: float = 0) -> np.ndarray:
                    return np.concatenate([a, np.full((grow, *a.shape[1:]), fill, a.dtype)])

                self._cls, self._count = more(self._cls, -1), more(self._count)
                self._mean, self._m2, self._phist = more(self._mean), more(self._m2), more(self._phist)
                self._pmin, self._pmax = more(self._pmin, np.inf), more(self._pmax, -np.inf)
                self._psum = more(self._psum)
            for k in new:
                self.row_of[k] = self.rows
                self._cls[self.rows] = k
                self.rows += 1
        return np.fromiter((self.row_of[int(k)] for k in classes), np.int64, len(classes))

    def nbytes(self) -> int:
        """Bytes held by the accumulators (capacity included)."""
        arrays = [self.mean, self.m2, self.min, self.max, self.hist, self._cls, self._count, self._mean, self._m2,
                  self._phist, self._pmin, self._pmax, self._psum]
        arrays += [a for d in self.detail.values() for a in (d.hist, d.min, d.max)]
        return sum(a.nbytes for a in arrays)

    def std(self, rows: np.ndarray) -> np.ndarray:
        """Within-class std (ddof 1; 0 for one image) of the given rows, (len(rows), C)."""
        n = self._count[rows].astype(np.float64)
        return np.where(n[:, None] > 1, np.sqrt(self._m2[rows] / np.maximum(n - 1, 1)[:, None]), 0.0)

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """The exact state as plain data: numbers and read-only views of the arrays (no copy; the keys of
        :func:`empty_block_state`, ``detail`` mapping a class index to its ``hist`` / ``min`` / ``max``)."""
        return {"n": self.n, "mean": _frozen(self.mean), "m2": _frozen(self.m2), "min": _frozen(self.min),
                "max": _frozen(self.max), "hist": _frozen(self.hist), "sum_abs_1m": self.sum_abs_1m,
                "classes": _frozen(self.classes), "count": _frozen(self.count), "means": _frozen(self.means),
                "m2s": _frozen(self.m2s), "pooled_hist": _frozen(self.pooled_hist),
                "pooled_min": _frozen(self.pooled_min), "pooled_max": _frozen(self.pooled_max),
                "pooled_sum_abs_1m": _frozen(self.pooled_sum_abs_1m),
                "detail": {k: {"hist": _frozen(d.hist), "min": _frozen(d.min), "max": _frozen(d.max)}
                           for k, d in self.detail.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], channels: int, bins: int, n_classes_hint: int = 0,
                   name: str = "block") -> Self:
        """An accumulator holding ``state`` (as :meth:`state` gives it); every shape is checked. Writable arrays of
        the right type are taken over, others copied."""
        acc = cls(channels, bins, n_classes_hint)
        c, b = channels, bins
        acc.n = int(state["n"])
        acc.sum_abs_1m = float(state["sum_abs_1m"])
        acc.mean = _adopt(state["mean"], np.float64, (c,), f"{name}: mean")
        acc.m2 = _adopt(state["m2"], np.float64, (c,), f"{name}: m2")
        acc.min = _adopt(state["min"], np.float64, (c,), f"{name}: min")
        acc.max = _adopt(state["max"], np.float64, (c,), f"{name}: max")
        acc.hist = _adopt(state["hist"], np.int64, (c, b), f"{name}: hist")
        classes = _adopt(state["classes"], np.int64, (len(state["classes"]),), f"{name}: classes")
        k = len(classes)
        if (classes < 0).any() or len(np.unique(classes)) != k:
            raise ValueError(f"{name}: class indices must be distinct and not negative")
        if acc.n < 0 or (np.asarray(state["count"]) < 0).any():
            raise ValueError(f"{name}: negative image counts")
        acc._cls = classes
        acc._count = _adopt(state["count"], np.int64, (k,), f"{name}: count")
        acc._mean = _adopt(state["means"], np.float64, (k, c), f"{name}: means")
        acc._m2 = _adopt(state["m2s"], np.float64, (k, c), f"{name}: m2s")
        acc._phist = _adopt(state["pooled_hist"], np.int64, (k, b), f"{name}: pooled_hist")
        acc._pmin = _adopt(state["pooled_min"], np.float64, (k,), f"{name}: pooled_min")
        acc._pmax = _adopt(state["pooled_max"], np.float64, (k,), f"{name}: pooled_max")
        acc._psum = _adopt(state["pooled_sum_abs_1m"], np.float64, (k,), f"{name}: pooled_sum_abs_1m")
        acc.rows = k
        acc.row_of = {int(x): i for i, x in enumerate(classes)}
        for key, d in state.get("detail", {}).items():
            if int(key) not in acc.row_of:
                raise ValueError(f"{name}: per-channel histograms of class {key}, which has no row")
            acc.detail[int(key)] = ChannelDetail(_adopt(d["hist"], np.int64, (c, b), f"{name}: hist of {key}"),
                                                 _adopt(d["min"], np.float64, (c,), f"{name}: min of {key}"),
                                                 _adopt(d["max"], np.float64, (c,), f"{name}: max of {key}"))
        return acc

    # ------------------------------------------------------------------ updates

    def _merge_all(self, n: int, mean: np.ndarray, m2: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   hist: np.ndarray, sum_abs: float) -> None:
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.m2 += m2 + delta**2 * (self.n * n / total)
        self.mean += delta * (n / total)
        self.n = total
        np.minimum(self.min, lo, out=self.min)
        np.maximum(self.max, hi, out=self.max)
        self.hist += hist
        self.sum_abs_1m += sum_abs

    def _merge_rows(self, rows: np.ndarray, n: np.ndarray, mean: np.ndarray, m2: np.ndarray, phist: np.ndarray,
                    pmin: np.ndarray, pmax: np.ndarray, psum: np.ndarray) -> None:
        """Chan et al.'s update of several class rows at once (``rows`` unique)."""
        na = self._count[rows].astype(np.float64)
        total = na + n
        old_mean, old_m2 = self._mean[rows], self._m2[rows]  # gathered copies, updated in place, scattered back
        delta = mean - old_mean
        old_mean += delta * (n / total)[:, None]
        delta *= delta
        delta *= (na * n / total)[:, None]
        old_m2 += m2
        old_m2 += delta
        self._mean[rows], self._m2[rows] = old_mean, old_m2
        self._count[rows] += n.astype(np.int64)
        self._phist[rows] += phist
        self._pmin[rows] = np.minimum(self._pmin[rows], pmin)
        self._pmax[rows] = np.maximum(self._pmax[rows], pmax)
        self._psum[rows] += psum

    def add(self, gates: np.ndarray, labels: np.ndarray, detailed: set[int] | None) -> None:
        """Add a batch; ``detailed`` = classes whose per-channel histograms are kept (None: every class)."""
        bins, channels = self.bins, self.channels
        order = np.argsort(labels, kind="stable")
        v = np.asarray(gates)[order].astype(np.float64)  # rows grouped by label
        groups, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
        # Per-group sums and M2. A one-image group is its own sum with M2 = 0; the groups of several images are
        # summed one by one: numpy's reduceat along rows is 5-10x slower than this for any mix of group sizes.
        sums = v[starts]
        gm2 = np.zeros_like(sums)
        multi = np.flatnonzero(sizes > 1)
        for j in multi:
            seg = v[starts[j]:starts[j] + sizes[j]]
            sums[j] = seg.sum(axis=0)
            dev = seg - sums[j] / sizes[j]
            dev *= dev
            gm2[j] = dev.sum(axis=0)
        gmean = sums / sizes[:, None]
        row_min, row_max = v.min(axis=1), v.max(axis=1)
        pmin, pmax = np.minimum.reduceat(row_min, starts), np.maximum.reduceat(row_max, starts)
        if row_max.max() <= 1.0:  # gates in [0, 1]: sum |1 - s| = n C - sum s, no N x C temporary
            gsum = sizes * float(channels) - sums.sum(axis=1)
        else:
            gsum = np.add.reduceat(np.abs(1.0 - v).sum(axis=1), starts)
        idx = (v * bins).astype(np.int64)
        np.clip(idx, 0, bins - 1, out=idx)  # gate 1.0 goes to the last bin

        # "all": the groups (unlabelled ones included) combined exactly.
        n = int(sizes.sum())
        mean = sums.sum(axis=0) / n
        spread = gmean - mean
        spread *= spread
        m2 = gm2.sum(axis=0) + sizes @ spread
        local = np.repeat(np.arange(len(groups)) * bins, sizes)
        phist = np.bincount((idx + local[:, None]).ravel(), minlength=len(groups) * bins).reshape(-1, bins)
        idx += np.arange(channels) * bins  # idx becomes the flat (channel, bin) id
        all_hist = np.bincount(idx.ravel(), minlength=channels * bins).reshape(channels, bins)
        self._merge_all(n, mean, m2, v.min(axis=0), v.max(axis=0), all_hist, float(gsum.sum()))

        labelled = groups >= 0
        if not labelled.any():
            return
        g = np.flatnonzero(labelled)
        rows = self._rows_for(groups[g])
        self._merge_rows(rows, sizes[g].astype(np.float64), gmean[g], gm2[g], phist[g], pmin[g], pmax[g], gsum[g])
        keep = [j for j in g if detailed is None or int(groups[j]) in detailed]
        if not keep:
            return
        # One bincount for every detailed class of the batch: (class slot, channel, bin).
        slot = np.full(len(groups), -1)
        slot[keep] = np.arange(len(keep))
        pick = np.repeat(slot, sizes)
        sel = pick >= 0
        flat = (idx[sel] + (pick[sel] * channels * bins)[:, None]).ravel()
        hists = np.bincount(flat, minlength=len(keep) * channels * bins).reshape(len(keep), channels, bins)
        for s, j in enumerate(keep):
            seg = v[starts[j]:starts[j] + sizes[j]]
            k = int(groups[j])
            d = self.detail.get(k)
            if d is None:
                self.detail[k] = ChannelDetail(hists[s].copy(), seg.min(axis=0), seg.max(axis=0))
            else:
                d.hist += hists[s]
                np.minimum(d.min, seg.min(axis=0), out=d.min)
                np.maximum(d.max, seg.max(axis=0), out=d.max)

    def merge(self, o: BlockAccumulator, allowed) -> None:
        """Add ``o`` in place. ``allowed(k)``: the policy lets class k keep per-channel histograms."""
        complete_here = {k for k in self.detail} | {k for k in o.row_of if k not in self.row_of}
        complete_there = set(o.detail) | {k for k in self.row_of if k not in o.row_of}
        self._merge_all(o.n, o.mean, o.m2, o.min, o.max, o.hist, o.sum_abs_1m)
        if o.rows:
            rows = self._rows_for(o.classes)
            self._merge_rows(rows, o.count.astype(np.float64), o.means, o.m2s, o.pooled_hist, o.pooled_min,
                             o.pooled_max, o.pooled_sum_abs_1m)
        keep = {k for k in (set(self.detail) | set(o.detail)) if k in complete_here and k in complete_there
                and allowed(k)}
        merged = {}
        for k in keep:
            a, b = self.detail.get(k), o.detail.get(k)
            if a is None:
                merged[k] = ChannelDetail(b.hist.copy(), b.min.copy(), b.max.copy())
            else:
                if b is not None:
                    a.hist += b.hist
                    np.minimum(a.min, b.min, out=a.min)
                    np.maximum(a.max, b.max, out=a.max)
                merged[k] = a
        self.detail = merged
