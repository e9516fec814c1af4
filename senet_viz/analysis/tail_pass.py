"""The ablated pass of tail replay (:mod:`senet_viz.inference.tail`), for :func:`senet_viz.analysis.ablation.evaluate`:
the tails run batch by batch under the ablation (:class:`TailPass`), from a pass's activations or from those a full
pass kept (:func:`replay_kept`), and a full result limited to the images evaluated (:func:`result_rows`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from senet_viz.data.sources import ImageSet, Skipped
from senet_viz.gates.capture import ablate
from senet_viz.gates.kinds import SEBlock
from senet_viz.inference.precision import ForwardCounter, PrecisionPolicy
from senet_viz.inference.run import Ablation, Cancelled, ProgressFn, Result
from senet_viz.inference.tail import Cut, TailPlan
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.outputs import probabilities

__all__ = ["REPLAY_OFF", "CancelFn", "TailPass", "calibration_rows", "replay_kept", "result_rows"]

REPLAY_OFF = "tail replay is off (SENET_VIZ_TAIL_REPLAY=0)"
CancelFn = Callable[[], bool]


class TailPass:
    """An ablated pass computed batch by batch from activations the caller has: the tail after ``cut`` (or the
    whole network when ``cut`` is None and the batches are inputs) under the ablation, at ``precision``."""

    def __init__(self, loaded: LoadedModel, plan: TailPlan | None, cut: Cut | None, ablation: Ablation,
                 precision: str, counter: ForwardCounter | None) -> None:
        self.loaded, self.ablation = loaded, ablation
        self.net = plan.tail(cut) if cut is not None and plan is not None else loaded.model
        self.policy = PrecisionPolicy(precision, loaded.device, counter=counter)
        self.top5: list[np.ndarray] = []
        self.prob5: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """float32 logits of the ablated network from the batch's activation ``a`` (on the device)."""
        gone = self.ablation
        with ablate(self.loaded.model, gone.blocks, mode=gone.mode, means=gone.means):
            return self.policy.forward(self.net, a)

    def add(self, a: torch.Tensor) -> None:
        logits = self.forward(a)
        # As run_model ranks: top-k of the probabilities.
        p5, i5 = probabilities(logits, self.loaded.outputs).topk(min(5, logits.shape[1]), dim=1)
        self.top5.append(i5.cpu().numpy())
        self.prob5.append(p5.cpu().numpy())
        self.logits.append(logits.cpu().numpy())

    def result(self, full: Result) -> Result:
        """The ablated pass's :class:`Result`, over the images of ``full`` (in its order)."""
        k = full.top5.shape[1]
        top5 = np.concatenate(self.top5) if self.top5 else np.zeros((0, k), np.int64)
        return replace(full, pred=top5[:, 0], top5=top5, gates={},
                       top5_prob=np.concatenate(self.prob5) if self.prob5 else np.zeros((0, k), np.float32),
                       logits=np.concatenate(self.logits) if self.logits else None,
                       precision=self.policy.name, fp32_fallback_batches=self.policy.fallback_batches,
                       forwarded=self.policy.forwarded, cuts=None, cuts_note="")


def result_rows(full: Result | None, keys: list[str], skipped: Sequence[Skipped]) -> Result | None:
    """``full`` limited to the images ``keys`` in that order (None when one of them is not in it), ``skipped``
    those of the subset that could not be read. Only a result with kept activations is subset (without them, the
    ablated pass decodes the images anyway)."""
    if full is None or full.keys == keys:
        return full
    if full.cuts is None:
        return None
    where = {k: i for i, k in enumerate(full.keys)}
    if not all(k in where for k in keys):
        return None
    rows = np.array([where[k] for k in keys], dtype=np.int64)
    return replace(full, keys=list(keys), names=[full.names[i] for i in rows], labels=full.labels[rows],
                   label_names=[full.label_names[i] for i in rows], pred=full.pred[rows], top5=full.top5[rows],
                   top5_prob=full.top5_prob[rows], gates={k: v[rows] for k, v in full.gates.items()},
                   skipped=list(skipped),
                   logits=None if full.logits is None else full.logits[rows], cuts=full.cuts.select(rows))


def replay_kept(pass_: TailPass, full: Result, cut: Cut, batch_size: int, progress: ProgressFn | None,
                 cancel: CancelFn | None) -> Result:
    """The ablated pass from the activations ``full`` kept at ``cut``: no decoding, only the tails."""
    kept = full.cuts
    for start in range(0, full.n, batch_size):
        if cancel is not None and cancel():
            raise Cancelled("the pass was cancelled")
        stop = min(start + batch_size, full.n)
        a = kept.rows(cut.node, slice(start, stop)).to(pass_.loaded.device)
        if a.device.type == "cuda" and a.dim() == 4:  # as the pipeline feeds a model on CUDA (channels last)
            a = a.contiguous(memory_format=torch.channels_last)
        pass_.add(a)
        if progress is not None:
            progress(stop, full.n)
    return pass_.result(full)


def calibration_rows(full: Result | None, calib: ImageSet, blocks: Sequence[SEBlock]) -> Result | None:
    """The calibration pass of mean ablation read from a full pass that kept every image's gates: ``full``'s rows
    of the images ``calib`` in their order, or None when one of them or a block's gates is missing. The gates of
    the blocks to freeze are the full network's own, so a calibration pass would recompute exactly these rows."""
    keys, blocks = [it.key for it in calib.items], [b.name for b in blocks]
    if full is None or not full.gates or any(b not in full.gates for b in blocks):
        return None
    where = {k: i for i, k in enumerate(full.keys)}
    if not all(k in where for k in keys):
        return None
    rows = np.array([where[k] for k in keys], dtype=np.int64)
    return replace(full, keys=list(keys), gates={b: full.gates[b][rows] for b in blocks}, cuts=None,
                   fp32_fallback_batches=0)
