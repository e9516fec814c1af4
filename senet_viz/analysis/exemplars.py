"""The images that open and close one SE channel most: top / bottom k per channel, in memory or streamed from disk.

Order: by gate value, ties broken by the lower row (the image's position in the run or the extract file), so the
result is one exact answer whatever the batching. :class:`ChannelTopK` keeps, per channel, only the k best and k
worst (value, row) pairs seen so far, as one int64 key each (the value's order-preserving bits above the row), and
merges a batch with one ``argpartition`` along the rows: memory is ``2 k C`` keys plus one batch, whatever the
number of images.

Sources:

- per-image gates in memory (a run that kept them, :class:`senet_viz.inference.run.Result`):
  :func:`exemplars_from_result`;
- ``extract`` Parquet shards (:mod:`senet_viz.data.store`): :func:`exemplars_from_extract` streams one block column
  (:func:`senet_viz.data.store.iter_batches`, batches of at most ``batch_rows`` images), then, in a second pass,
  only the metadata of the rows it kept. :func:`channel_values_from_extract` streams one channel's gates (one
  float per image) with labels and predictions, for its per-class distribution.

Rows of the metadata frame: ``row`` (position over the shards, in order), ``key``, ``name``, ``label``,
``label_name``, ``pred``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from senet_viz.data.store import batch_gates, batch_ints, iter_batches, read_shards_meta

if TYPE_CHECKING:
    from senet_viz.inference.run import Result

META_COLUMNS = ("key", "name", "label", "label_name", "pred")
_LOW = np.int64(0xFFFFFFFF)


def _ordered(values: np.ndarray, fill: float) -> np.ndarray:
    """int64 that orders like the float32 values (NaN replaced by ``fill``; -0.0 counts as 0.0)."""
    v = np.asarray(values, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 = +0.0
    v = np.where(np.isnan(v), np.float32(fill), v)
    bits = v.view(np.int32).astype(np.int64)
    return np.where(bits >= 0, bits, -(bits & 0x7FFFFFFF) - 1)


def _decode(keys: np.ndarray, top: bool) -> tuple[np.ndarray, np.ndarray]:
    """(values float32, rows int64) of keys made by :meth:`ChannelTopK._keys`."""
    ordered = keys >> 32
    low = keys & _LOW
    rows = (_LOW - low) if top else low
    bits = np.where(ordered >= 0, ordered, (-(ordered + 1)) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32), rows


class ChannelTopK:
    """The ``k`` highest and ``k`` lowest gates of every channel (with their rows), fed batch by batch."""

    def __init__(self, channels: int, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.channels, self.k = int(channels), int(k)
        self.rows = 0
        self._top: np.ndarray | None = None
        self._bottom: np.ndarray | None = None

    @staticmethod
    def _keys(values: np.ndarray, rows: np.ndarray, top: bool) -> np.ndarray:
        ordered = _ordered(values, -np.inf if top else np.inf)
        return (ordered << 32) + ((_LOW - rows) if top else rows)

    def _merge(self, kept: np.ndarray | None, keys: np.ndarray, top: bool) -> np.ndarray:
        cand = keys if kept is None else np.concatenate([kept, keys])
        n, k = len(cand), self.k
        if n <= k:
            return cand
        idx = np.argpartition(cand, n - k, axis=0)[n - k:] if top else np.argpartition(cand, k - 1, axis=0)[:k]
        return np.take_along_axis(cand, idx, axis=0)

    def update(self, gates: np.ndarray, first_row: int | None = None) -> None:
        """Add ``gates`` (N, C) of rows ``first_row ..`` (default: right after the rows seen so far)."""
        gates = np.asarray(gates)
        if gates.ndim != 2 or gates.shape[1] != self.channels:
            raise ValueError(f"gates of shape {gates.shape}, expected (N, {self.channels})")
        if len(gates) == 0:
            return
        start = self.rows if first_row is None else int(first_row)
        if start + len(gates) > 0xFFFFFFFF:
            raise ValueError("more than 2**32 rows")
        rows = np.arange(start, start + len(gates), dtype=np.int64)[:, None]
        self._top = self._merge(self._top, self._keys(gates, rows, True), True)
        self._bottom = self._merge(self._bottom, self._keys(gates, rows, False), False)
        self.rows = max(self.rows, start + len(gates))

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(top_rows, top_values, bottom_rows, bottom_values)``, each (min(k, rows), C): the highest first, the
        lowest first."""
        if self._top is None or self._bottom is None:
            empty = np.zeros((0, self.channels))
            return empty.astype(np.int64), empty.astype(np.float32), empty.astype(np.int64), empty.astype(np.float32)
        top = -np.sort(-self._top, axis=0)
        bottom = np.sort(self._bottom, axis=0)
        top_values, top_rows = _decode(top, True)
        bottom_values, bottom_rows = _decode(bottom, False)
        return top_rows, top_values, bottom_rows, bottom_values


@dataclass
class Exemplars:
    """Top / bottom ``k`` images of some channels of one block. ``*_rows`` / ``*_values``: (k, len(channels)),
    best first; ``images``: the metadata of every row they name (indexed by ``row``)."""

    block: str
    channels: np.ndarray
    top_rows: np.ndarray
    top_values: np.ndarray
    bottom_rows: np.ndarray
    bottom_values: np.ndarray
    images: pd.DataFrame
    n_images: int

    def column(self, channel: int) -> int:
        hits = np.flatnonzero(self.channels == int(channel))
        if not len(hits):
            raise KeyError(f"channel {channel} of {self.block} was not searched; searched: {self.channels.tolist()}")
        return int(hits[0])

    def frame(self, channel: int | None = None, class_names: Sequence[str] | None = None) -> pd.DataFrame:
        """Tidy rows: ``block``, ``channel``, ``end`` ("highest" / "lowest"), ``rank`` (from 1), ``row``, the image's
        metadata (and ``pred_name`` with ``class_names``) and its ``gate``; one channel or all searched."""
        columns = range(len(self.channels)) if channel is None else [self.column(channel)]
        parts = []
        for j in columns:
            for end, rows, values in (("highest", self.top_rows, self.top_values),
                                      ("lowest", self.bottom_rows, self.bottom_values)):
                parts.append(pd.DataFrame({"block": self.block, "channel": int(self.channels[j]), "end": end,
                                           "rank": np.arange(1, len(rows) + 1), "row": rows[:, j],
                                           "gate": values[:, j].astype(np.float64)}))
        out = pd.concat(parts, ignore_index=True).merge(self.images, left_on="row", right_index=True, how="left")
        if class_names is not None:
            names = list(class_names)
            out["pred_name"] = [names[p] if 0 <= p < len(names) else str(p) for p in out["pred"]]
        order = ["block", "channel", "end", "rank", "gate", "row", *META_COLUMNS]
        return out[order + [c for c in out.columns if c not in order]]


def _channels(channels: Sequence[int] | np.ndarray | None, width: int) -> np.ndarray:
    ids = np.arange(width) if channels is None else np.asarray(list(channels), dtype=np.int64).ravel()
    bad = ids[(ids < 0) | (ids >= width)]
    if len(bad):
        raise ValueError(f"channels {bad.tolist()} are out of range: the block has {width} channels (0..{width - 1})")
    return ids


def _exemplars(block: str, ids: np.ndarray, topk: ChannelTopK, images: pd.DataFrame) -> Exemplars:
    top_rows, top_values, bottom_rows, bottom_values = topk.result()
    return Exemplars(block, ids, top_rows, top_values, bottom_rows, bottom_values, images, topk.rows)


def exemplars_from_gates(gates: np.ndarray, k: int, channels: Sequence[int] | None = None, *, block: str = "",
                         meta: pd.DataFrame | None = None) -> Exemplars:
    """Exemplars of gates in memory, (N, C); ``meta``: one row per image with :data:`META_COLUMNS`."""
    gates = np.asarray(gates)
    ids = _channels(channels, gates.shape[1])
    topk = ChannelTopK(len(ids), k)
    topk.update(gates[:, ids])
    if meta is None:
        meta = pd.DataFrame({"key": [str(i) for i in range(len(gates))], "name": [str(i) for i in range(len(gates))],
                             "label": -1, "label_name": None, "pred": -1})
    top_rows, _, bottom_rows, _ = topk.result()
    rows = np.unique(np.concatenate([top_rows.ravel(), bottom_rows.ravel()]))
    images = meta.reset_index(drop=True).iloc[rows][list(META_COLUMNS)]
    images.index = pd.Index(rows, name="row")
    return _exemplars(block, ids, topk, images)


def result_meta(result: Result) -> pd.DataFrame:
    """The metadata frame of a run's images (one row per image, in the run's order)."""
    return pd.DataFrame({"key": result.keys, "name": result.names, "label": np.asarray(result.labels, np.int64),
                         "label_name": result.label_names, "pred": np.asarray(result.pred, np.int64)})


def exemplars_from_result(result: Result, block: str, k: int, channels: Sequence[int] | None = None) -> Exemplars:
    """Exemplars from a run that kept its per-image gates (``keep_gates``)."""
    if block not in result.gates:
        raise ValueError(f"the run kept no per-image gates of {block!r}: run it with keep_gates=True "
                         "(the app keeps them for small image sets) or extract them to Parquet")
    return exemplars_from_gates(result.gates[block], k, channels, block=block, meta=result_meta(result))


def channel_values(result: Result, block: str, channel: int) -> pd.DataFrame:
    """One channel's gate per image of a run that kept its gates, with the image's metadata."""
    if block not in result.gates:
        raise ValueError(f"the run kept no per-image gates of {block!r}")
    gates = result.gates[block]
    (channel,) = _channels([channel], gates.shape[1])
    out = result_meta(result)
    out.insert(0, "row", np.arange(len(out)))
    out["gate"] = gates[:, channel].astype(np.float64)
    return out


# ------------------------------------------------------------------------------------------ extract files


def _block_width(meta: dict, path: Path, block: str) -> int:
    widths = {b["name"]: int(b["channels"]) for b in meta["blocks"]}
    if block not in widths:
        raise ValueError(f"block {block!r} is not in {path}; it holds {list(widths)}")
    return widths[block]


def extract_meta(paths: str | Path | Sequence[str | Path], rows: np.ndarray | None = None,
                 batch_rows: int = 65_536) -> pd.DataFrame:
    """The metadata of the given rows (all when None) of ``extract`` shards, indexed by ``row``; reads only the
    metadata columns, one row group at a time."""
    wanted = None if rows is None else np.unique(np.asarray(rows, np.int64))
    parts = []
    for first, batch in iter_batches(read_shards_meta(paths)[0], META_COLUMNS, batch_rows):
        local = np.arange(batch.num_rows) if wanted is None else \
            wanted[(wanted >= first) & (wanted < first + batch.num_rows)] - first
        if not len(local):
            continue
        part = batch.take(local).to_pandas()
        part.index = pd.Index(local + first, name="row")
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(META_COLUMNS), index=pd.Index([], name="row"))
    out = pd.concat(parts)
    out["label"], out["pred"] = out["label"].astype(np.int64), out["pred"].astype(np.int64)
    return out[list(META_COLUMNS)]


def exemplars_from_extract(paths: str | Path | Sequence[str | Path], block: str, k: int,
                           channels: Sequence[int] | None = None, batch_rows: int = 1024) -> Exemplars:
    """Top / bottom ``k`` per channel of ``block`` over ``extract`` shards (rows numbered across the shards in
    order), streamed: one block column read by row group, at most ``batch_rows`` images at a time, then the
    metadata of the kept rows only."""
    paths, meta = read_shards_meta(paths)
    width = _block_width(meta, paths[0], block)
    ids = _channels(channels, width)
    topk = ChannelTopK(len(ids), k)
    every = channels is None
    for first, batch in iter_batches(paths, [block], batch_rows):
        gates = batch_gates(batch, block, width)
        topk.update(gates if every else gates[:, ids], first)
    top_rows, _, bottom_rows, _ = topk.result()
    images = extract_meta(paths, np.concatenate([top_rows.ravel(), bottom_rows.ravel()]))
    return _exemplars(block, ids, topk, images)


def channel_values_from_extract(paths: str | Path | Sequence[str | Path], block: str, channel: int,
                                batch_rows: int = 4096) -> pd.DataFrame:
    """One channel's gate per image of ``extract`` shards with ``row``, ``label`` and ``pred`` (streamed: one block
    column by row group; the result holds three numbers per image)."""
    paths, meta = read_shards_meta(paths)
    width = _block_width(meta, paths[0], block)
    (channel,) = _channels([channel], width)
    rows, labels, preds, values = [], [], [], []
    for first, batch in iter_batches(paths, ["label", "pred", block], batch_rows):
        values.append(batch_gates(batch, block, width)[:, channel].astype(np.float64))
        labels.append(batch_ints(batch, "label"))
        preds.append(batch_ints(batch, "pred"))
        rows.append(np.arange(first, first + batch.num_rows))
    cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))  # noqa: E731
    return pd.DataFrame({"row": cat(rows, np.int64), "label": cat(labels, np.int64), "pred": cat(preds, np.int64),
                         "gate": cat(values, np.float64)})
