"""Batched inference over an image set: gates captured, optional SE ablation, metrics.

``run_model(loaded, images, blocks, RunOptions(...), pixel_cache=...)`` prepares images on background threads
while the network runs (:mod:`senet_viz.inference.pipeline`: a file that cannot be read is skipped with its reason,
never fatal to the batch), runs the network on its device under the model's lock at the precision of
:class:`~senet_viz.inference.precision.PrecisionPolicy`, records every SE gate (copied to the host once per batch),
and returns a :class:`Result` of plain arrays. A run keeps no state outside itself: what it counted (images
forwarded, batches redone in fp32) is in its :class:`Result`, and in the ``counter`` its options name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from senet_viz.data.sources import ImageSet, Skipped
from senet_viz.gates.capture import ablate, capture
from senet_viz.gates.kinds import SEBlock
from senet_viz.inference.pipeline import Pipeline, PixelCache, default_workers, prefetch
from senet_viz.inference.precision import ForwardCounter, PrecisionPolicy
from senet_viz.inference.tail import Cut, find_cuts, replay_enabled
from senet_viz.inference.tail_kept import CutCollector, KeptCuts, cuts_to_keep
from senet_viz.models.loaded import LoadedModel, resolve_device
from senet_viz.models.outputs import probabilities

ProgressFn = Callable[[int, int], None]  # (images done, images total)
GatesFn = Callable[[str, np.ndarray, np.ndarray], None]  # (block name, gates, label indices) per batch
BatchFn = Callable[[list[int], torch.Tensor, torch.Tensor], None]  # (image indices, input, logits) per batch
# (image indices, input, logits, cut node -> activation) per batch: RunOptions.cuts' activations on the device
ActivationsFn = Callable[[list[int], torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], None]


class Cancelled(RuntimeError):
    """A pass stopped between batches because its ``cancel()`` said so (``RunOptions.cancel``)."""


@dataclass
class Result:
    """What one pass over an image set produced. Row i of every array is image ``keys[i]``."""

    model: str
    keys: list[str]
    names: list[str]
    labels: np.ndarray  # int64 class index per image, -1 where unknown
    label_names: list[str | None]
    pred: np.ndarray  # int64 top-1 class index
    top5: np.ndarray  # int64 (N, 5) class indices, best first
    top5_prob: np.ndarray  # float32 (N, 5) probabilities, read as the model means its outputs (LoadedModel.outputs)
    gates: dict[str, np.ndarray]  # block name -> float16 (N, C)
    skipped: list[Skipped] = field(default_factory=list)
    logits: np.ndarray | None = None  # float32 (N, classes) when kept: the network's outputs as it returns them
    precision: str = "fp32"  # what the forwards ran in: "fp32", "bf16" or "fp16" (see PrecisionPolicy)
    fp32_fallback_batches: int = 0  # batches computed in fp32 because reduced precision was not finite
    forwarded: int = 0  # images sent through the network, a batch redone in fp32 twice
    cuts: KeptCuts | None = None  # activations kept per image for tail replay (RunOptions.keep_cuts), read-only
    cuts_note: str = ""  # why none or fewer were kept (budget, replay off, a network that cannot be cut)

    @property
    def n(self) -> int:
        return len(self.keys)

    def accuracy(self, k: int = 1) -> float | None:
        """Top-k accuracy over the images with a known label (None when no image has one)."""
        known = self.labels >= 0
        if not known.any():
            return None
        hits = (self.top5[known, :k] == self.labels[known, None]).any(axis=1)
        return float(hits.mean())

    def predictions(self, class_names: Sequence[str]) -> pd.DataFrame:
        """One row per image: ``key``, ``name``, ``label`` (-1: unknown), ``label_name``, ``pred`` and ``pred_name``
        (``class_names``: the model's classes)."""
        return pd.DataFrame({"key": self.keys, "name": self.names, "label": self.labels,
                             "label_name": self.label_names, "pred": self.pred,
                             "pred_name": [class_names[p] for p in self.pred]})

    def labelled_by_prediction(self, images: ImageSet, class_names: Sequence[str]) -> ImageSet:
        """The images of this result (those it kept, in its order, taken from ``images``), each labelled with the
        network's top-1 class (``class_names``: the model's classes): a pass over them with streamed statistics
        groups the gates by prediction without keeping per-image gates."""
        by_key = {it.key: it for it in images.items}
        items = [replace(by_key[k], label=int(p), label_name=class_names[int(p)])
                 for k, p in zip(self.keys, self.pred, strict=True)]
        return replace(images, items=items, skipped=[], class_names=list(class_names))

    def top5_frame(self, key: str, class_names: Sequence[str]) -> pd.DataFrame:
        """The top-5 of image ``key``: ``rank`` (from 1), ``class`` and ``probability``, best first."""
        row = self.keys.index(key)
        return pd.DataFrame({"rank": range(1, self.top5.shape[1] + 1),
                             "class": [class_names[c] for c in self.top5[row]],
                             "probability": self.top5_prob[row]})


@dataclass(frozen=True)
class Ablation:
    """SE gates replaced during a pass: those of ``blocks``, by 1 (``mode="identity"``) or by the per-channel
    ``means`` (``mode="mean"``, block name -> float32 (C,))."""

    blocks: Sequence[SEBlock]
    mode: str = "identity"
    means: Mapping[str, np.ndarray] | None = None


@dataclass(frozen=True)
class RunOptions:
    """How :func:`run_model` runs; the defaults suit an interactive pass.

    ``batch_size``: images per forward. ``num_workers``: decode threads (None:
    :func:`~senet_viz.inference.pipeline.default_workers`; 0: decode in the calling thread). ``device``: where the
    model must live (None: wherever it was loaded). ``precision``: "auto", "fp32", "bf16" or "fp16", with the fp32
    redo of overflowing batches unless ``fp32_fallback=False`` (see
    :class:`~senet_viz.inference.precision.PrecisionPolicy`). ``device_decode``: decode JPEGs on the model's device
    in batches (None: on CUDA). ``keep_logits`` / ``keep_gates``: keep them per image in the :class:`Result`.
    ``ablation``: SE gates replaced during the pass. ``progress(images done, total)`` after each batch;
    ``on_gates(block name, gates, label indices)`` per batch and block, for streaming statistics.
    ``on_batch(indices, x, logits)`` after each batch's forward with the batch's image indices (into
    ``images.items``), its normalised input on the device and the network's float32 logits (on the device),
    inside the model's lock and the pass's inference mode: more forwards of the same model on the same decoded
    input (e.g. :func:`senet_viz.analysis.ablation.sweep`'s ablated configurations) run there without decoding
    again. ``counter`` adds up the images forwarded over every run it is given to.

    Tail replay (:mod:`senet_viz.inference.tail`): ``cuts`` (of :func:`~senet_viz.inference.tail.find_cuts`'s plan)
    makes the pass run the network's traced graph, which also returns the activations at those cuts, handed to
    ``on_activations(indices, x, logits, {cut node: activation})`` per batch (on the device, in the dtype the
    network computed them in). ``keep_cuts=True`` keeps, per image, the activations at the last stage's cuts in the
    :class:`Result` (``Result.cuts``, :func:`~senet_viz.inference.tail.cuts_to_keep`), within ``cuts_budget``
    bytes (None: :func:`~senet_viz.inference.tail.cuts_budget_bytes`), so that a later ablation of those blocks
    replays only the tail; ``Result.cuts_note`` says why none or fewer were kept. ``replay`` (None:
    ``$SENET_VIZ_TAIL_REPLAY``) False keeps none. ``cancel()`` is asked before each batch; True stops the pass
    with :class:`Cancelled`.
    """

    batch_size: int = 32
    num_workers: int | None = None
    device: str | None = None
    precision: str = "auto"
    fp32_fallback: bool = True
    device_decode: bool | None = None
    keep_logits: bool = True
    keep_gates: bool = True
    ablation: Ablation | None = None
    progress: ProgressFn | None = None
    on_gates: GatesFn | None = None
    on_batch: BatchFn | None = None
    counter: ForwardCounter | None = None
    cuts: Sequence[Cut] = ()
    on_activations: ActivationsFn | None = None
    keep_cuts: bool = False
    cuts_budget: int | None = None
    replay: bool | None = None
    cancel: Callable[[], bool] | None = None


def _tapping(loaded: LoadedModel, items_n: int, options: RunOptions) -> tuple[list[Cut], CutCollector | None, str]:
    """The cuts a pass computes (those asked for, then those it keeps), the collector of the kept ones and why
    none or fewer are kept."""
    cuts = list(options.cuts)
    if not options.keep_cuts:
        return cuts, None, ""
    if not replay_enabled(options.replay):
        return cuts, None, "tail replay is off (SENET_VIZ_TAIL_REPLAY=0)"
    plan = find_cuts(loaded)
    # 4 bytes per element, what fp32 needs: a pass under autocast may keep some activations in fp32
    keep, note = cuts_to_keep(plan, loaded.blocks, items_n, 4, options.cuts_budget)
    cuts += [c for c in keep if c not in cuts]
    return cuts, (CutCollector(keep, note) if keep else None), note


def run_model(loaded: LoadedModel, images: ImageSet, blocks: Sequence[SEBlock] | None = None,
              options: RunOptions = RunOptions(), *, pixel_cache: PixelCache | None = None) -> Result:
    """Run ``loaded`` over ``images`` as ``options`` say, capturing the gates of ``blocks`` (default: all SE blocks).

    ``pixel_cache``: model-ready pixels reused from earlier passes over the same images and kept for later ones
    (shared and thread-safe; without one every image is decoded).
    """
    model = loaded.model
    dev = resolve_device(options.device) if options.device else loaded.device
    if dev != loaded.device:
        raise ValueError(f"the model lives on {loaded.device}; load it with device='{dev}' instead")
    policy = PrecisionPolicy(options.precision, dev, fallback=options.fp32_fallback, counter=options.counter)
    blocks = loaded.blocks if blocks is None else list(blocks)
    items = images.items
    workers = default_workers(dev) if options.num_workers is None else options.num_workers
    pipeline = Pipeline(items, loaded.transform, dev, options.device_decode, pixel_cache)
    size = options.batch_size
    batches = [list(range(s, min(s + size, len(items)))) for s in range(0, len(items), size)]
    all_labels = np.array([it.label if it.label is not None else -1 for it in items], dtype=np.int64)

    kept: list[int] = []
    preds, top5s, probs5, logits_out = [], [], [], []
    skipped = list(images.skipped)
    batch_labels: np.ndarray = np.zeros(0, np.int64)

    def stream(name: str, gates: np.ndarray) -> None:
        if options.on_gates is not None:
            options.on_gates(name, gates, batch_labels)

    cuts, collector, cuts_note = _tapping(loaded, len(items), options)
    # The traced graph with taps: the same ops on the same modules (gate hooks fire), plus the cut activations.
    net = find_cuts(loaded).tapped(cuts) if cuts else model

    done = 0
    with contextlib.ExitStack() as stack:
        # Ablation hooks first, so the recorder sees the gates the network actually used.
        gone = options.ablation
        if gone is not None and gone.blocks:
            stack.enter_context(ablate(model, gone.blocks, mode=gone.mode, means=gone.means))
        recorder = stack.enter_context(capture(model, blocks, keep=options.keep_gates, on_gates=stream, per_batch=True))
        prepared = stack.enter_context(contextlib.closing(prefetch(pipeline.host, batches, workers)))
        for batch in prepared:
            if options.cancel is not None and options.cancel():
                raise Cancelled("the pass was cancelled")
            indices, x, failed = pipeline.device_batch(batch)
            skipped += [Skipped(file=items[i].origin, reason=why) for i, why in failed]
            if x is not None:
                batch_labels = all_labels[indices]
                logits = policy.forward(net, x, recorder)
                taps = dict(zip((c.node for c in cuts), net.taps, strict=True)) if cuts else {}
                if collector is not None:
                    collector.add([taps[c.node] for c in collector.cuts])
                prob = probabilities(logits, loaded.outputs)
                p5, i5 = prob.topk(min(5, prob.shape[1]), dim=1)
                # Issue every device -> host copy, then wait once (the gates' copy in commit() waits for them).
                host = [t.to("cpu", non_blocking=True) for t in ((i5, p5, logits) if options.keep_logits else (i5, p5))]
                recorder.commit()
                if dev.type == "cuda":
                    torch.cuda.current_stream(dev).synchronize()
                top5s.append(host[0].numpy())
                preds.append(host[0][:, 0].numpy())
                probs5.append(host[1].numpy())
                if options.keep_logits:
                    logits_out.append(host[2].numpy())
                kept += indices
                if options.on_batch is not None:
                    options.on_batch(indices, x, logits)
                if options.on_activations is not None:
                    options.on_activations(indices, x, logits, taps)
            done += len(indices) + len(failed)
            if options.progress is not None:
                options.progress(done, len(items))
        gates = recorder.gates if options.keep_gates else {}

    k = min(5, loaded.num_classes)
    return Result(
        model=loaded.name,
        keys=[items[i].key for i in kept],
        names=[items[i].name for i in kept],
        labels=all_labels[kept] if kept else np.zeros(0, np.int64),
        label_names=[items[i].label_name for i in kept],
        pred=np.concatenate(preds) if preds else np.zeros(0, np.int64),
        top5=np.concatenate(top5s) if top5s else np.zeros((0, k), np.int64),
        top5_prob=np.concatenate(probs5) if probs5 else np.zeros((0, k), np.float32),
        gates=gates,
        skipped=skipped,
        logits=np.concatenate(logits_out) if logits_out else None,
        precision=policy.name,
        fp32_fallback_batches=policy.fallback_batches,
        forwarded=policy.forwarded,
        cuts=collector.result() if collector is not None else None,
        cuts_note=cuts_note,
    )
