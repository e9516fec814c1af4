"""Streaming per-class statistics of SE gates, and the indices that summarise them per block.

:class:`GateStats` accumulates, for every block, every group (each class, plus ``"all"``) and every channel:
count, mean and M2 (Welford; partial results merge exactly with Chan et al.'s formula), min, max and a
histogram of ``bins`` equal bins on [0, 1]. Memory is O(blocks x groups x channels x bins), independent of
the number of images, and shards merge into exactly what one pass gives.

Indices per block (:meth:`GateStats.indices`), with ``m_kc`` the mean gate of channel c over the images of
class k, ``n_k`` the class sizes, ``m_c`` the all-image mean and ``v_kc`` the within-class variance:

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
  vectors over all pairs of classes (1: classes excite channels in the same pattern).
- **constancy and class sizes**: ``all_std_max`` = the largest per-channel std over all images (about 0 when the
  block's gate is a constant, e.g. a hard-sigmoid clipped at 1), ``gate_min`` / ``gate_max`` over all images and
  channels, and ``min_class_count`` / ``max_class_count`` = images in the smallest / largest class.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ALL = "all"
DEFAULT_BINS = 50
DEFAULT_THRESHOLD = 0.9


@dataclass
class BlockInfo:
    name: str
    stage: int
    order: int
    channels: int


@dataclass
class _Acc:
    """Accumulators of one block for one group (class or all)."""

    count: int
    mean: np.ndarray  # (C,) float64
    m2: np.ndarray  # (C,) float64, sum of squared deviations
    min: np.ndarray
    max: np.ndarray
    hist: np.ndarray  # (C, bins) int64
    sum_abs_1m: float = 0.0  # sum of |1 - s| over images and channels

    @classmethod
    def empty(cls, channels: int, bins: int) -> _Acc:
        return cls(0, np.zeros(channels), np.zeros(channels), np.full(channels, np.inf), np.full(channels, -np.inf),
                   np.zeros((channels, bins), np.int64))

    def merge(self, o: _Acc) -> None:
        """Chan et al.'s parallel update: exact for means and M2 of two disjoint parts."""
        if o.count == 0:
            return
        n = self.count + o.count
        delta = o.mean - self.mean
        self.m2 = self.m2 + o.m2 + delta**2 * (self.count * o.count / n)
        self.mean = self.mean + delta * (o.count / n)
        self.count = n
        np.minimum(self.min, o.min, out=self.min)
        np.maximum(self.max, o.max, out=self.max)
        self.hist += o.hist
        self.sum_abs_1m += o.sum_abs_1m

    @classmethod
    def of(cls, values: np.ndarray, bins: int) -> _Acc:
        """Accumulator of a batch (N, C) of float64 values."""
        n, channels = values.shape
        mean = values.mean(axis=0)
        idx = np.clip((values * bins).astype(np.int64), 0, bins - 1)  # gate 1.0 goes to the last bin
        flat = (idx + np.arange(channels) * bins).ravel()
        hist = np.bincount(flat, minlength=channels * bins).reshape(channels, bins)
        return cls(n, mean, ((values - mean) ** 2).sum(axis=0), values.min(axis=0), values.max(axis=0), hist,
                   float(np.abs(1.0 - values).sum()))


@dataclass
class GateStats:
    """Per-class, per-channel gate statistics of every block of one model; streaming and mergeable."""

    model: str
    blocks: list[BlockInfo]
    class_names: list[str]
    bins: int = DEFAULT_BINS
    acc: dict[tuple[str, int], _Acc] = field(default_factory=dict)  # (block, class index or -1 = all)

    @classmethod
    def for_blocks(cls, model: str, blocks: Iterable, class_names: Sequence[str], bins: int = DEFAULT_BINS
                   ) -> GateStats:
        """From SEBlock objects or dicts with name/stage/channels (order = position)."""
        infos = []
        for i, b in enumerate(blocks):
            get = b.get if isinstance(b, Mapping) else lambda k, b=b: getattr(b, k)
            infos.append(BlockInfo(get("name"), int(get("stage")), i, int(get("channels"))))
        return cls(model=model, blocks=infos, class_names=list(class_names), bins=bins)

    def _block(self, name: str) -> BlockInfo:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"unknown block {name!r}; blocks are {[b.name for b in self.blocks]}")

    def update(self, block: str, gates: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch: ``gates`` (N, C) of block ``block`` with class indices ``labels`` (N,), -1 = unknown."""
        info = self._block(block)
        values = np.asarray(gates, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != info.channels:
            raise ValueError(f"{block}: gates of shape {values.shape}, expected (N, {info.channels})")
        labels = np.asarray(labels, dtype=np.int64)
        if len(values) == 0:
            return
        groups = [(-1, slice(None))] + [(int(k), labels == k) for k in np.unique(labels) if k >= 0]
        for key, rows in groups:
            part = _Acc.of(values[rows], self.bins)
            acc = self.acc.setdefault((block, key), _Acc.empty(info.channels, self.bins))
            acc.merge(part)

    def update_all(self, gates: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
        for name, g in gates.items():
            self.update(name, g, labels)

    def merge(self, other: GateStats) -> GateStats:
        """Add another part (e.g. another shard) into this one, in place; returns self."""
        if [b.name for b in other.blocks] != [b.name for b in self.blocks] or other.bins != self.bins:
            raise ValueError("cannot merge statistics of different blocks or bin counts")
        if other.class_names != self.class_names:
            raise ValueError("cannot merge statistics with different class lists")
        for key, acc in other.acc.items():
            info = self._block(key[0])
            self.acc.setdefault(key, _Acc.empty(info.channels, self.bins)).merge(acc)
        return self

    # ------------------------------------------------------------------ views

    def class_label(self, k: int) -> str:
        return ALL if k < 0 else (self.class_names[k] if k < len(self.class_names) else str(k))

    def classes(self) -> list[int]:
        return sorted({k for (_, k) in self.acc if k >= 0})

    def frame(self) -> pd.DataFrame:
        """Tidy per-channel statistics: one row per (model, block, class, channel); ``hist`` holds the counts."""
        parts = []
        for b in self.blocks:
            for k in [-1, *self.classes()]:
                acc = self.acc.get((b.name, k))
                if acc is None or acc.count == 0:
                    continue
                std = np.sqrt(acc.m2 / max(acc.count - 1, 1)) if acc.count > 1 else np.zeros(b.channels)
                parts.append(pd.DataFrame({
                    "model": self.model, "block": b.name, "stage": b.stage, "order": b.order,
                    "class": self.class_label(k), "class_index": k, "channel": np.arange(b.channels),
                    "count": acc.count, "mean": acc.mean, "std": std, "min": acc.min, "max": acc.max,
                    "hist": list(acc.hist),
                }))
        columns = ["model", "block", "stage", "order", "class", "class_index", "channel", "count", "mean", "std",
                   "min", "max", "hist"]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)

    def indices(self, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
        """One row per block: specificity, saturation and correlation indices (formulas in the module doc)."""
        rows = []
        for b in self.blocks:
            total = self.acc.get((b.name, -1))
            if total is None or total.count == 0:
                continue
            classes = [k for k in self.classes() if (b.name, k) in self.acc]
            accs = [self.acc[(b.name, k)] for k in classes]
            row = {"model": self.model, "block": b.name, "stage": b.stage, "order": b.order, "channels": b.channels,
                   "n_images": total.count, "n_classes": len(classes), "threshold": threshold}
            row.update(_specificity(accs))
            class_means = np.array([a.mean for a in accs])
            counts = [a.count for a in accs]
            row.update({
                "saturation": float((total.mean >= threshold).mean()),
                "mean_abs_1_minus_s": total.sum_abs_1m / (total.count * b.channels),
                "share_near_0": float((total.mean <= 1 - threshold).mean()),
                "mean_gate": float(total.mean.mean()),
                "cross_class_corr": _mean_pairwise_corr(class_means),
                # From M2 and the running min/max only: no histogram is read.
                "all_std_max": float(np.sqrt(total.m2 / (total.count - 1)).max()) if total.count > 1 else float("nan"),
                "gate_min": float(total.min.min()),
                "gate_max": float(total.max.max()),
                "min_class_count": min(counts) if counts else 0,
                "max_class_count": max(counts) if counts else 0,
            })
            rows.append(row)
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Write the tidy frame (with histograms) to Parquet; :meth:`load` restores an equal object."""
        frame = self.frame()
        frame["hist"] = [np.asarray(h, dtype=np.int64) for h in frame["hist"]]
        # Exact state for merging: M2 and the |1 - s| sums are stored beside the readable columns.
        m2 = {(b, k): a.m2 for (b, k), a in self.acc.items()}
        frame["m2"] = np.concatenate([m2[(b, k)] for b, k in _group_keys(frame)]) if len(frame) else []
        meta = {"model": self.model, "bins": self.bins, "class_names": self.class_names,
                "blocks": [vars(b) for b in self.blocks],
                "sum_abs_1m": {f"{b}|{k}": a.sum_abs_1m for (b, k), a in self.acc.items()}}
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"senet_viz_stats": json.dumps(meta).encode()})
        pq.write_table(table, str(path), compression="zstd")

    @classmethod
    def load(cls, path: str | Path) -> GateStats:
        import pyarrow.parquet as pq

        table = pq.read_table(str(path))
        meta = json.loads(table.schema.metadata[b"senet_viz_stats"])
        stats = cls(model=meta["model"], blocks=[BlockInfo(**b) for b in meta["blocks"]],
                    class_names=meta["class_names"], bins=meta["bins"])
        frame = table.to_pandas()
        for (block, k), part in frame.groupby(["block", "class_index"], sort=False):
            part = part.sort_values("channel")
            stats.acc[(block, int(k))] = _Acc(
                count=int(part["count"].iloc[0]), mean=part["mean"].to_numpy(np.float64, copy=True),
                m2=part["m2"].to_numpy(np.float64, copy=True), min=part["min"].to_numpy(np.float64, copy=True),
                max=part["max"].to_numpy(np.float64, copy=True),
                hist=np.stack(part["hist"].to_numpy()).astype(np.int64),
                sum_abs_1m=float(meta["sum_abs_1m"][f"{block}|{int(k)}"]))
        return stats


def _group_keys(frame: pd.DataFrame) -> list[tuple[str, int]]:
    keys = frame[["block", "class_index"]].drop_duplicates()
    return [(b, int(k)) for b, k in keys.itertuples(index=False)]


def _specificity(accs: list[_Acc]) -> dict:
    if len(accs) < 2:
        return {"specificity": float("nan"), "specificity_method": "needs 2+ classes", "eta2": float("nan"),
                "spread": float("nan")}
    n = np.array([a.count for a in accs], dtype=np.float64)
    means = np.array([a.mean for a in accs])  # (K, C)
    grand = (n[:, None] * means).sum(axis=0) / n.sum()
    between = (n[:, None] * (means - grand) ** 2).sum(axis=0) / n.sum()
    within = np.array([a.m2 for a in accs]).sum(axis=0) / n.sum()  # sum_k n_k v_kc / N with v = M2 / n_k
    max_spread = np.sqrt(np.clip(grand * (1 - grand), 0, None)).mean()
    spread = float(means.std(axis=0).mean() / max_spread) if max_spread > 0 else 0.0
    has_within = bool((n >= 2).any())
    denom = between.sum() + within.sum()
    eta2 = float(between.sum() / denom) if has_within and denom > 0 else (0.0 if has_within else float("nan"))
    return {"specificity": eta2 if has_within else spread, "specificity_method": "eta2" if has_within else "spread",
            "eta2": eta2, "spread": spread}


def _mean_pairwise_corr(vectors: np.ndarray) -> float:
    if len(vectors) < 2:
        return float("nan")
    centered = vectors - vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centered, axis=1)
    ok = norms > 0
    if ok.sum() < 2:
        return 1.0  # constant vectors: identical patterns
    unit = centered[ok] / norms[ok, None]
    corr = unit @ unit.T
    upper = corr[np.triu_indices(len(unit), k=1)]
    return float(upper.mean())


def hist_quantile(hist: np.ndarray, q: float | np.ndarray) -> np.ndarray:
    """Quantile(s) from a histogram of equal bins on [0, 1], interpolating linearly within the bin."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = hist.shape[-1]
    cdf = np.cumsum(hist, axis=-1)
    total = cdf[..., -1:]
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    out = np.empty((*hist.shape[:-1], len(qs)))
    for j, qq in enumerate(qs):
        target = qq * total
        idx = np.minimum((cdf < target).sum(axis=-1, keepdims=True), bins - 1)
        below = np.where(idx > 0, np.take_along_axis(cdf, np.maximum(idx - 1, 0), axis=-1), 0.0)
        inside = np.take_along_axis(hist, idx, axis=-1)
        frac = np.where(inside > 0, (target - below) / np.where(inside > 0, inside, 1), 0.0)
        out[..., j] = ((idx + np.clip(frac, 0, 1)) / bins)[..., 0]
    return out[..., 0] if np.ndim(q) == 0 else out


def stats_from_parquet(path: str | Path, bins: int = DEFAULT_BINS) -> GateStats:
    """Statistics of one ``extract`` output, read one block column at a time (memory: one block's gates)."""
    from .store import read_excitations, read_meta

    meta = read_meta(path)
    stats = GateStats.for_blocks(meta["model"], meta["blocks"], meta.get("class_names") or [], bins=bins)
    for b in stats.blocks:
        part = read_excitations(path, blocks=[b.name])
        for start in range(0, len(part.keys), 4096):
            stats.update(b.name, part.gates[b.name][start:start + 4096], part.labels[start:start + 4096])
    return stats


def stats_from_excitations(excitations, bins: int = DEFAULT_BINS, chunk: int = 4096) -> GateStats:
    """Statistics of gates read by :func:`senet_viz.store.read_excitations`."""
    stats = GateStats.for_blocks(excitations.meta["model"], excitations.blocks,
                                 excitations.meta.get("class_names") or [], bins=bins)
    for start in range(0, len(excitations.keys), chunk):
        labels = excitations.labels[start:start + chunk]
        for b in stats.blocks:
            stats.update(b.name, excitations.gates[b.name][start:start + chunk], labels)
    return stats
