"""What the pages ask for: network passes, statistics, ablations, sweeps, Grad-CAMs, channel attributions and
pre-gate maps, each shared by every session through :func:`ui.memo.shared` (keyed by :mod:`ui.keys`).

Computation lives in ``senet_viz``; this module only decides *when* (and on which thread or process) to call it.
Shared results are read-only: one :class:`Result` serves every session, so its arrays are not writeable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import streamlit as st
import torch

from senet_viz.analysis import ablation
from senet_viz.analysis.stats import GateStats
from senet_viz.data.sources import ImageSet
from senet_viz.gates.kinds import SEBlock
from senet_viz.inference.run import Result, RunOptions, run_model
from senet_viz.inference.tail import replay_enabled
from senet_viz.models.loaded import LoadedModel
from ui import first_page, jobs
from ui.engine import PIXELS, engine
from ui.keys import images_key, model_key, pixels_key
from ui.memo import Task, cancel_shared, counted_wait, progress_wait, shared, spinner_wait
from ui.model_cache import process_ref

# Per-image gates are kept (for Explore) only for runs of at most this many images; larger runs keep predictions
# and stream the gates into statistics, so memory does not grow with the folder (SE-ResNet-50: 30 kB per image).
KEEP_GATES_LIMIT = 2_000

NO_GATES_NOTE = (f"This run has more than {KEEP_GATES_LIMIT:,} images, so no per-image gates were kept: the chance "
                 "levels shown are exact expectations from the statistics (eta² and spread), while the chance bands, "
                 "permutation p values and bootstrap intervals need per-image gates: run `python -m senet_viz "
                 "extract` and `stats --excitations ...` on the images (optionally with --chance-images N) and open "
                 "its bundle here.")
"""Shown where a chance band or interval would be, for runs that kept no per-image gates."""


@dataclass
class Analysis:
    """One model over one image set: the raw result and its per-class statistics."""

    result: Result | None  # None for an opened bundle (statistics only)
    stats: GateStats  # read bounded views of it (stats.frame(blocks, classes), class_means, ...): no full frame
    indices: pd.DataFrame
    class_names: list[str]
    grouping: str  # "labels" or "predicted class"
    #: chance levels and intervals per block (:func:`senet_viz.analysis.chance.chance_table`); for a run without
    #: per-image gates only the exact levels (:func:`~senet_viz.analysis.chance.exact_chance`); None: unknown
    chance: pd.DataFrame | None = None
    chance_note: str = ""  # why the bands / intervals are missing ("" when the table has them)

    @property
    def circular(self) -> bool:
        """Grouped by the network's own prediction: class specificity is inflated
        (:data:`senet_viz.analysis.chance.CIRCULAR_NOTE`)."""
        return self.grouping == "predicted class"


def _read_only(result: Result) -> Result:
    # One Result serves every session: an in-place edit by one page would change another user's charts.
    arrays = [result.labels, result.pred, result.top5, result.top5_prob, result.logits, *result.gates.values(),
              *(result.cuts.arrays.values() if result.cuts is not None else ())]
    for array in arrays:
        if array is not None:
            array.flags.writeable = False
    return result


def _streamed_run(loaded: LoadedModel, images: ImageSet) -> tuple[Result, GateStats]:
    """One pass: predictions and logits of every image, gate statistics by label streamed batch by batch, and the
    per-image gates only when the set has at most :data:`KEEP_GATES_LIMIT` images (shared by every session)."""
    names = list(images.class_names or loaded.class_names)
    keep = len(images.items) <= KEEP_GATES_LIMIT
    ref = process_ref(loaded)

    def compute(task: Task) -> tuple[Result, GateStats]:
        shipped = first_page.load(loaded, images, names, keep)  # the embedded samples: read, not run (assets/)
        if shipped is not None:
            return _read_only(shipped[0]), shipped[1]
        if ref is not None:
            result, stats = engine().in_process(jobs.streamed_run, ref, images, names, keep, progress=task.progress)
            return _read_only(result), stats
        stats = GateStats.for_blocks(loaded.name, loaded.blocks, names)
        # keep_cuts: the last stage's activations, so that removing its blocks replays only the tail
        options = RunOptions(batch_size=32, keep_gates=keep, progress=task.progress, on_gates=stats.update,
                             counter=jobs.FORWARDS, keep_cuts=True)
        result = run_model(task.model, images, options=options, pixel_cache=PIXELS)
        return _read_only(result), stats

    # keep is in the key: a run without per-image gates must not answer one that needs them
    return shared("run", (*model_key(loaded), images_key(images), keep), compute,
                  progress_wait(f"Running {loaded.name} on", "images"), model=loaded if ref is None else None)


def run(loaded: LoadedModel, images: ImageSet) -> Result:
    """Predictions and logits of every image, and their gates up to :data:`KEEP_GATES_LIMIT` images (shared)."""
    return _streamed_run(loaded, images)[0]


def _full_for_ablation(loaded: LoadedModel, images: ImageSet) -> Result:
    """The full pass an ablation compares with: the page's own run, unless it kept no activations for tail replay
    because it was read from assets/ (the embedded samples' first page): then a run that keeps them, once (shared
    as a "run"), so that every later removal of last-stage blocks replays only the tail."""
    result = run(loaded, images)
    if result.cuts is not None or not result.cuts_note.startswith("precomputed") or not replay_enabled():
        return result
    names = list(images.class_names or loaded.class_names)
    ref = process_ref(loaded)

    def compute(task: Task) -> Result:
        if ref is not None:
            return _read_only(engine().in_process(jobs.streamed_run, ref, images, names, False,
                                                  progress=task.progress)[0])
        options = RunOptions(batch_size=32, keep_gates=False, progress=task.progress, counter=jobs.FORWARDS,
                             keep_cuts=True)
        return _read_only(run_model(task.model, images, options=options, pixel_cache=PIXELS))

    return shared("run", (*model_key(loaded), images_key(images), "activations"), compute,
                  progress_wait(f"Running {loaded.name} on", "images"), model=loaded if ref is None else None)


def analyse(loaded: LoadedModel, images: ImageSet, group_by_prediction: bool = False) -> Analysis:
    """Run (shared) and compute per-class statistics, grouping by labels or by predicted class (also when no
    image has a label).

    Statistics by label are streamed during the run. Grouping by predicted class needs the predictions first: from
    the kept per-image gates when the set is small, else from a second pass with the predictions as labels."""

    def passes() -> tuple[Result, GateStats, GateStats | None, bool]:
        result, by_label = _streamed_run(loaded, images)
        by_prediction = bool(group_by_prediction or (result.labels < 0).all())
        by_pred = None
        if by_prediction and not result.gates and result.n:
            _, by_pred = _streamed_run(loaded, result.labelled_by_prediction(images, loaded.class_names))
        return result, by_label, by_pred, by_prediction

    def compute(task: Task) -> Analysis:
        result, by_label, by_pred, by_prediction = task.needed
        if not by_prediction:
            stats, grouping = by_label, "labels"
        else:
            grouping = "predicted class"
            stats = by_pred if by_pred is not None else \
                GateStats.from_result(result, loaded.blocks, loaded.class_names, by="prediction")
        chance, note = _chance(result, stats, by_prediction)
        return Analysis(result=result, stats=stats, indices=stats.indices(), class_names=list(stats.class_names),
                        grouping=grouping, chance=chance, chance_note=note)

    # Statistics need no network: computed on this thread (still once for sessions asking together).
    return shared("analysis", (*model_key(loaded), images_key(images), group_by_prediction,
                              len(images.items) <= KEEP_GATES_LIMIT), compute,
                  needs=passes, on_worker=False)


def _chance(result: Result, stats: GateStats, by_prediction: bool) -> tuple[pd.DataFrame, str]:
    """The chance table from the kept per-image gates, grouped as the statistics are; without them (a large run)
    the exact chance levels of the statistics and the note that says what is missing."""
    from senet_viz.analysis.chance import chance_table, exact_chance

    blocks = [b.name for b in stats.blocks]
    if result.gates and all(b in result.gates for b in blocks):
        labels = result.pred if by_prediction else result.labels
        return chance_table(result.gates, np.asarray(labels), blocks=blocks), ""
    return exact_chance(stats), NO_GATES_NOTE


def evaluate(loaded: LoadedModel, images: ImageSet, blocks: list[SEBlock], mode: str) -> ablation.AblationResult:
    """The ablation metrics of ``blocks`` in ``mode`` (shared); reuses the full pass when it can."""
    ref = process_ref(loaded)

    def compute(task: Task) -> ablation.AblationResult:
        if ref is not None:
            return engine().in_process(jobs.evaluate, ref, images, [b.name for b in blocks], mode, task.needed)
        return ablation.evaluate(task.model, images, blocks, mode=mode, full=task.needed, pixel_cache=PIXELS,
                                 counter=jobs.FORWARDS)

    verb = "removed" if mode == "identity" else "frozen"
    return shared("evaluate", (*model_key(loaded), images_key(images), tuple(b.name for b in blocks), mode), compute,
                  spinner_wait(f"Evaluating with {len(blocks)} SE block(s) {verb} ..."),
                  model=loaded if ref is None else None,
                  needs=lambda: _full_for_ablation(loaded, images))  # its kept activations serve both modes


def sweep_key(loaded: LoadedModel, images: ImageSet, modes: tuple[str, ...], kinds: tuple[str, ...]) -> tuple:
    """What a sweep's shared result is keyed by (also :func:`cancel_sweep`'s)."""
    return (*model_key(loaded), images_key(images), modes, kinds)


def sweep(loaded: LoadedModel, images: ImageSet, modes: tuple[str, ...], kinds: tuple[str, ...],
          describe: Callable[[int, int], str] | None = None) -> pd.DataFrame:
    """Every single-block, stage and last-k ablation in each mode (shared), behind a progress bar saying
    ``describe(done, total)`` and the time left; :func:`cancel_sweep` stops it between batches (raising
    :class:`senet_viz.inference.run.Cancelled` in a session still waiting for it)."""
    ref = process_ref(loaded)

    def compute(task: Task) -> pd.DataFrame:
        if ref is not None:
            return engine().in_process(jobs.sweep, ref, images, modes, kinds, progress=task.progress,
                                       cancel=task.cancelled)
        configs = [c for c in ablation.sweep_configs(loaded.blocks) if c[0] in kinds]
        return ablation.sweep(task.model, images, modes, configs, progress=task.progress, pixel_cache=PIXELS,
                              counter=jobs.FORWARDS, cancel=task.cancelled)

    wait = counted_wait(describe or (lambda done, total: f"Sweeping SE ablations: {done:,} of {total:,} images"))
    return shared("sweep", sweep_key(loaded, images, modes, kinds), compute, wait,
                  model=loaded if ref is None else None)


def cancel_sweep(loaded: LoadedModel, images: ImageSet, modes: tuple[str, ...], kinds: tuple[str, ...]) -> bool:
    """Stop the sweep's computation after its current batch, unless another session waits for it too; True when it
    was cancelled (see :meth:`ui.caches.ResultCache.cancel`)."""
    return cancel_shared("sweep", sweep_key(loaded, images, modes, kinds))


def single_image_gates(loaded: LoadedModel, images: ImageSet, analysis: Analysis, key: str
                       ) -> dict[str, np.ndarray]:
    """One image's gates: from the run when it kept them, else from a one-image pass (shared)."""
    if analysis.result.gates:
        row = analysis.result.keys.index(key)
        return {name: g[row].astype(np.float32) for name, g in analysis.result.gates.items()}
    one = subset_by_keys(images, {key})
    return {name: g[0].astype(np.float32) for name, g in run(loaded, one).gates.items()}


def subset_by_keys(images: ImageSet, keys: set[str]) -> ImageSet:
    """The items of ``images`` whose key is in ``keys`` (labels and class names kept)."""
    return replace(images, items=[it for it in images.items if it.key in keys])


@st.cache_data(max_entries=16, show_spinner="Counting parameters and MACs ...")
def _cost(model_name: str, weights_id: str, _loaded: LoadedModel):
    from senet_viz.analysis.cost import model_cost

    with _loaded.lock:
        return model_cost(_loaded.model, _loaded.blocks, (), _loaded.input_size, _loaded.name)


def cost(loaded: LoadedModel):
    """Parameters and MACs per SE block and stage (cached per model and weights)."""
    return _cost(loaded.name, loaded.weights_id, loaded)


@st.cache_data(show_spinner="Counting SE-ResNet-50 variants (no weights needed) ...")
def paper_cost_table() -> dict[str, pd.DataFrame]:
    """The paper's Tables 10 and 13 beside parameter counts measured on random-weight SE-ResNet-50s."""
    from senet_viz.analysis import paper
    return {"table13": paper.table13_measured(), "table10": paper.table10_measured()}


def gradcams(loaded: LoadedModel, image_key: str, pixels: torch.Tensor, stage: int, removed: list[SEBlock]
             ) -> tuple[dict, int]:
    """Grad-CAM with the full network and with ``removed`` SE blocks (shared; keyed by the pixels themselves,
    ``image_key`` only names the image)."""
    from senet_viz.analysis.attribution import gradcam

    def compute(task: Task) -> tuple[dict, int]:
        full, target = gradcam(task.model, pixels, stage)
        ablated, _ = gradcam(task.model, pixels, stage, target=target, ablate_blocks=removed)
        names = ", ".join(b.name for b in removed)
        return {"full network": full, f"without {names}": ablated}, target

    key = (*model_key(loaded), pixels_key(pixels), stage, tuple(b.name for b in removed))
    return shared("gradcam", key, compute, spinner_wait("Computing Grad-CAM ..."), model=loaded)


def channel_attribution(loaded: LoadedModel, image_key: str, pixels: torch.Tensor, block: SEBlock) -> tuple:
    """Gradient x gate of each channel of ``block`` for one image (shared; keyed by the pixels)."""
    from senet_viz.analysis.attribution import se_channel_attribution

    def compute(task: Task) -> tuple:
        return se_channel_attribution(task.model, pixels, block)

    key = (*model_key(loaded), pixels_key(pixels), block.name)
    return shared("channel_attr", key, compute, spinner_wait("Attributing the class score to SE channels ..."),
                  model=loaded)


def channel_maps(loaded: LoadedModel, pixels: list[torch.Tensor], block: SEBlock, channel: int) -> np.ndarray:
    """The SE input of ``channel`` of ``block`` over each of ``pixels`` (shared; keyed by the pixels)."""
    from senet_viz.analysis.channel_maps import pregate_maps

    def compute(task: Task):
        return pregate_maps(task.model, pixels, block, channel)

    key = (*model_key(loaded), tuple(pixels_key(p) for p in pixels), block.name, int(channel))
    maps, _ = shared("channel_maps", key, compute, spinner_wait("Mapping the channel's input ..."), model=loaded)
    return maps
