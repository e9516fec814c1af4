"""Streamlit glue: cached models, per-session results, and the image set the sidebar chose.

Computation lives in ``senet_viz``; this module only decides *when* to call it. Models are shared by every
browser session through ``st.cache_resource`` (small ``max_entries``; never mutated, every hooked forward
holds the model's lock). Results are memoised per session in ``st.session_state`` under a key made of the
model, its weights digest, the device and the images' content keys, so changing what a chart shows never
re-runs the network, and nothing a user uploaded or computed is lost on a rerun.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from senet_viz import ablation, zoo
from senet_viz.data import ImageSet
from senet_viz.run import Result, run_model
from senet_viz.stats import GateStats

MAX_RESULTS_PER_SESSION = 8
UPLOAD_DIR = Path(tempfile.gettempdir()) / "senet_viz_uploads"


@st.cache_resource(max_entries=3, show_spinner="Loading the model ...")
def _cached_model(name: str, weights: str | None, device: str, weights_key: str) -> zoo.LoadedModel:
    # weights_key (the file's digest) makes a changed file a new cache entry.
    return zoo.load_model(name, weights=weights, device=device)


def get_model(name: str, weights: str | None = None, device: str = "auto") -> zoo.LoadedModel:
    """The shared, cached model; raises the library's errors (WeightsError, ...) for the caller to show."""
    from senet_viz.weights import file_digest

    key = file_digest(weights) if weights and Path(weights).is_file() else (weights or "default")
    return _cached_model(name, weights, device, key)


def save_upload(name: str, data: bytes) -> Path:
    """Keep an uploaded weights file on disk under its content hash (the loaders read files)."""
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    suffix = Path(name).suffix.lower()
    path = UPLOAD_DIR / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if not path.exists():
        path.write_bytes(data)
    return path


def _memo(kind: str) -> OrderedDict:
    store = st.session_state.setdefault(f"_memo_{kind}", OrderedDict())
    return store


def _remember(kind: str, key: tuple, value) -> None:
    store = _memo(kind)
    store[key] = value
    store.move_to_end(key)
    while len(store) > MAX_RESULTS_PER_SESSION:
        store.popitem(last=False)


def images_key(images: ImageSet) -> tuple:
    # Labels are part of the key: the same files scored with and without labels are different requests.
    return tuple((it.key, it.label) for it in images.items)


def model_key(loaded: zoo.LoadedModel) -> tuple:
    return (loaded.name, loaded.weights_id, str(loaded.device))


@dataclass
class Analysis:
    """One model over one image set: the raw result and its per-class statistics."""

    result: Result
    stats: GateStats
    channels: pd.DataFrame
    indices: pd.DataFrame
    class_names: list[str]
    grouping: str  # "labels" or "predicted class"


def _progress_bar(text: str):
    bar = st.progress(0.0, text=text)

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{text} {done}/{total} images")

    return bar, update


def run(loaded: zoo.LoadedModel, images: ImageSet) -> Result:
    """Gates, predictions and logits of every image (memoised per session)."""
    key = (*model_key(loaded), images_key(images))
    store = _memo("run")
    if key in store:
        store.move_to_end(key)
        return store[key]
    bar, update = _progress_bar(f"Running {loaded.name} on")
    result = run_model(loaded, images, progress=update, batch_size=32)
    bar.empty()
    _remember("run", key, result)
    return result


def analyse(loaded: zoo.LoadedModel, images: ImageSet, group_by_prediction: bool = False) -> Analysis:
    """Run (memoised) and compute per-class statistics, grouping by labels or by predicted class."""
    result = run(loaded, images)
    key = (*model_key(loaded), images_key(images), group_by_prediction)
    store = _memo("analysis")
    if key in store:
        return store[key]
    if group_by_prediction or (result.labels < 0).all():
        labels, names, grouping = result.pred, list(loaded.class_names), "predicted class"
    else:
        labels, names, grouping = result.labels, list(images.class_names or loaded.class_names), "labels"
    stats = GateStats.for_blocks(loaded.name, loaded.blocks, names)
    for name, gates in result.gates.items():
        stats.update(name, gates, labels)
    analysis = Analysis(result=result, stats=stats, channels=stats.frame(), indices=stats.indices(),
                        class_names=names, grouping=grouping)
    _remember("analysis", key, analysis)
    return analysis


def evaluate(loaded: zoo.LoadedModel, images: ImageSet, blocks: list, mode: str) -> dict:
    """The ablation metrics of ``blocks`` in ``mode`` (memoised); reuses the full pass when it can."""
    key = (*model_key(loaded), images_key(images), tuple(b.name for b in blocks), mode)
    store = _memo("evaluate")
    if key in store:
        return store[key]
    full = run(loaded, images) if mode == "identity" else None
    with st.spinner(f"Evaluating with {len(blocks)} SE block(s) {'removed' if mode == 'identity' else 'frozen'} ..."):
        out = ablation.evaluate(loaded, images, blocks, mode=mode, full=full)
    _remember("evaluate", key, out)
    return out


def sweep(loaded: zoo.LoadedModel, images: ImageSet, modes: tuple[str, ...], kinds: tuple[str, ...]) -> pd.DataFrame:
    key = (*model_key(loaded), images_key(images), modes, kinds)
    store = _memo("sweep")
    if key in store:
        return store[key]
    configs = [c for c in ablation.sweep_configs(loaded.blocks) if c[0] in kinds]
    bar = st.progress(0.0, text="Sweeping SE ablations ...")
    frame = ablation.sweep(loaded, images, modes, configs,
                           progress=lambda d, t: bar.progress(d / t, text=f"Sweeping SE ablations: {d}/{t} runs"))
    bar.empty()
    _remember("sweep", key, frame)
    return frame


def single_image_gates(analysis: Analysis, key: str) -> dict[str, np.ndarray]:
    row = analysis.result.keys.index(key)
    return {name: g[row].astype(np.float32) for name, g in analysis.result.gates.items()}


def subset_by_keys(images: ImageSet, keys: set[str]) -> ImageSet:
    return replace(images, items=[it for it in images.items if it.key in keys])


@st.cache_data(max_entries=16, show_spinner="Counting parameters and MACs ...")
def _cost(model_name: str, weights_id: str, _loaded: zoo.LoadedModel):
    from senet_viz.cost import model_cost

    with _loaded.lock:
        return model_cost(_loaded.model, _loaded.blocks, (), _loaded.input_size, _loaded.name)


def cost(loaded: zoo.LoadedModel):
    return _cost(loaded.name, loaded.weights_id, loaded)


@st.cache_data(show_spinner="Counting SE-ResNet-50 variants (no weights needed) ...")
def paper_cost_table() -> dict[str, pd.DataFrame]:
    """The paper's Tables 10 and 13 beside parameter counts measured on random-weight SE-ResNet-50s."""
    from senet_viz import paper

    return {"table13": paper.table13_measured(), "table10": paper.table10_measured()}


def gradcams(loaded: zoo.LoadedModel, image_key: str, pixels, stage: int, removed: list) -> tuple[dict, int]:
    """Grad-CAM with the full network and with ``removed`` SE blocks (memoised per session)."""
    from senet_viz.attribution import gradcam

    key = (*model_key(loaded), image_key, stage, tuple(b.name for b in removed))
    store = _memo("gradcam")
    if key not in store:
        with st.spinner("Computing Grad-CAM ..."):
            full, target = gradcam(loaded, pixels, stage)
            ablated, _ = gradcam(loaded, pixels, stage, target=target, ablate_blocks=removed)
        names = ", ".join(b.name for b in removed)
        _remember("gradcam", key, ({"full network": full, f"without {names}": ablated}, target))
    return store[key]


def channel_attribution(loaded: zoo.LoadedModel, image_key: str, pixels, block) -> tuple:
    from senet_viz.attribution import se_channel_attribution

    key = (*model_key(loaded), image_key, block.name)
    store = _memo("channel_attr")
    if key not in store:
        _remember("channel_attr", key, se_channel_attribution(loaded, pixels, block))
    return store[key]
