"""How the passes of one computation are split between processes: :class:`Shards`.

:func:`senet_viz.analysis.ablation.evaluate` and :func:`senet_viz.analysis.paper.paper_preset` run their passes
over ``shards.shard(images)`` and combine what the passes return with ``shards.gather_*``, so that one body serves
a single process (:data:`ONE_PROCESS`: all the images here, nothing to gather) and a ``torchrun`` / SLURM launch
(:class:`senet_viz.inference.distributed.Group`: this rank's batches, exact reductions on rank 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np

from senet_viz.data.sources import ImageSet
from senet_viz.inference.run import Result

S = TypeVar("S")


class Shards(Protocol):
    """This process's share of a computation and how the shares come together (None where this process does not
    receive the whole: a rank other than 0)."""

    def shard(self, images: ImageSet, batch_size: int) -> ImageSet:
        """This process's images of ``images`` (whole batches of ``batch_size``)."""

    def gather_result(self, result: Result, images: ImageSet, *, gates: bool = False, logits: bool = False,
                      to_all: bool = False) -> Result | None:
        """The :class:`Result` one process would have produced over ``images`` from each process's result over its
        share (per-image gates / logits only when asked; on every process with ``to_all``)."""

    def gather_rows(self, keys: Sequence[str], values: np.ndarray, images: ImageSet) -> np.ndarray | None:
        """Per-image ``values`` of every process (row i belongs to ``keys[i]``) in ``images`` order."""

    def reduce_stats(self, stats: S) -> S | None:
        """Every process's gate statistics merged into one."""


class OneProcess:
    """:class:`Shards` of a single process: every image is its own, every gather returns what it is given."""

    def shard(self, images: ImageSet, batch_size: int) -> ImageSet:
        return images

    def gather_result(self, result: Result, images: ImageSet, *, gates: bool = False, logits: bool = False,
                      to_all: bool = False) -> Result:
        return result

    def gather_rows(self, keys: Sequence[str], values: np.ndarray, images: ImageSet) -> np.ndarray:
        return values

    def reduce_stats(self, stats: S) -> S:
        return stats


ONE_PROCESS = OneProcess()
