"""The models every session shares.

One process-wide cache (:func:`model_cache`: never mutated, every hooked forward holds the model's lock, one load
per key at a time), bounded by the models' parameters' and buffers' bytes (``SENET_VIZ_MODELS_MB``, see
ui/serving.py) and :data:`MODEL_LIMIT` entries. A typed timm / torchvision name is checked on the ``meta`` device
first (no gates, or over the budget: refused before it is built); a load that failed is remembered
(:data:`FAILED_LOADS`, keyed like the cache, weights digest and weights status included), so a rerun does not try
it again; the app never downloads weights by itself (the sidebar's button does).
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import replace
from pathlib import Path

import streamlit as st

from senet_viz.gates.census import tensor_bytes
from senet_viz.inference.run import ProgressFn
from senet_viz.lru import LRU
from senet_viz.models import zoo
from senet_viz.models.download import weights_status
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.model_files import ModelFileOptions, is_model_file
from ui import jobs
from ui.caches import ResultCache
from ui.engine import engine
from ui.keys import weights_digest
from ui.serving import budget_bytes

MODEL_LIMIT = 8  # models kept at most, however small (the byte budget is the real bound)
#: Loads that failed (no gates, unknown name, over the budget, bad weights, download needed), by the same key as
#: the model cache plus the weights status: a rerun raises the remembered error instead of loading again.
FAILED_LOADS = LRU(64)
_models: ResultCache | None = None
_models_guard = threading.Lock()
# How each cached model was loaded, so that a worker process can load the same (SENET_VIZ_COMPUTE=processes).
_model_refs: dict[int, jobs.ModelRef] = {}
_refs_guard = threading.Lock()


def _model_bytes(loaded: LoadedModel) -> int:
    return tensor_bytes(loaded.model)


def model_cache() -> ResultCache:
    """The process-wide model cache: kind ``"model"``, at most :data:`MODEL_LIMIT` models and
    ``SENET_VIZ_MODELS_MB`` of parameters and buffers (read when the first model is asked for), least recently
    used out first; one load per key at a time (a second session asking meanwhile waits for it)."""
    global _models
    with _models_guard:
        if _models is None:
            _models = ResultCache({"model": MODEL_LIMIT}, budget_bytes("SENET_VIZ_MODELS_MB"), _model_bytes)
        return _models


def _cached_model(name: str, weights: str | None, device: str, weights_key: str, options_key: str,
                  options: ModelFileOptions | None) -> LoadedModel:
    # weights_key (the file's digest) makes a changed file a new cache entry; options_key stands for options
    # (a model file's input size, class names, normalisation), which are not part of the key themselves.
    cache = model_cache()

    def load(_progress: ProgressFn) -> LoadedModel:
        # never downloads (the sidebar's button does); over the budget: refused (a typed name before it is built)
        return zoo.load_model(name, weights=weights, device=device, options=options, download=False,
                              max_param_bytes=cache.max_bytes)

    key = (name, weights, device, weights_key, options_key)
    found, loaded = cache.peek("model", key)
    if found:
        return loaded
    with st.spinner("Loading the model ..."):  # also while another session loads it
        return cache.fetch("model", key, load)


def bare_error(exc: Exception) -> Exception:
    """``exc`` without its traceback and chained errors, to be kept: their frames would hold what the failed load
    built (a 5 GB network refused after building, say) for as long as the error is remembered."""
    try:
        clean = copy.copy(exc)  # type and args, no traceback, no __cause__ / __context__
    except Exception:  # noqa: BLE001 - an exception whose __init__ takes other arguments
        clean = (KeyError if isinstance(exc, KeyError) else ValueError)(str(exc))
    return clean


def _weights_state(name: str) -> str:
    """Where a zoo name's weights would come from now (a download or a new file there is a new failure key)."""
    try:
        return str(weights_status(name))
    except (KeyError, ValueError):  # not a zoo name (a model file, an unknown name)
        return ""


def _source_file(name: str) -> Path | None:
    """The file a model-file name reads: the file itself, or the .py of a ``file.py:build`` entry point."""
    if not is_model_file(name):
        return None
    path = Path(name)
    if not path.is_file() and ":" in name:
        path = Path(name.rpartition(":")[0])
    return path if path.is_file() else None


def get_model(name: str, weights: str | None = None, device: str = "auto",
              options: ModelFileOptions | None = None) -> LoadedModel:
    """The shared, cached model; raises the library's errors (WeightsError, ...) for the caller to show.

    ``name`` is a zoo / timm / torchvision name or a model file (``options``: what the file does not say, see
    :class:`senet_viz.models.model_files.ModelFileOptions`); a changed model or weights file is loaded again."""
    engine()  # the thread policy is in place before the first forward (loading verifies the blocks with one)
    if is_model_file(name):  # whatever page asks, a model file the server loads is a stranger's
        options = replace(options or ModelFileOptions(), untrusted=True)
    key = weights_digest(weights) if weights and Path(weights).is_file() else (weights or "default")
    source = _source_file(name)
    if source is not None:
        key += "|" + weights_digest(source)
    options_key = repr(options) if options else ""
    failed_key = (name, weights, device, key, options_key, _weights_state(name) if not weights else "")
    failed = FAILED_LOADS.get(failed_key)
    if failed is not None:
        raise failed.with_traceback(None)
    try:
        loaded = _cached_model(name, weights, device, key, options_key, options)
    except (KeyError, ValueError) as exc:  # the library's refusals (WeightsError, NoGatesError, ... are ValueErrors)
        FAILED_LOADS.put(failed_key, bare_error(exc))
        raise
    with _refs_guard:
        if id(loaded.model) not in _model_refs:
            _model_refs[id(loaded.model)] = jobs.ModelRef(name, weights, str(loaded.device), options)
            weakref.finalize(loaded.model, _model_refs.pop, id(loaded.model), None)
    return loaded


def process_ref(loaded: LoadedModel) -> jobs.ModelRef | None:
    """Where ``loaded``'s passes run in a worker process: its load arguments, or None (threads: the policy, or a
    model the server did not load through :func:`get_model`)."""
    if not engine().policy.processes:
        return None
    with _refs_guard:
        return _model_refs.get(id(loaded.model))
