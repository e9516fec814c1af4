"""Remove SE blocks (gate = 1) or freeze them to their mean gate, and measure what changes.

:func:`evaluate` measures one ablation, :func:`sweep` many (every block, stage and last-k set, in each mode) over
one pass of the images; both answer with :class:`AblationResult` (a sweep as a frame of its rows,
:meth:`AblationResult.row`). :func:`pareto_front` keeps the rows no other beats on parameters saved and accuracy.

Calibration split (for ``mode="mean"``): the per-channel mean gate of each block is measured on a calibration
subset and the ablated network is evaluated on the rest, so the constant is never fitted on the images it is
scored on. The split is deterministic: an image belongs to the calibration set when the first 8 hex digits of
``sha1(key)`` taken as an integer, modulo 1000, fall below ``1000 * fraction`` (default fraction 0.2). Pass
``calibrate_on_eval=True`` to fit and score on the same images.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from senet_viz.analysis.cost import CostReport, Savings, model_cost
from senet_viz.analysis.tail_pass import REPLAY_OFF, CancelFn, TailPass, calibration_rows, replay_kept, result_rows
from senet_viz.data.sources import ImageSet, Skipped
from senet_viz.gates.capture import ablate
from senet_viz.gates.kinds import SEBlock
from senet_viz.inference.pipeline import PixelCache
from senet_viz.inference.precision import ForwardCounter, PrecisionPolicy
from senet_viz.inference.run import Ablation, ProgressFn, Result, RunOptions, run_model
from senet_viz.inference.shards import ONE_PROCESS, Shards
from senet_viz.inference.tail import TailPlan, find_cuts, full_pass_note, replay_enabled
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.outputs import log_probabilities, probabilities

CALIBRATION_FRACTION = 0.2
MODES = ("identity", "mean")


def _in_calibration(key: str, fraction: float) -> bool:
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 1000 < fraction * 1000


def split_calibration(images: ImageSet, fraction: float = CALIBRATION_FRACTION) -> tuple[ImageSet, ImageSet]:
    """(calibration, evaluation) subsets of ``images``: disjoint, deterministic, together all of them."""
    calib = [it for it in images.items if _in_calibration(it.key, fraction)]
    rest = [it for it in images.items if not _in_calibration(it.key, fraction)]
    return replace(images, items=calib, skipped=[]), replace(images, items=rest)


def mean_gates(result: Result, blocks: Sequence[SEBlock]) -> dict[str, np.ndarray]:
    """Per-channel mean gate of each block over the images of ``result`` (float32, length C)."""
    if result.n == 0:
        raise ValueError("no image could be used to compute mean gates; add calibration images")
    return {b.name: result.gates[b.name].astype(np.float32).mean(axis=0) for b in blocks}


def per_image_kl(full_logits: np.ndarray, ablated_logits: np.ndarray, outputs: str = "logits") -> np.ndarray:
    """KL(full || ablated) of the output distributions per image, in nats (float64): the network's outputs of
    kind ``outputs`` (``LoadedModel.outputs``: logits, probabilities or log-probabilities) read as the model means
    them. The mean of these rows is the ``kl`` of :class:`AblationResult` (senet_viz.inference.distributed gathers
    them across ranks)."""
    lp, lq = log_probabilities(full_logits, outputs), log_probabilities(ablated_logits, outputs)
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


def _per_class(labels: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    known = labels >= 0
    return {int(cls): float((pred[labels == cls] == cls).mean()) for cls in np.unique(labels[known])}


def per_class_accuracy(result: Result) -> dict[int, float]:
    """Top-1 accuracy per labelled class of ``result`` (class index -> share)."""
    return _per_class(result.labels, result.pred)


# ---------------------------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class AblationResult(Savings):
    """What removing (``mode="identity"``) or freezing (``"mean"``) the SE blocks ``ablated`` does to a network on
    one image set, against the full network on the same images.

    ``top1``/``top5`` are the ablated network's (the full network's when nothing is ablated), over the
    ``n_scored`` images labelled with a model class (None when there is none); ``agreement`` is the share of the
    ``n_images`` evaluated images whose top-1 is the full network's, ``kl`` the mean KL(full || ablated) in nats
    (0 when nothing is ablated; ``agreement`` and ``kl`` are None without images). ``macs`` and ``macs_removed``
    count one image. ``kind`` and ``config`` name a sweep's configuration (None for :func:`evaluate`).

    :meth:`to_dict` is the JSON document of ``python -m senet_viz evaluate --json``; :meth:`row` the row of a
    :func:`sweep` frame. ``result["top1"]`` reads :meth:`to_dict`'s fields.
    """

    model: str
    weights: str | None
    mode: str | None  # None when nothing is ablated
    ablated: tuple[str, ...]
    top1: float | None
    top5: float | None
    full_top1: float | None
    full_top5: float | None
    agreement: float | None
    kl: float | None
    params: int
    params_removed: int
    macs: int
    macs_removed: int
    n_images: int
    n_scored: int
    n_calibration: int
    skipped: tuple[Skipped, ...] = ()
    per_class_top1_change: dict[str, float] = field(default_factory=dict)
    kind: str | None = None  # a sweep's configuration: "block", "stage", "last" (or the caller's)
    config: str | None = None  # its label, e.g. "SE_5_2", "stage 5", "last 3"
    precision: str = "fp32"  # what the forwards ran in (see senet_viz.inference.precision.PrecisionPolicy)
    fp32_fallback_batches: int = 0  # batches redone in fp32 (for a sweep: this configuration's)
    outputs: str = "logits"  # how the network's outputs were read (LoadedModel.outputs): logits, probs, logprobs
    # how the ablated pass was computed: "tail from <cut> (before <block>, x% of MACs)" (tail replay, see
    # senet_viz.inference.tail), or "full pass: <why no tail could be replayed>"; "" when nothing is ablated
    replay: str = ""

    @property
    def params_saved_pct(self) -> float:
        return 100 * self.params_removed / self.params

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def n_blocks(self) -> int:
        return len(self.ablated)

    @property
    def d_top1(self) -> float | None:
        """Top-1 change in percentage points (None when nothing is scored)."""
        return None if self.top1 is None else (self.top1 - self.full_top1) * 100

    @property
    def d_top5(self) -> float | None:
        return None if self.top5 is None else (self.top5 - self.full_top5) * 100

    def to_dict(self) -> dict:
        """JSON-ready: the metrics, ``gmacs`` (rounded to 4 decimals) and ``gmacs_removed`` (6), the skipped files
        with their reasons and the per-class top-1 change (class name -> share)."""
        return {
            "model": self.model, "weights": self.weights, "mode": self.mode, "ablated": list(self.ablated),
            "top1": self.top1, "top5": self.top5, "full_top1": self.full_top1, "full_top5": self.full_top5,
            "agreement": self.agreement, "kl": self.kl, "params": self.params,
            "params_removed": self.params_removed, "params_after": self.params_after,
            "gmacs": round(self.macs / 1e9, 4), "gmacs_removed": round(self.macs_removed / 1e9, 6),
            "n_images": self.n_images, "n_scored": self.n_scored, "n_calibration": self.n_calibration,
            "n_skipped": self.n_skipped, "skipped": [{"file": s.file, "reason": s.reason} for s in self.skipped],
            "per_class_top1_change": dict(self.per_class_top1_change),
            "precision": self.precision, "fp32_fallback_batches": self.fp32_fallback_batches,
            "outputs": self.outputs, "replay": self.replay,
        }

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def row(self) -> dict:
        """The row of a :func:`sweep` frame: the configuration, the metrics, the changes in points, the parameters
        saved (count and % of the network) and ``gmacs_removed`` (unrounded)."""
        return {
            "model": self.model, "kind": self.kind, "config": self.config, "blocks": ",".join(self.ablated),
            "n_blocks": self.n_blocks, "mode": self.mode, "top1": self.top1, "top5": self.top5,
            "full_top1": self.full_top1, "full_top5": self.full_top5, "d_top1": self.d_top1, "d_top5": self.d_top5,
            "agreement": self.agreement, "kl": self.kl, "params": self.params,
            "params_removed": self.params_removed, "params_saved_pct": self.params_saved_pct,
            "gmacs_removed": self.macs_removed / 1e9, "n_images": self.n_images, "n_scored": self.n_scored,
            "n_calibration": self.n_calibration, "n_skipped": self.n_skipped, "replay": self.replay,
        }


@dataclass
class _Predictions:
    """Per image of one pass: the top-1 class and whether the label is in the top-5 (False when unknown)."""

    pred: np.ndarray
    hit5: np.ndarray

    @classmethod
    def of(cls, top5: np.ndarray, labels: np.ndarray) -> _Predictions:
        return cls(top5[:, 0], (top5 == labels[:, None]).any(axis=1))

    def accuracy(self, labels: np.ndarray, k: int) -> float | None:
        known = labels >= 0
        if not known.any():
            return None
        hits = self.pred[known] == labels[known] if k == 1 else self.hit5[known]
        return float(hits.mean())


def _measure(loaded: LoadedModel, cost: CostReport, blocks: Sequence[SEBlock], mode: str, labels: np.ndarray,
             full: _Predictions, ablated: _Predictions, kl_rows: np.ndarray | None, *, n_calibration: int,
             skipped: Sequence[Skipped], **extra) -> AblationResult:
    """The one place an :class:`AblationResult` is computed, for :func:`evaluate` and :func:`sweep` alike."""
    names = [b.name for b in blocks]
    gone = cost.blocks[cost.blocks["name"].isin(names)]
    n = len(labels)
    if blocks:
        full_pc, abl_pc = _per_class(labels, full.pred), _per_class(labels, ablated.pred)
        change = {loaded.class_names[c]: abl_pc[c] - full_pc[c] for c in full_pc}
    else:
        change = {}
    return AblationResult(
        model=loaded.name, weights=loaded.weights_source, mode=mode if blocks else None, ablated=tuple(names),
        top1=ablated.accuracy(labels, 1), top5=ablated.accuracy(labels, 5),
        full_top1=full.accuracy(labels, 1), full_top5=full.accuracy(labels, 5),
        agreement=float((ablated.pred == full.pred).mean()) if n else None,
        kl=(float(kl_rows.mean()) if n else None) if blocks else 0.0,
        params=cost.params, params_removed=int(gone["params"].sum()), macs=cost.macs,
        macs_removed=int(gone["macs"].sum()), n_images=n, n_scored=int((labels >= 0).sum()),
        n_calibration=n_calibration, skipped=tuple(skipped), per_class_top1_change=change, outputs=loaded.outputs,
        **extra)


_costs: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, CostReport]] = weakref.WeakKeyDictionary()
_costs_guard = threading.Lock()


def _full_cost(loaded: LoadedModel) -> CostReport:
    """The network's cost, counted once per model object (a forward under a FLOP counter: a tail replay's time)."""
    key = (tuple(loaded.input_size), tuple(b.name for b in loaded.blocks), loaded.name)
    with _costs_guard:  # held while counting: one count per model (under its lock anyway)
        cost = _costs.setdefault(loaded.model, {}).get(key)
        if cost is None:
            cost = _costs[loaded.model][key] = model_cost(loaded.model, loaded.blocks, (), *key[:1], loaded.name)
    return cost


def compare(loaded: LoadedModel, full: Result, ablated: Result | None, blocks: Sequence[SEBlock] = (),
            mode: str = "identity", *, n_calibration: int = 0, kl_rows: np.ndarray | None = None,
            **extra) -> AblationResult:
    """The :class:`AblationResult` of a full pass and an ablated pass (``blocks`` in ``mode``) over the same images
    in the same order (``ablated`` None when nothing is ablated). ``kl_rows``: the per-image KL(full || ablated)
    when the passes kept no logits (e.g. gathered from several processes); else computed from their logits.
    ``extra`` sets the other fields (``precision``, ``fp32_fallback_batches``; default: the full pass's)."""
    blocks = list(blocks)
    if blocks and ablated is None:
        raise ValueError("an ablated pass is needed when blocks are ablated")
    if blocks and ablated.keys != full.keys:
        raise ValueError("the ablated pass read other images than the full pass")
    if blocks and kl_rows is None and full.n:
        kl_rows = per_image_kl(full.logits, ablated.logits, loaded.outputs)
    full_preds = _Predictions.of(full.top5, full.labels)
    ablated_preds = _Predictions.of(ablated.top5, full.labels) if blocks else full_preds
    extra.setdefault("precision", full.precision)
    extra.setdefault("fp32_fallback_batches", full.fp32_fallback_batches)
    return _measure(loaded, _full_cost(loaded), blocks, mode, full.labels, full_preds, ablated_preds, kl_rows,
                    n_calibration=n_calibration, skipped=full.skipped, **extra)


# ---------------------------------------------------------------------------------------------- one ablation


def evaluate(loaded: LoadedModel, images: ImageSet, ablate_blocks: Sequence[SEBlock] = (), mode: str = "identity",
             *, calibrate_on_eval: bool = False, fraction: float = CALIBRATION_FRACTION, batch_size: int = 32,
             progress: ProgressFn | None = None, full: Result | None = None, precision: str = "auto",
             pixel_cache: PixelCache | None = None, counter: ForwardCounter | None = None,
             shards: Shards = ONE_PROCESS, replay: bool | None = None,
             cancel: CancelFn | None = None) -> AblationResult | None:
    """Accuracy, agreement and cost of the full network and, if ``ablate_blocks``, of the ablated one.

    Every pass (calibration, full, ablated) runs at the same ``precision`` (see
    :class:`senet_viz.inference.precision.PrecisionPolicy`; a ``full`` result passed in should come from the same
    precision). With ``mode="mean"`` the mean gates are fitted on the calibration split (see
    :func:`split_calibration`) and only the other images are evaluated. ``pixel_cache`` and ``counter``: see
    :func:`senet_viz.inference.run.run_model`.

    Tail replay (``replay``, None: ``$SENET_VIZ_TAIL_REPLAY``; :mod:`senet_viz.inference.tail`): the ablated pass
    is the tail after the latest cut before the first ablated gate, run on each batch's activation there (one
    decode for both passes), or only the tails when ``full`` kept activations at that cut (``keep_cuts``); else a
    full pass. ``AblationResult.replay`` says which, and why. ``cancel()`` is asked between batches (True: raise
    :class:`senet_viz.inference.run.Cancelled`); ``progress(done, total)`` counts the running pass's images.

    ``shards`` splits the passes between processes (:class:`senet_viz.inference.distributed.Group`): each runs its
    share, the calibration gates are gathered to every process and averaged in single-process order, and
    predictions, labels and per-image KL are gathered to rank 0, which computes the metrics as one process does
    (bit for bit). Returns None on the other ranks; never None in a single process.
    """
    ablate_blocks = list(ablate_blocks)
    options = RunOptions(batch_size=batch_size, precision=precision, counter=counter, cancel=cancel)
    calib_n, means, eval_images, fallback = 0, None, images, 0
    if ablate_blocks and mode == "mean":
        calib = images
        if not calibrate_on_eval:
            calib, eval_images = split_calibration(images, fraction)
        # A full pass that kept every image's gates (the app's) holds the calibration gates already: no forward.
        calib_result = calibration_rows(full if shards is ONE_PROCESS else None, calib, ablate_blocks) or \
            shards.gather_result(run_model(loaded, shards.shard(calib, batch_size), ablate_blocks, replace(
                options, keep_logits=False), pixel_cache=pixel_cache), calib, gates=True, to_all=True)
        means = mean_gates(calib_result, ablate_blocks)
        calib_n = calib_result.n
        fallback += calib_result.fp32_fallback_batches
    mine = shards.shard(eval_images, batch_size)
    plan = find_cuts(loaded) if ablate_blocks and replay_enabled(replay) else None
    cut = plan.cut_before(ablate_blocks) if plan is not None else None
    note = "" if not ablate_blocks else plan.note(ablate_blocks) if plan else full_pass_note(REPLAY_OFF)
    ablation = Ablation(ablate_blocks, mode, means)
    full = result_rows(full, [it.key for it in mine.items], mine.skipped)  # None: computed below
    computed = full is None
    ablated = kl_all = None
    if ablate_blocks:
        tails = TailPass(loaded, plan, cut, ablation, precision, counter)
        if full is not None and cut is not None and full.cuts is not None and full.cuts.cut(cut) is not None:
            ablated = replay_kept(tails, full, cut, batch_size, progress, cancel)
            note += ", from the full pass's kept activations"
        elif computed and cut is not None:
            def tail(_indices: list[int], _x: torch.Tensor, _logits: torch.Tensor, acts: dict) -> None:
                tails.add(acts[cut.node])

            full = run_model(loaded, mine, [], replace(options, progress=progress, cuts=[cut], on_activations=tail),
                             pixel_cache=pixel_cache)
            ablated = tails.result(full)
        else:
            if cut is not None:  # a full result without the activations: a full ablated pass costs less than both
                why = f"the full pass kept no activations at {cut.where}"
                note = full_pass_note(f"{why} ({full.cuts_note})" if full.cuts_note else why)
            if computed:
                full = run_model(loaded, mine, [], replace(options, progress=progress), pixel_cache=pixel_cache)
            keep = set(full.keys)
            ablated_images = replace(mine, items=[it for it in mine.items if it.key in keep], skipped=[])
            ablated = run_model(loaded, ablated_images, [], replace(options, progress=progress, ablation=ablation),
                                pixel_cache=pixel_cache)
        if ablated.keys != full.keys:
            raise ValueError("the ablated pass read other images than the full pass")
        kl = per_image_kl(full.logits, ablated.logits, loaded.outputs) if full.n else np.zeros(0)
        kl_all = shards.gather_rows(full.keys, kl, eval_images)
        ablated = shards.gather_result(ablated, eval_images)
    elif computed:
        full = run_model(loaded, mine, [], replace(options, progress=progress), pixel_cache=pixel_cache)
    full = shards.gather_result(full, eval_images)
    if full is None:
        return None
    fallback += (full.fp32_fallback_batches if computed else 0) + (ablated.fp32_fallback_batches if ablated else 0)
    return compare(loaded, full, ablated, ablate_blocks, mode, n_calibration=calib_n, kl_rows=kl_all,
                   fp32_fallback_batches=fallback, replay=note)


# ---------------------------------------------------------------------------------------------- sweeps


def sweep_configs(blocks: Sequence[SEBlock]) -> list[tuple[str, str, list[SEBlock]]]:
    """(kind, label, blocks) for every single block, every stage and every "last k blocks" (k >= 2)."""
    configs = [("block", b.name, [b]) for b in blocks]
    for stage in sorted({b.stage for b in blocks}):
        configs.append(("stage", f"stage {stage}", [b for b in blocks if b.stage == stage]))
    for k in range(2, len(blocks) + 1):
        configs.append(("last", f"last {k}", list(blocks[-k:])))
    return configs


class _Configuration:
    """One (configuration, mode) of a sweep: its own precision policy, its per-image outcomes batch by batch, and
    ``cut``, where its tail starts (None: the whole network from the batch's input)."""

    def __init__(self, kind: str, label: str, blocks: list[SEBlock], mode: str, precision: str,
                 device: torch.device, counter: ForwardCounter | None, plan: TailPlan | None) -> None:
        self.kind, self.label, self.blocks, self.mode = kind, label, blocks, mode
        self.policy = PrecisionPolicy(precision, device, counter=counter)
        self.cut = plan.cut_before(blocks) if plan is not None else None
        self.net = plan.tail(self.cut) if self.cut is not None else None
        self.replay = plan.note(blocks) if plan is not None else full_pass_note(REPLAY_OFF)
        self.first = min((b.order for b in blocks), default=-1)
        self.top5: list[np.ndarray] = []
        self.kl: list[np.ndarray] = []

    def forward(self, loaded: LoadedModel, x: torch.Tensor, acts: dict[str, torch.Tensor], full_logits: np.ndarray,
                means: dict[str, np.ndarray] | None) -> None:
        source, net = (acts[self.cut.node], self.net) if self.cut is not None else (x, loaded.model)
        with ablate(loaded.model, self.blocks, mode=self.mode, means=means):
            logits = self.policy.forward(net, source)
        # As run_model ranks: top-k of the probabilities.
        _, top = probabilities(logits, loaded.outputs).topk(min(5, logits.shape[1]), dim=1)
        self.top5.append(top.cpu().numpy())
        self.kl.append(per_image_kl(full_logits, logits.cpu().numpy(), loaded.outputs))

    def outcome(self, labels: np.ndarray, k: int) -> tuple[_Predictions, np.ndarray]:
        top5 = np.concatenate(self.top5) if self.top5 else np.zeros((0, k), np.int64)
        kl = np.concatenate(self.kl) if self.kl else np.zeros(0)
        return _Predictions.of(top5, labels), kl


def sweep_results(loaded: LoadedModel, images: ImageSet, modes: Sequence[str] = MODES,
                  configs: Sequence[tuple[str, str, list[SEBlock]]] | None = None, *,
                  fraction: float = CALIBRATION_FRACTION, batch_size: int = 64, progress: ProgressFn | None = None,
                  precision: str = "auto", pixel_cache: PixelCache | None = None,
                  counter: ForwardCounter | None = None, replay: bool | None = None,
                  cancel: CancelFn | None = None) -> tuple[list[AblationResult], int]:
    """:func:`sweep`'s results, one :class:`AblationResult` per (configuration, mode) in that order, and the
    number of batches redone in fp32 in all (calibration and full pass included).

    One :func:`senet_viz.inference.run.run_model` pass decodes each batch once and runs the full network, keeping
    the batch's activations at the cuts the configurations use (tail replay, ``replay``; None:
    ``$SENET_VIZ_TAIL_REPLAY``); each configuration, by first ablated gate, then runs its tail from its latest cut
    (or the whole network: ``AblationResult.replay`` says which) with its own precision policy.
    ``progress(done, total)`` counts image forwards, after each batch: ``total`` = calibration images (mean) +
    evaluated images x (1 + configurations x modes); an unreadable image counts as done. ``cancel()`` is asked
    before each batch (True: raise :class:`senet_viz.inference.run.Cancelled`); ``pixel_cache``, ``counter``: see
    ``run_model``."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown ablation mode {unknown[0]!r}; use identity and/or mean")
    configs = list(configs) if configs is not None else sweep_configs(loaded.blocks)
    options = RunOptions(batch_size=batch_size, precision=precision, counter=counter, cancel=cancel)
    plan = find_cuts(loaded) if replay_enabled(replay) else None
    runs = [_Configuration(kind, label, list(blocks), mode, precision, loaded.device, counter, plan)
            for kind, label, blocks in configs for mode in modes]
    fallback = 0
    calib, eval_images = split_calibration(images, fraction) if "mean" in modes else (None, images)
    n_calib_items = len(calib.items) if calib is not None else 0
    total = n_calib_items + len(eval_images.items) * (1 + len(runs))

    def report(offset: int, per_image: int) -> ProgressFn | None:
        if progress is None:
            return None
        return lambda done, _n: progress(offset + done * per_image, total)

    if calib is not None:
        used = {b.name for _, _, blocks in configs for b in blocks}
        fitted = [b for b in loaded.blocks if b.name in used]
        calib_result = run_model(loaded, calib, fitted, replace(options, keep_logits=False, progress=report(0, 1)),
                                 pixel_cache=pixel_cache)
        if calib_result.n == 0:
            raise ValueError("no calibration image could be read; mean ablation needs some")
        means, n_calib = mean_gates(calib_result, fitted), calib_result.n
        fallback += calib_result.fp32_fallback_batches
    else:
        means, n_calib = None, 0
    ordered = sorted(runs, key=lambda r: r.first)  # by first ablated gate: those sharing a cut run in a row
    cuts = sorted({r.cut.node: r.cut for r in runs if r.cut is not None}.values(), key=lambda c: c.position)

    def each_configuration(_indices: list[int], x: torch.Tensor, logits: torch.Tensor,
                           acts: dict[str, torch.Tensor]) -> None:
        full_logits = logits.cpu().numpy()
        for run in ordered:
            run.forward(loaded, x, acts, full_logits, means)

    full = run_model(loaded, eval_images, [], replace(
        options, progress=report(n_calib_items, 1 + len(runs)), keep_logits=False, keep_gates=False, cuts=cuts,
        on_activations=each_configuration), pixel_cache=pixel_cache)
    fallback += full.fp32_fallback_batches + sum(run.policy.fallback_batches for run in runs)
    cost = _full_cost(loaded)
    full_preds = _Predictions.of(full.top5, full.labels)
    results = []
    for run in runs:
        preds, kl = run.outcome(full.labels, full.top5.shape[1])
        results.append(_measure(loaded, cost, run.blocks, run.mode, full.labels, full_preds, preds, kl,
                                n_calibration=n_calib, skipped=full.skipped, kind=run.kind, config=run.label,
                                precision=full.precision, fp32_fallback_batches=run.policy.fallback_batches,
                                replay=run.replay if run.blocks else ""))
    return results, fallback


def sweep(loaded: LoadedModel, images: ImageSet, modes: Sequence[str] = MODES,
          configs: Sequence[tuple[str, str, list[SEBlock]]] | None = None, *, fraction: float = CALIBRATION_FRACTION,
          batch_size: int = 64, progress: ProgressFn | None = None, precision: str = "auto",
          pixel_cache: PixelCache | None = None, counter: ForwardCounter | None = None, replay: bool | None = None,
          cancel: CancelFn | None = None) -> pd.DataFrame:
    """Ablate each configuration in each mode and measure it against the full network on the same images.

    With ``"mean"`` among the modes, the images are split (see :func:`split_calibration`): every mode is
    scored on the evaluation part only, so identity and mean rows are comparable. One row per
    (configuration, mode), :meth:`AblationResult.row`: top-1 / top-5 and their change in points, agreement, KL,
    parameters and GMACs saved, ``replay`` (how it was computed). Every forward runs at the same ``precision``;
    the frame's ``attrs`` hold ``precision`` and ``fp32_fallback_batches`` (batches redone in fp32, see
    :class:`senet_viz.inference.precision.PrecisionPolicy`). :func:`sweep_results`: the results themselves, and
    ``progress``, ``replay``, ``cancel``.
    """
    results, fallback = sweep_results(loaded, images, modes, configs, fraction=fraction, batch_size=batch_size,
                                      progress=progress, precision=precision, pixel_cache=pixel_cache,
                                      counter=counter, replay=replay, cancel=cancel)
    frame = pd.DataFrame([r.row() for r in results])
    frame.attrs.update(precision=PrecisionPolicy(precision, loaded.device).name, fp32_fallback_batches=fallback)
    return frame


def pareto_front(frame: pd.DataFrame, x: str = "params_saved_pct", y: str = "d_top1",
                 higher_is_better: bool = True) -> pd.DataFrame:
    """Rows of ``frame`` that no other row dominates (more ``x`` and a better ``y``), sorted by ``x``.

    ``x`` (parameters saved) is better higher; ``y`` is better higher (top-1 change, agreement) unless
    ``higher_is_better=False`` (KL). Rows without ``y`` are left out; of rows with the same ``x`` only the best
    ``y`` can be on the front, and a row is kept only when its ``y`` is strictly better than that of every row
    with more ``x``.
    """
    rows = frame.dropna(subset=[y])
    score = rows[y].astype(float) * (1 if higher_is_better else -1)
    order = pd.DataFrame({"x": rows[x].astype(float), "score": score}).sort_values(
        ["x", "score"], ascending=[False, False], kind="stable")
    values = order["score"].to_numpy()
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], values[:-1]])) if len(values) else values
    keep = order.index[values > best_before]
    return frame.loc[keep].sort_values(x, kind="stable")
