"""Streaming per-class statistics of SE gates (:class:`GateStats`) and how they are built from runs and extracts.

:class:`GateStats` is the one object the rest of senet-viz reads: the accumulators and their exact merge
(:mod:`senet_viz.analysis.stats_accumulate`, per block :mod:`senet_viz.analysis.stats_block`), the views and the
per-block indices (:mod:`senet_viz.analysis.stats_views`) and the Parquet file (:mod:`senet_viz.analysis.stats_io`),
built here from a run that kept its gates (:meth:`GateStats.from_result`), from ``extract`` shards streamed in
batches (:func:`stats_from_parquet`) or from gates read into memory (:func:`stats_from_excitations`). Memory is
fixed by blocks, channels, bins and classes, never by the number of images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np

from senet_viz.analysis.stats_accumulate import DEFAULT_BINS, MAX_DETAIL_CLASSES, UPDATE_BYTES
from senet_viz.analysis.stats_io import read_state, write_state
from senet_viz.analysis.stats_views import GateViews
from senet_viz.data.store import batch_gates, batch_ints, iter_batches, read_shards_meta

if TYPE_CHECKING:  # the statistics need no torch: a Result is only read
    from senet_viz.data.store import Excitations
    from senet_viz.inference.run import Result

GROUPINGS = ("labels", "prediction")


class GateStats(GateViews):
    """Per-class, per-channel gate statistics of every block of one model; streaming, mergeable, saved to Parquet.

    ``detail_classes``: classes (indices) whose per-channel histograms are kept; ``None`` = auto (every class while
    at most ``max_detail_classes`` distinct classes are seen, none after). Built with :meth:`for_blocks` (then
    :meth:`update` batch by batch), :meth:`from_result`, :meth:`load` or :meth:`from_state`.
    """

    @classmethod
    def from_result(cls, result: Result, blocks: Iterable, class_names: Sequence[str], *, by: str = "labels",
                    bins: int = DEFAULT_BINS, detail_classes: Iterable[int | str] | None = None,
                    max_detail_classes: int = MAX_DETAIL_CLASSES) -> Self:
        """Statistics of the per-image gates a pass kept (a :class:`senet_viz.inference.run.Result` run with
        ``keep_gates``), grouped by the images' labels (``by="labels"``, ``class_names``: the image set's classes)
        or by the network's top-1 class (``by="prediction"``, ``class_names``: the model's classes). ``blocks`` as
        for :meth:`for_blocks`; every one must be in ``result.gates``."""
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

    def save(self, path: str | Path) -> None:
        """Write the exact, mergeable state to Parquet (:func:`senet_viz.analysis.stats_io.write_state`);
        :meth:`load` restores an equal object."""
        write_state(self.state(), path)

    @classmethod
    def load(cls, path: str | Path, max_bytes: int | None = None) -> Self:
        """Read a file written by :meth:`save` (this layout or the older per-channel one); safe on untrusted files,
        ``max_bytes`` bounds the memory the statistics may take (:func:`senet_viz.analysis.stats_io.read_state`)."""
        return cls.from_state(read_state(path, max_bytes))


def stats_from_parquet(paths: str | Path | Sequence[str | Path], bins: int = DEFAULT_BINS,
                       detail_classes: Iterable[int | str] | None = None,
                       max_detail_classes: int = MAX_DETAIL_CLASSES, chunk: int = 4096, *,
                       blocks: Sequence[str] | None = None, by: str = "labels") -> GateStats:
    """Statistics of ``extract`` shards (one path or several of the same model), streamed one block column at a
    time in batches of at most ``chunk`` rows (memory: the statistics plus one batch of one block, whatever the
    number of images). ``blocks`` limits the blocks (default: all); ``by="prediction"`` groups by the stored top-1
    class instead of the label (the classes are then the file's class names, which ``extract`` takes from the
    model)."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}, not {by!r}")
    paths, meta = read_shards_meta(paths)
    known = {b["name"]: b for b in meta["blocks"]}
    if blocks is not None:
        unknown = [b for b in blocks if b not in known]
        if unknown:
            raise ValueError(f"blocks {unknown} are not in {paths[0]}; it holds {list(known)}")
    infos = [b for name, b in known.items() if blocks is None or name in set(blocks)]
    stats = GateStats.for_blocks(meta["model"], infos, meta.get("class_names") or [], bins=bins,
                                 detail_classes=detail_classes, max_detail_classes=max_detail_classes)
    group = "label" if by == "labels" else "pred"
    # Every block sees every row: the class rows are allocated once, from the (small) label column.
    stats.reserve(np.concatenate([batch_ints(batch, group) for _, batch in iter_batches(paths, [group], 1 << 16)]))
    for path in paths:
        for b in stats.blocks:
            # At most ``chunk`` rows, and no more than one update step takes (bounded bytes on wide blocks).
            rows = max(1, min(chunk, UPDATE_BYTES // (8 * b.channels)))
            for _, batch in iter_batches([path], [group, b.name], rows):
                stats.update(b.name, batch_gates(batch, b.name, b.channels), batch_ints(batch, group))
    return stats


def stats_from_excitations(excitations: Excitations, bins: int = DEFAULT_BINS, chunk: int = 4096,
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
