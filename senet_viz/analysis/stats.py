"""Streaming per-class statistics of SE gates, and the indices that summarise them per block.

What :class:`GateStats` keeps, per block with ``C`` channels, ``bins`` histogram bins on [0, 1] and ``K`` classes
seen (memory is fixed by these, never by the number of images; shards merge exactly into what one pass gives):

- **"all" images** (every image, labelled or not): count, per-channel mean and M2 (float64, Welford; partial
  results merge with Chan et al.'s formula), per-channel min / max, a per-channel histogram ``(C, bins)`` and the
  sum of |1 - s|.
- **every class**: count, per-channel mean and M2 (float64), and a compact *sketch* pooled over the block's
  channels: a histogram ``(bins,)`` of all the class's gates, their min, max and sum of |1 - s|. The means and M2
  serve every index, Fig. 6, Fig. 7 (mean +- std), the heatmap and the depth profile; the sketch serves the
  per-stage distributions (:meth:`GateStats.block_frame`).
- **detailed classes** only: per-channel histograms ``(C, bins)`` and per-channel min / max, needed for quantiles
  within a class channel by channel (Explore's percentiles). Which classes (``detail_classes``):
  ``None`` (auto, the default) keeps them for every class as long as at most ``max_detail_classes`` (64) distinct
  classes have been seen, and for none once more have (then they are dropped and never rebuilt); an explicit list
  of class indices or names keeps them for exactly those. A figure that needs a histogram that is not kept says
  so and uses the all-image one.

Memory, bytes per block: ``16 K C`` (means, M2) + ``K (8 bins + 40)`` (counts and sketches) + ``C (8 bins + 32)``
("all") + ``D C (8 bins + 16)`` for ``D`` detailed classes. SE-ResNet-50 (16 blocks, 15,104 channels) over the
1,000 ImageNet classes with 50 bins and no detailed class: 16 x 1000 x 15104 B = 242 MB + 16 x 440 kB + 6.5 MB,
about 255 MB; 64 detailed classes of 64 add 64 x 15104 x 416 B = 402 MB (the old layout kept the histograms of
every class: 6.5 GB for 1,000 classes).

Shards and files: :meth:`GateStats.merge` is exact for counts, means and M2 (Chan et al.), histograms, min and
max. A class keeps its detailed histograms after a merge only when both parts have them complete (kept, or the
class absent from that part) and the policy allows them (auto: at most ``max_detail_classes`` classes in the
union). :meth:`GateStats.save` writes one Parquet row per (block, class or "all") with list columns, so a file is
mergeable and loads without executing anything (no pickle); :meth:`GateStats.load` also reads the older tidy
per-channel layout.

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

Size: one streaming accumulator and the views, indices and file format built on its private layout; the
figure code that reads it lives in senet_viz/plots/.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # the statistics need no torch: a Result is only read
    from senet_viz.inference.run import Result

ALL = "all"
GROUPINGS = ("labels", "prediction")
DEFAULT_BINS = 50
DEFAULT_THRESHOLD = 0.9
MAX_DETAIL_CLASSES = 64
"""Auto policy: per-channel histograms of every class while at most this many classes have been seen."""
FORMAT_VERSION = 2
_META_KEY = b"senet_viz_stats"


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


class UnknownName(KeyError, ValueError):
    """An unknown block or class name: a KeyError for lookups and a ValueError for input checks (message as is)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class BlockInfo:
    name: str
    stage: int
    order: int
    channels: int


@dataclass
class _Detail:
    """Per-channel histogram, min and max of one class in one block (kept for detailed classes only)."""

    hist: np.ndarray  # (C, bins) int64
    min: np.ndarray  # (C,) float64
    max: np.ndarray  # (C,) float64


class _BlockAcc:
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
        self.detail: dict[int, _Detail] = {}

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

    def _rows_for(self, classes: np.ndarray) -> np.ndarray:
        """Row of each class index, adding rows for classes not seen yet."""
        new = [int(k) for k in classes if int(k) not in self.row_of]
        if new:
            need = self.rows + len(new)
            if need > len(self._cls):
                cap = max(need, 2 * len(self._cls))
                if self.hint >= need:  # the class list is known: never more rows than classes
                    cap = min(cap, self.hint)
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
                self.detail[k] = _Detail(hists[s].copy(), seg.min(axis=0), seg.max(axis=0))
            else:
                d.hist += hists[s]
                np.minimum(d.min, seg.min(axis=0), out=d.min)
                np.maximum(d.max, seg.max(axis=0), out=d.max)

    def merge(self, o: _BlockAcc, allowed) -> None:
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
                merged[k] = _Detail(b.hist.copy(), b.min.copy(), b.max.copy())
            else:
                if b is not None:
                    a.hist += b.hist
                    np.minimum(a.min, b.min, out=a.min)
                    np.maximum(a.max, b.max, out=a.max)
                merged[k] = a
        self.detail = merged

    def std(self, rows: np.ndarray) -> np.ndarray:
        """Within-class std (ddof 1; 0 for one image) of the given rows, (len(rows), C)."""
        n = self._count[rows].astype(np.float64)
        return np.where(n[:, None] > 1, np.sqrt(self._m2[rows] / np.maximum(n - 1, 1)[:, None]), 0.0)


def _resolve_detail(class_names: Sequence[str], detail: Iterable[int | str] | None) -> tuple[int, ...] | None:
    if detail is None:
        return None
    lookup = {n: i for i, n in enumerate(class_names)}
    out = []
    for c in detail:
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.isdigit() and c not in lookup):
            out.append(int(c))
        elif c in lookup:
            out.append(lookup[c])
        else:
            more = " …" if len(class_names) > 10 else ""
            raise UnknownName(f"unknown class {c!r} in detail_classes; classes are {list(class_names)[:10]}{more}")
    return tuple(sorted(set(out)))


@dataclass
class GateStats:
    """Per-class, per-channel gate statistics of every block of one model; streaming and mergeable.

    ``detail_classes``: classes (indices) whose per-channel histograms are kept; ``None`` = auto (every class while
    at most ``max_detail_classes`` distinct classes are seen, none after). See the module doc for the layout.
    """

    model: str
    blocks: list[BlockInfo]
    class_names: list[str]
    bins: int = DEFAULT_BINS
    detail_classes: tuple[int, ...] | None = None
    max_detail_classes: int = MAX_DETAIL_CLASSES
    accumulators: dict[str, _BlockAcc] = field(default_factory=dict, repr=False)
    _seen: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        for b in self.blocks:
            if b.name not in self.accumulators:
                self.accumulators[b.name] = _BlockAcc(b.channels, self.bins, len(self.class_names))

    @classmethod
    def for_blocks(cls, model: str, blocks: Iterable, class_names: Sequence[str], bins: int = DEFAULT_BINS,
                   detail_classes: Iterable[int | str] | None = None,
                   max_detail_classes: int = MAX_DETAIL_CLASSES) -> GateStats:
        """From SEBlock objects or dicts with name/stage/channels (order = position). ``detail_classes``: class
        indices or names whose per-channel histograms are kept (``None``: auto, ``[]``: none)."""
        infos = []
        for i, b in enumerate(blocks):
            get = b.get if isinstance(b, Mapping) else lambda k, b=b: getattr(b, k)
            infos.append(BlockInfo(get("name"), int(get("stage")), i, int(get("channels"))))
        return cls(model=model, blocks=infos, class_names=list(class_names), bins=bins,
                   detail_classes=_resolve_detail(class_names, detail_classes),
                   max_detail_classes=int(max_detail_classes))

    @classmethod
    def from_result(cls, result: Result, blocks: Iterable, class_names: Sequence[str], *, by: str = "labels",
                    bins: int = DEFAULT_BINS, detail_classes: Iterable[int | str] | None = None,
                    max_detail_classes: int = MAX_DETAIL_CLASSES) -> GateStats:
        """Statistics of the per-image gates a pass kept (a :class:`senet_viz.inference.run.Result` run with
        ``keep_gates``),
        grouped by the images' labels (``by="labels"``, ``class_names``: the image set's classes) or by the
        network's top-1 class (``by="prediction"``, ``class_names``: the model's classes). ``blocks`` as for
        :meth:`for_blocks`; every one must be in ``result.gates``."""
        if by not in GROUPINGS:
            raise ValueError(f"by must be one of {GROUPINGS}, not {by!r}")
        stats = cls.for_blocks(result.model, blocks, class_names, bins=bins, detail_classes=detail_classes,
                               max_detail_classes=max_detail_classes)
        missing = [b.name for b in stats.blocks if b.name not in result.gates]
        if missing:
            raise ValueError(f"the result kept no gates of {missing}: run it with keep_gates=True and these blocks")
        labels = result.pred if by == "prediction" else result.labels
        for b in stats.blocks:
            stats.update(b.name, result.gates[b.name], labels)
        return stats

    def _block(self, name: str) -> BlockInfo:
        for b in self.blocks:
            if b.name == name:
                return b
        raise UnknownName(f"unknown block {name!r}; valid blocks: {[b.name for b in self.blocks]}")

    def _detail_allowed(self, k: int) -> bool:
        if self.detail_classes is not None:
            return k in self.detail_classes
        return len(self._seen) <= self.max_detail_classes

    def _see(self, classes: Iterable[int]) -> None:
        """Record classes; under the auto policy, past ``max_detail_classes`` drop every per-class histogram."""
        self._seen.update(int(k) for k in classes)
        if self.detail_classes is None and len(self._seen) > self.max_detail_classes:
            for acc in self.accumulators.values():
                acc.detail.clear()

    def update(self, block: str, gates: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch: ``gates`` (N, C) of block ``block`` with class indices ``labels`` (N,), -1 = unknown."""
        info = self._block(block)
        gates = np.asarray(gates)
        if gates.ndim != 2 or gates.shape[1] != info.channels:
            raise ValueError(f"{block}: gates of shape {gates.shape}, expected (N, {info.channels})")
        labels = np.asarray(labels, dtype=np.int64)
        if len(gates) == 0:
            return
        if labels.shape != (len(gates),):
            raise ValueError(f"{block}: {labels.shape} labels for {len(gates)} gate vectors")
        labels = np.where(labels < 0, -1, labels)
        present = np.unique(labels)
        self._see(present[present >= 0])
        if self.detail_classes is not None:
            detailed: set[int] | None = set(self.detail_classes)
        else:
            detailed = None if len(self._seen) <= self.max_detail_classes else set()
        self.accumulators[block].add(gates, labels, detailed)

    def update_all(self, gates: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
        for name, g in gates.items():
            self.update(name, g, labels)

    def merge(self, other: GateStats) -> GateStats:
        """Add another part (e.g. another shard) into this one, in place; returns self."""
        if [(b.name, b.channels) for b in other.blocks] != [(b.name, b.channels) for b in self.blocks] \
                or other.bins != self.bins:
            raise ValueError("cannot merge statistics of different blocks or bin counts")
        if other.class_names != self.class_names:
            raise ValueError("cannot merge statistics with different class lists")
        self._see(other._seen)
        for b in self.blocks:
            self.accumulators[b.name].merge(other.accumulators[b.name], self._detail_allowed)
        return self

    # ------------------------------------------------------------------ views

    def class_label(self, k: int) -> str:
        return ALL if k < 0 else (self.class_names[k] if k < len(self.class_names) else str(k))

    def classes(self) -> list[int]:
        """Indices of the classes seen (in any block), sorted."""
        return sorted(self._seen)

    def n_images(self, block: str | None = None) -> int:
        """Images behind the "all" statistics of ``block`` (default: the first block with any)."""
        accs = [self.accumulators[block]] if block else list(self.accumulators.values())
        return max((a.n for a in accs), default=0)

    def detailed_classes(self, block: str | None = None) -> list[int]:
        """Classes whose per-channel histograms are kept (in ``block``, default the first block)."""
        name = block or (self.blocks[0].name if self.blocks else None)
        return sorted(self.accumulators[name].detail) if name else []

    def resolve_classes(self, classes: str | int | Iterable[str | int] | None) -> list[int]:
        """Class indices of names / indices (``"all"`` is left out); ``None`` = every class seen."""
        if classes is None:
            return self.classes()
        wanted = [classes] if isinstance(classes, (str, int, np.integer)) else list(classes)
        by_name: dict[str, list[int]] = {}
        for k in self.classes():
            by_name.setdefault(self.class_label(k), []).append(k)
        seen = set(self._seen)
        out: list[int] = []
        for c in wanted:
            if isinstance(c, str) and c == ALL:
                continue
            if isinstance(c, (int, np.integer)) and int(c) in seen:
                out.append(int(c))
            elif str(c) in by_name:
                out.extend(by_name[str(c)])
            else:
                names = [self.class_label(k) for k in self.classes()]
                more = f" … +{len(names) - 10} more" if len(names) > 10 else ""
                raise UnknownName(f"unknown class {c!r}; valid classes: {names[:10]}{more}")
        return list(dict.fromkeys(out))

    def _blocks(self, blocks: str | Iterable[str] | None) -> list[BlockInfo]:
        if blocks is None:
            return list(self.blocks)
        names = [blocks] if isinstance(blocks, str) else list(blocks)
        return [self._block(n) for n in names]

    def _rows(self, acc: _BlockAcc, classes: list[int] | None) -> np.ndarray:
        """Rows of ``acc`` for the classes (every class when None), in class-index order; absent classes skipped."""
        if classes is None:
            return np.array([acc.row_of[k] for k in sorted(acc.row_of)], np.int64)
        return np.array([acc.row_of[k] for k in classes if k in acc.row_of], np.int64)

    def class_table(self, block: str | None = None) -> pd.DataFrame:
        """One row per group of ``block`` (default the first): "all" first, then the classes in index order, with
        ``class_index``, ``class``, ``count`` and ``detail`` (per-channel histograms kept)."""
        if not self.blocks:
            return pd.DataFrame({"class_index": [], "class": [], "count": [], "detail": []})
        acc = self.accumulators[self._block(block).name if block else self.blocks[0].name]
        rows = self._rows(acc, None)
        ks = acc._cls[rows]
        return pd.DataFrame({
            "class_index": np.concatenate([[-1], ks]).astype(np.int64),
            "class": [ALL] + [self.class_label(int(k)) for k in ks],
            "count": np.concatenate([[acc.n], acc._count[rows]]).astype(np.int64),
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
        names = [b.name for b in self._blocks(blocks) if blocks is not None or b.name in gates]
        pooled = self.block_frame(names, [cls])
        pooled = pooled[pooled["class"] == cls].set_index("block")["mean"]
        return pd.DataFrame({"block": names,
                             "mean gate (this image)": [float(np.mean(gates[b])) for b in names],
                             f"mean gate ({cls})": [float(pooled[b]) for b in names]})

    def class_means(self, block: str, classes: str | Iterable[str | int] | None = None, include_all: bool = False
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(labels, counts, means)`` of ``block``: the mean gate per class and channel, ``means`` (K, C)."""
        acc = self.accumulators[self._block(block).name]
        rows = self._rows(acc, None if classes is None else self.resolve_classes(classes))
        labels = [self.class_label(int(k)) for k in acc._cls[rows]]
        counts, means = acc._count[rows].copy(), acc._mean[rows].copy()
        if include_all:
            labels, counts, means = [*labels, ALL], np.append(counts, acc.n), np.vstack([means, acc.mean])
        return labels, counts, means

    def class_std(self, block: str, classes: str | Iterable[str | int] | None = None) -> np.ndarray:
        """Within-class std (ddof 1; 0 for a one-image class) per class and channel, (K, C), rows as class_means."""
        acc = self.accumulators[self._block(block).name]
        return acc.std(self._rows(acc, None if classes is None else self.resolve_classes(classes)))

    def hist(self, block: str, cls: str | int) -> np.ndarray | None:
        """Per-channel histogram (C, bins) of one class (``"all"`` always), or None where it is not kept."""
        acc = self.accumulators[self._block(block).name]
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
        for b in self._blocks(blocks):
            acc = self.accumulators[b.name]
            if include_all and acc.n > 0:
                std = np.sqrt(acc.m2 / (acc.n - 1)) if acc.n > 1 else np.zeros(b.channels)
                parts.append(self._part(b, -1, acc.n, acc.mean, std, acc.min, acc.max,
                                        list(acc.hist) if hist else None))
            rows = self._rows(acc, chosen)
            stds = acc.std(rows)
            nan = np.full(b.channels, np.nan)
            for r, std in zip(rows, stds, strict=True):
                k = int(acc._cls[r])
                d = acc.detail.get(k)
                parts.append(self._part(b, k, int(acc._count[r]), acc._mean[r], std,
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
        for b in self._blocks(blocks):
            acc = self.accumulators[b.name]
            if include_all and acc.n > 0:
                records.append(self._pooled(b, -1, acc.n, acc.mean, acc.m2, acc.min.min(), acc.max.max(),
                                            acc.hist.sum(axis=0)))
            for r in self._rows(acc, chosen):
                records.append(self._pooled(b, int(acc._cls[r]), int(acc._count[r]), acc._mean[r], acc._m2[r],
                                            acc._pmin[r], acc._pmax[r], acc._phist[r].copy()))
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

    def nbytes(self) -> int:
        """Bytes held by the accumulators of every block."""
        return sum(a.nbytes() for a in self.accumulators.values())

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
            row.update(_specificity(counts, acc.means, acc.m2s))
            row.update({
                "saturation": float((acc.mean >= threshold).mean()),
                "mean_abs_1_minus_s": acc.sum_abs_1m / (acc.n * b.channels),
                "share_near_0": float((acc.mean <= 1 - threshold).mean()),
                "mean_gate": float(acc.mean.mean()),
                "cross_class_corr": _mean_pairwise_corr(acc.means),
                # From M2 and the running min/max only: no histogram is read.
                "all_std_max": float(np.sqrt(acc.m2 / (acc.n - 1)).max()) if acc.n > 1 else float("nan"),
                "gate_min": float(acc.min.min()),
                "gate_max": float(acc.max.max()),
                "min_class_count": int(counts.min()) if len(counts) else 0,
                "max_class_count": int(counts.max()) if len(counts) else 0,
            })
            rows.append(row)
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Write the exact, mergeable state to Parquet: one row per (block, "all" or class) with list columns, one
        row group per block (so writing and reading hold one block's rows beside the statistics, not a copy of all).
        :meth:`load` restores an equal object."""
        import pyarrow.parquet as pq

        meta = {"format": FORMAT_VERSION, "model": self.model, "bins": self.bins, "class_names": self.class_names,
                "blocks": [vars(b) for b in self.blocks], "detail_classes": self.detail_classes,
                "max_detail_classes": self.max_detail_classes, "seen": sorted(self._seen)}
        schema = _schema().with_metadata({_META_KEY: json.dumps(meta).encode()})
        with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
            for b in self.blocks:
                writer.write_table(self._block_table(b, schema))

    def _block_table(self, b: BlockInfo, schema):
        import pyarrow as pa

        acc = self.accumulators[b.name]
        rows = self._rows(acc, None)
        ks = acc._cls[rows]
        details = [_Detail(acc.hist, acc.min, acc.max)] + [acc.detail.get(int(k)) for k in ks]
        pooled_all = (float(acc.min.min()), float(acc.max.max())) if acc.n else (np.inf, -np.inf)
        columns = {
            "block": pa.array([b.name] * (len(rows) + 1), pa.string()),
            "class_index": pa.array(np.concatenate([[-1], ks]).astype(np.int64)),
            "count": pa.array(np.concatenate([[acc.n], acc._count[rows]]).astype(np.int64)),
            "sum_abs_1m": pa.array(np.concatenate([[acc.sum_abs_1m], acc._psum[rows]])),
            "pooled_min": pa.array(np.concatenate([[pooled_all[0]], acc._pmin[rows]])),
            "pooled_max": pa.array(np.concatenate([[pooled_all[1]], acc._pmax[rows]])),
            "mean": _list_array([acc.mean, *acc._mean[rows]], np.float64),
            "m2": _list_array([acc.m2, *acc._m2[rows]], np.float64),
            "pooled_hist": _list_array([acc.hist.sum(axis=0), *acc._phist[rows]], np.int64),
            "min": _list_array([None if d is None else d.min for d in details], np.float64),
            "max": _list_array([None if d is None else d.max for d in details], np.float64),
            "hist": _list_array([None if d is None else d.hist.ravel() for d in details], np.int64),
        }
        return pa.Table.from_pydict(columns, schema=schema)

    @classmethod
    def load(cls, path: str | Path, max_bytes: int | None = None) -> GateStats:
        """Read a file written by :meth:`save` (this layout or the older per-channel one), one row group at a time;
        Parquet only, nothing is unpickled or executed.

        Safe on untrusted files: before anything is allocated, the declared shapes (blocks, channels, bins) are
        checked against the values the Parquet footer says the file holds, the footer against every page header
        (:func:`senet_viz.data.parquet_pages.check_pages`), and with ``max_bytes`` the memory the statistics would take
        (declared arrays plus decoded columns) against that bound (:class:`StatsTooLarge`, a ``ValueError``)."""
        import pyarrow.parquet as pq

        from senet_viz.data.parquet_pages import check_pages

        # Block names stay dictionary-encoded: a forged file cannot repeat one long name into every decoded row.
        source = pq.ParquetFile(str(path), read_dictionary=["block"], thrift_string_size_limit=_MAX_META_BYTES,
                                thrift_container_size_limit=1 << 20)
        raw = (source.schema_arrow.metadata or {}).get(_META_KEY)
        if raw is None:
            raise ValueError(f"{path} holds no senet-viz statistics (metadata {_META_KEY.decode()!r} missing)")
        if len(raw) > _MAX_META_BYTES:
            raise StatsTooLarge(f"the statistics' metadata is {len(raw) / 2**20:,.1f} MiB, over the "
                                f"{_MAX_META_BYTES / 2**20:,.0f} MiB limit")
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"the statistics' metadata is not valid JSON: {exc}") from None
        _check_sizes(source.metadata, meta, max_bytes)
        with open(path, "rb") as f:
            check_pages(f, source.metadata)
        if meta.get("format", 1) == 1:
            return _load_v1(source.read(), meta)
        if meta["format"] > FORMAT_VERSION:
            raise ValueError(f"statistics format {meta['format']} is newer than this senet-viz reads")
        detail = meta.get("detail_classes")
        stats = cls(model=meta["model"], blocks=[BlockInfo(**b) for b in meta["blocks"]],
                    class_names=list(meta["class_names"]), bins=int(meta["bins"]),
                    detail_classes=None if detail is None else tuple(int(k) for k in detail),
                    max_detail_classes=int(meta.get("max_detail_classes", MAX_DETAIL_CLASSES)))
        stats._seen = {int(k) for k in meta.get("seen", [])}
        # Each block's class rows sized once, exactly (the two key columns are small): no capacity doubling, so
        # the memory is what _check_sizes counted.
        table = source.read(columns=["block", "class_index"])
        keys = pd.DataFrame({"block": _names(table.column("block")), "class_index": table.column("class_index")})
        del table
        for name, part in keys[keys["class_index"] >= 0].groupby("block", sort=False):
            stats._block(name)  # an unknown block: refused here
            stats.accumulators[name]._rows_for(part["class_index"].drop_duplicates().to_numpy())
        del keys
        for i in range(source.num_row_groups):
            stats._read_rows(source.read_row_group(i))
        return stats

    def _read_rows(self, table) -> None:
        """Fill accumulators from rows of the saved layout (any blocks, any order), checking every length."""
        bins = self.bins
        block = _names(table.column("block"))
        klass = table.column("class_index").to_numpy()
        count = table.column("count").to_numpy()
        scalars = {k: table.column(k).to_numpy() for k in ("sum_abs_1m", "pooled_min", "pooled_max")}
        lists = {k: _list_values(table.column(k)) for k in ("mean", "m2", "pooled_hist", "min", "max", "hist")}

        def get(key: str, i: int, size: int) -> np.ndarray | None:
            values, offsets, valid = lists[key]
            if not valid[i]:
                return None
            part = values[offsets[i]:offsets[i + 1]]
            if part.size != size:
                raise ValueError(f"{block[i]}: {key} of {part.size} values, expected {size}")
            return part.copy()

        for i, name in enumerate(block):
            b = self._block(name)
            acc, C = self.accumulators[name], b.channels
            k, n = int(klass[i]), int(count[i])
            mean, m2 = get("mean", i, C), get("m2", i, C)
            if mean is None or m2 is None or n < 0:
                raise ValueError(f"{name}: incomplete statistics row for class {k}")
            hist, lo, hi = get("hist", i, C * bins), get("min", i, C), get("max", i, C)
            if k < 0:
                if hist is None or lo is None or hi is None:
                    raise ValueError(f"{name}: the all-image row lacks its histogram, min or max")
                acc.n, acc.mean, acc.m2, acc.min, acc.max = n, mean, m2, lo, hi
                acc.hist, acc.sum_abs_1m = hist.reshape(C, bins).astype(np.int64), float(scalars["sum_abs_1m"][i])
                continue
            (r,) = acc._rows_for(np.array([k]))
            acc._count[r], acc._mean[r], acc._m2[r] = n, mean, m2
            acc._phist[r] = get("pooled_hist", i, bins)
            acc._psum[r], acc._pmin[r], acc._pmax[r] = (scalars[x][i] for x in ("sum_abs_1m", "pooled_min",
                                                                                 "pooled_max"))
            if hist is not None and lo is not None and hi is not None:
                acc.detail[k] = _Detail(hist.reshape(C, bins).astype(np.int64), lo, hi)
            self._seen.add(k)


class StatsTooLarge(ValueError):
    """Saved statistics that would take more memory than allowed, or whose declared shapes the file cannot hold."""


_MAX_BINS = 4096  # histogram bins a saved file may declare (the library writes 50)
#: The statistics' JSON metadata (model, blocks, class names): 30 KB for ImageNet's 1,000 classes, under 1 MB for
#: 21,843; parsing more would cost tens of times its size in Python objects.
_MAX_META_BYTES = 4 << 20


def _names(column) -> list[str]:
    """The rows of a string column, each distinct value decoded once when it is dictionary-encoded (rows share
    it: a forged file cannot make one long name take memory in every row)."""
    import pyarrow as pa

    out: list[str] = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise ValueError("the statistics have rows without a block name")
        if pa.types.is_dictionary(chunk.type):
            names = chunk.dictionary.to_pylist()
            out += [names[i] for i in chunk.indices.to_numpy(zero_copy_only=False)]
        else:
            out += chunk.to_pylist()
    return out


def _check_sizes(footer, meta: object, max_bytes: int | None) -> None:
    """Refuse saved statistics whose metadata is malformed, declares arrays the file does not hold, or would take
    more than ``max_bytes`` once read, from the Parquet footer alone (no column is read, nothing is allocated).

    Every saved block has its all-image row with ``channels`` means and ``channels x bins`` histogram counts, so
    the declared shapes are bounded by the values the footer counts; the decoded columns are bounded by the
    footer's value counts and uncompressed sizes."""
    if not isinstance(meta, dict):
        raise ValueError("the statistics' metadata is not a JSON object")
    fmt, bins, blocks, names = meta.get("format", 1), meta.get("bins"), meta.get("blocks"), meta.get("class_names")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ValueError(f"the statistics' format {fmt!r} is not a number")
    if not isinstance(meta.get("model"), str):
        raise ValueError("the statistics do not name their model")
    if not isinstance(bins, int) or isinstance(bins, bool) or not 1 <= bins <= _MAX_BINS:
        raise ValueError(f"the statistics declare {bins!r} histogram bins (expected 1 to {_MAX_BINS})")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("the statistics' class names are not a list of strings")
    fields = {"name": str, "stage": int, "order": int, "channels": int}
    if not isinstance(blocks, list) or not blocks or not all(
            isinstance(b, dict) and set(b) == set(fields) and all(isinstance(b[k], t) for k, t in fields.items())
            for b in blocks):
        raise ValueError("the statistics' block list is missing or malformed (each block: name, stage, order, "
                         "channels)")
    if len({b["name"] for b in blocks}) != len(blocks) or any(b["channels"] < 1 for b in blocks):
        raise ValueError("the statistics' block list repeats a block or declares a block without channels")
    # Leaf values per column (nulls count one each) summed over the row groups, and each group's decoded bytes.
    values: dict[str, int] = {}
    decoded, largest = 0, 0
    for i in range(footer.num_row_groups):
        group, size = footer.row_group(i), 0
        for j in range(group.num_columns):
            column = group.column(j)
            top, count = column.path_in_schema.split(".")[0], max(int(column.num_values), 0)
            values[top] = values.get(top, 0) + count
            size += max(int(column.total_uncompressed_size), 8 * count)
        decoded, largest = decoded + size, max(largest, size)
    gates = sum(b["channels"] for b in blocks)
    # What the empty statistics allocate before a row is read: per channel the all-image mean, m2, min, max and
    # histogram of every declared block.
    declared = 8 * gates * (bins + 4)
    if fmt == 1:  # one row per (block, class or all, channel), each with its channel's histogram
        held, need = int(footer.num_rows), gates
    else:
        held, need = min(values.get("mean", 0), values.get("hist", 0) // bins), gates
    if need > held:
        raise StatsTooLarge(f"the statistics declare {gates:,} gates in {len(blocks)} blocks with {bins} bins, but "
                            f"the file holds the values of only {held:,}: it is damaged or was not written by "
                            "senet-viz")
    if fmt == 1:  # read whole through pandas: the table, about a kilobyte per row, and the arrays built from it
        needed = declared + 2 * decoded + 1024 * int(footer.num_rows)
    else:  # class rows and histograms are copied into arrays sized exactly; one row group is decoded (pages,
        # arrays, copies: about four times its size)
        needed = declared + decoded + 4 * largest
    if max_bytes is not None and needed > max_bytes:
        raise StatsTooLarge(f"the statistics would take about {needed / 2**20:,.0f} MiB of memory once read, over "
                            f"the {max_bytes / 2**20:,.0f} MiB this reader allows")


def _schema():
    """Columns of the saved layout (format 2)."""
    import pyarrow as pa

    floats, ints = pa.large_list(pa.float64()), pa.large_list(pa.int64())
    return pa.schema([("block", pa.string()), ("class_index", pa.int64()), ("count", pa.int64()),
                      ("sum_abs_1m", pa.float64()), ("pooled_min", pa.float64()), ("pooled_max", pa.float64()),
                      ("mean", floats), ("m2", floats), ("pooled_hist", ints), ("min", floats), ("max", floats),
                      ("hist", ints)])


def _list_array(parts: list[np.ndarray | None], dtype) -> object:
    """A large_list column from 1-D arrays (None = a null entry)."""
    import pyarrow as pa

    sizes = np.array([0 if p is None else len(p) for p in parts], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    values = [np.asarray(p, dtype=dtype).ravel() for p in parts if p is not None]
    flat = np.concatenate(values) if values else np.zeros(0, dtype)
    mask = pa.array([p is None for p in parts], pa.bool_())
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat), mask=mask)


def _list_values(column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat values, offsets, valid) of a list column read from Parquet."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    return values, offsets, valid


def _load_v1(table, meta: dict) -> GateStats:
    """The first layout: one row per (block, class, channel) with per-channel histograms for every class."""
    frame = table.to_pandas()
    classes = sorted({int(k) for k in frame["class_index"].unique() if k >= 0})
    # Every class had complete per-channel histograms: keep them all (an explicit list, so merges keep them too).
    stats = GateStats(model=meta["model"], blocks=[BlockInfo(**b) for b in meta["blocks"]],
                      class_names=list(meta["class_names"]), bins=int(meta["bins"]), detail_classes=tuple(classes))
    stats._seen = set(classes)
    for (block, k), part in frame.groupby(["block", "class_index"], sort=False, observed=True):
        part = part.sort_values("channel")
        acc = stats.accumulators[str(block)]
        hist = np.stack(part["hist"].to_numpy()).astype(np.int64)
        lo, hi = part["min"].to_numpy(np.float64, copy=True), part["max"].to_numpy(np.float64, copy=True)
        n, k = int(part["count"].iloc[0]), int(k)
        mean, m2 = part["mean"].to_numpy(np.float64, copy=True), part["m2"].to_numpy(np.float64, copy=True)
        sum_abs = float(meta["sum_abs_1m"][f"{block}|{k}"])
        if k < 0:
            acc.n, acc.mean, acc.m2, acc.min, acc.max, acc.hist, acc.sum_abs_1m = n, mean, m2, lo, hi, hist, sum_abs
            continue
        (r,) = acc._rows_for(np.array([k]))
        acc._count[r], acc._mean[r], acc._m2[r], acc._psum[r] = n, mean, m2, sum_abs
        acc._phist[r], acc._pmin[r], acc._pmax[r] = hist.sum(axis=0), lo.min(), hi.max()
        acc.detail[k] = _Detail(hist, lo, hi)
    return stats


def _specificity(counts: np.ndarray, means: np.ndarray, m2: np.ndarray) -> dict:
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


def _mean_pairwise_corr(vectors: np.ndarray) -> float:
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


def stats_from_parquet(path: str | Path, bins: int = DEFAULT_BINS, detail_classes: Iterable[int | str] | None = None,
                       max_detail_classes: int = MAX_DETAIL_CLASSES, chunk: int = 4096) -> GateStats:
    """Statistics of one ``extract`` output, streamed one block column at a time in batches of ``chunk`` rows
    (memory: the statistics plus one batch of one block, whatever the number of images)."""
    import pyarrow.parquet as pq

    from senet_viz.data.store import read_meta

    meta = read_meta(path)
    stats = GateStats.for_blocks(meta["model"], meta["blocks"], meta.get("class_names") or [], bins=bins,
                                 detail_classes=detail_classes, max_detail_classes=max_detail_classes)
    source = pq.ParquetFile(str(path))
    for b in stats.blocks:
        for batch in source.iter_batches(batch_size=chunk, columns=["label", b.name]):
            labels = batch.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
            gates = batch.column(b.name).flatten().to_numpy(zero_copy_only=False).reshape(-1, b.channels)
            stats.update(b.name, gates, labels)
    return stats


def stats_from_excitations(excitations, bins: int = DEFAULT_BINS, chunk: int = 4096,
                           detail_classes: Iterable[int | str] | None = None,
                           max_detail_classes: int = MAX_DETAIL_CLASSES) -> GateStats:
    """Statistics of gates read by :func:`senet_viz.data.store.read_excitations`."""
    stats = GateStats.for_blocks(excitations.meta["model"], excitations.blocks,
                                 excitations.meta.get("class_names") or [], bins=bins,
                                 detail_classes=detail_classes, max_detail_classes=max_detail_classes)
    for start in range(0, len(excitations.keys), chunk):
        labels = excitations.labels[start:start + chunk]
        for b in stats.blocks:
            stats.update(b.name, excitations.gates[b.name][start:start + chunk], labels)
    return stats
