"""Streamlit glue: cached models, results shared between sessions, torch threads per request, analysis files.

Computation lives in ``senet_viz``; this module only decides *when* (and on which thread) to call it.

Models are shared by every browser session through one process-wide cache (:func:`model_cache`: never mutated,
every hooked forward holds the model's lock, one load per key at a time), bounded by their parameters' and buffers'
bytes (``SENET_VIZ_MODELS_MB``, see ui/serving.py) and :data:`MODEL_LIMIT` entries. A typed timm / torchvision name
is checked on the ``meta`` device first (no gates, or over the budget: refused before it is built); a load that
failed is remembered (:data:`FAILED_LOADS`, keyed like the cache, weights digest and weights status included), so
a rerun does not try it again; the app never downloads weights by itself (the sidebar's button does).

Results (network passes, statistics, ablations, sweeps, Grad-CAMs, channel attributions) are shared by every
session of the process: one :class:`~ui.caches.ResultCache`, keyed by the model, its weights digest, the device and the
content of the images (:func:`images_key`), so a second tab or a second user asking for the same thing gets it
without a forward pass, and two sessions asking at the same moment compute it once (the second waits for the
first). The cache is a least-recently-*used* LRU bounded per kind by :data:`RESULT_LIMITS` (entries) and in all by
``SENET_VIZ_RESULTS_MB`` (bytes, estimated by :func:`ui.caches.value_bytes`; a value larger than the whole budget
is served but not kept). Decoded pixels (:data:`PIXELS`) are bounded by ``SENET_VIZ_PIXELS_MB``.
Memory is dominated by network passes: one keeps 2 bytes per SE gate and 4 per logit of every image (34 kB per
image for SE-ResNet-50, 0.8 kB for the embedded Fashion-MNIST model), and at most ``run`` + ``analysis`` = 32 of
them are held (an analysis holds its pass), e.g. 32 x 34 MB for 1,000 ImageNet images on SE-ResNet-50, or
32 x 8 MB for the 10,000 Fashion-MNIST test images. Shared results are read-only (their arrays are not
writeable).

Torch threads. ``torch.set_num_threads`` is process-global in name only. Measured with torch 2.14 (OpenMP
build; ``benchmarks/concurrent_sessions.py`` prints it): it stores a process-wide default *and* sets the calling
thread's OpenMP team size; every other thread keeps the size it had at its first parallel op, and a thread that
has not run one yet takes the stored default. Uncapped, two sessions that each use every core run 2 x cores
threads, and when the cores are also busy with anything else, OpenMP's spinning barriers wait for threads that
are not running (measured on 2 cores with one busy: a pass with 2 threads took 2x, once 35x, as long as with 1).
So network work does not run on the sessions' script threads: it runs on a small process-wide pool of worker
threads, each capped once when it starts, while the session shows a progress bar and waits.

- ``SENET_VIZ_TORCH_THREADS``: torch intra-op threads per request (default ``max(1, cores // 2)``, cores being
  the CPUs this process may use).
- ``SENET_VIZ_MAX_CONCURRENT``: requests computing at once, i.e. worker threads (default
  ``max(1, cores // threads)``); more requests queue. On the CPU each worker may use its own copy of a model
  (made on first need, at most this many per model, so two sessions on the same model do not queue on its lock);
  on CUDA too while the copies fit in a quarter of the free GPU memory, each worker on its own CUDA stream.

- ``SENET_VIZ_COMPUTE``: ``threads`` (default) runs the network passes (the run, ablations, sweeps) on those worker
  threads; ``processes`` runs them in as many worker processes (spawned on first need, each loading the models it
  is asked for once and capped to the same torch threads), so that two sessions' per-image Python work (decoding,
  hooks, bookkeeping) does not take turns on the server's one GIL: measured with
  benchmarks/concurrent_sessions.py, two sessions at once took 2.1x one session's time on an H100 machine with
  threads (the embedded model's work is almost all Python there). Costs: a first request waits for the process to
  start (a few seconds: it imports torch), and each process holds its own copy of every model it runs.

All three are read once per process, when the first model is requested. ``SENET_VIZ_TORCH_THREADS=<cores>`` with
``SENET_VIZ_MAX_CONCURRENT=1`` gives every core to one request at a time, as the CLI does (the fastest single
session on an otherwise idle machine).

Size: the engine every session shares (result cache, memo helper, worker threads, model copies) and the
page-facing functions that go through it; one locking design, kept in one place.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st
import torch

from senet_viz.analysis import ablation
from senet_viz.analysis.bundle import Bundle, BundleError, read_bundle
from senet_viz.analysis.stats import GateStats
from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.inference.run import PixelCache, ProgressFn, Result, reuse_pixels, run_model
from senet_viz.models import zoo
from ui import jobs, serving
from ui.caches import LRU, Flight, ResultCache, run_inline

T = TypeVar("T")
THREADS_ENV = "SENET_VIZ_TORCH_THREADS"
CONCURRENT_ENV = "SENET_VIZ_MAX_CONCURRENT"
COMPUTE_ENV = "SENET_VIZ_COMPUTE"
# Entries kept per kind, for the whole process (all sessions together); see the module docstring for memory.
# Per-image gates are kept (for Explore) only for runs of at most this many images; larger runs keep predictions
# and stream the gates into statistics, so memory does not grow with the folder (SE-ResNet-50: 30 kB per image).
KEEP_GATES_LIMIT = 2_000
RESULT_LIMITS: dict[str, int] = {"run": 16, "analysis": 16, "evaluate": 64, "sweep": 8, "gradcam": 64,
                                 "channel_attr": 128, "channel_maps": 64}
_log = logging.getLogger(__name__)
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


# ------------------------------------------------------------------------------------------ shared results

def session_memo(name: str, limit: int, max_bytes: int | None = None) -> LRU:
    """This browser session's :class:`LRU` memo ``name`` (made on first use with ``limit`` entries and, if given,
    ``max_bytes``): for what one session keeps for itself (rendered PNGs, figures offered for export), never shared
    with other sessions."""
    memo = st.session_state.get(name)
    if not isinstance(memo, LRU):
        memo = st.session_state[name] = LRU(limit, max_bytes)
    return memo


# ------------------------------------------------------------------------------------------ threads per request


@dataclass(frozen=True)
class ThreadPolicy:
    cores: int  # CPUs this process may use
    threads: int  # torch intra-op threads per request
    concurrent: int  # requests computing at once (worker threads)
    processes: bool = False  # network passes in worker processes (SENET_VIZ_COMPUTE=processes)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / cgroup cpusets, unlike os.cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


def _env_int(name: str, default: int, env: Mapping[str, str]) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        _log.warning("%s=%r is not a positive integer; using %d", name, raw, default)
        return default
    return value


def thread_policy(env: Mapping[str, str] | None = None, cores: int | None = None) -> ThreadPolicy:
    """The policy ``SENET_VIZ_TORCH_THREADS`` and ``SENET_VIZ_MAX_CONCURRENT`` ask for (module docstring)."""
    env = os.environ if env is None else env
    cores = cores or _usable_cores()
    threads = _env_int(THREADS_ENV, max(1, cores // 2), env)
    compute = env.get(COMPUTE_ENV, "threads").strip().lower() or "threads"
    if compute not in ("threads", "processes"):
        _log.warning("%s=%r is neither 'threads' nor 'processes'; using threads", COMPUTE_ENV, compute)
        compute = "threads"
    return ThreadPolicy(cores, threads, _env_int(CONCURRENT_ENV, max(1, cores // threads), env),
                        processes=compute == "processes")


class _Replicas:
    """The cached model and copies of it for concurrent requests, each used by one request at a time.

    Holds no reference to the cached model (each request passes it in), so when the model cache drops a model,
    its copies go with it (see :meth:`Engine.model`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # models in all, the cached one included
        self.primary_free = True
        self.copies: list[zoo.LoadedModel] = []  # copies not in use
        self.made = 0
        self.cond = threading.Condition()

    @contextmanager
    def take(self, loaded: zoo.LoadedModel) -> Iterator[zoo.LoadedModel]:
        with self.cond:
            while not (self.primary_free or self.copies or 1 + self.made < self.limit):
                self.cond.wait()
            if self.primary_free:
                self.primary_free, model, which = False, loaded, "primary"
            elif self.copies:
                model, which = self.copies.pop(), "copy"
            else:
                self.made += 1
                which = "new"
        if which == "new":
            try:
                model = self._copy(loaded)
            except Exception:  # e.g. a module that cannot be deep-copied: requests take turns on what exists
                _log.warning("cannot copy %s for concurrent requests; they will take turns", loaded.name,
                             exc_info=True)
                with self.cond:
                    self.made -= 1
                    self.limit = 1 + self.made
                with self.take(loaded) as model:
                    yield model
                return
        try:
            yield model
        finally:
            with self.cond:
                if which == "primary":
                    self.primary_free = True
                else:
                    self.copies.append(model)
                self.cond.notify()

    @staticmethod
    def _copy(loaded: zoo.LoadedModel) -> zoo.LoadedModel:
        # Copied without the model's lock, so a request does not wait for another's whole pass: that request's
        # hooks (registered under the lock) are left out by copying every hook dict as an empty one, and nothing
        # else of a model in eval mode changes during a forward.
        memo: dict[int, Any] = {}
        for module in loaded.model.modules():
            for name in _HOOK_DICTS:
                hooks = getattr(module, name, None)
                if hooks is not None:
                    memo[id(hooks)] = type(hooks)()
        return replace(loaded, model=copy.deepcopy(loaded.model, memo), lock=None)  # lock=None: a lock of its own


_worker_streams = threading.local()
# Model-ready pixels shared by every request: the Remove page's three passes (full, ablated, retrained twin) and
# other pages over the same images decode each image once (SENET_VIZ_PIXELS_MB, read at import; the default
# 256 MB holds ~1,700 ImageNet crops, every upload-sized set).
PIXELS = PixelCache(serving.budget_bytes("SENET_VIZ_PIXELS_MB"))


def _in_worker(job: Callable[[], None]) -> None:
    """Run ``job`` reusing decoded pixels, on this worker thread's own CUDA stream where there is a GPU:
    PyTorch's default stream is one per GPU for every thread, so two requests' kernels would otherwise queue
    behind each other."""
    with reuse_pixels(PIXELS):
        if not torch.cuda.is_available():
            job()
            return
        stream = getattr(_worker_streams, "stream", None)
        if stream is None:
            stream = _worker_streams.stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            job()


class Engine:
    """What every session shares: the result cache, the worker threads and the model copies."""

    def __init__(self, policy: ThreadPolicy, limits: Mapping[str, int] = RESULT_LIMITS,
                 max_bytes: int | None = None) -> None:
        self.policy = policy
        # max_bytes: the results' byte budget (default SENET_VIZ_RESULTS_MB)
        self.results = ResultCache(limits, max_bytes if max_bytes is not None
                                   else serving.budget_bytes("SENET_VIZ_RESULTS_MB"))
        # The stored default is what threads that have not run torch yet (each Streamlit rerun is a new thread)
        # will use; each worker also sets its own team size once, in its initializer.
        torch.set_num_threads(policy.threads)
        self.pool = ThreadPoolExecutor(max_workers=policy.concurrent, thread_name_prefix="senet-viz-compute",
                                       initializer=torch.set_num_threads, initargs=(policy.threads,))
        self._replicas: dict[int, _Replicas] = {}  # by id() of the cached module, dropped when it is collected
        self._replicas_guard = threading.Lock()
        self._processes: ProcessPoolExecutor | None = None
        self._board: Any = None  # progress reported by the worker processes (a manager dict), made on first need
        self._processes_guard = threading.Lock()

    def in_process(self, job: Callable[..., T], *args: Any, progress: ProgressFn | None = None) -> T:
        """``job(*args, board, token)`` in a worker process (see :mod:`ui.jobs`), its progress relayed to
        ``progress``; called from a worker thread, which waits for it."""
        with self._processes_guard:
            if self._processes is None:
                context = multiprocessing.get_context("spawn")  # fork is unsafe under the server's threads
                with jobs.bare_main():  # the manager and the workers do not run app.py again (ui/jobs.py)
                    self._board = context.Manager().dict()
                    self._processes = ProcessPoolExecutor(self.policy.concurrent, mp_context=context,
                                                          initializer=jobs.init_worker,
                                                          initargs=(self.policy.threads,))
                    for _ in range(self.policy.concurrent):  # every worker starts now, not at the first concurrent use
                        self._processes.submit(jobs.ready)
        token = uuid.uuid4().hex
        with jobs.bare_main():  # a submit may start a worker (one that ended is replaced)
            future = self._processes.submit(job, *args, self._board if progress else None, token)
        try:
            while True:
                try:
                    return future.result(timeout=0.2)
                except TimeoutError:
                    if progress is not None and (reported := self._board.get(token)) is not None:
                        progress(*reported)
        finally:
            if progress is not None:
                self._board.pop(token, None)

    def submit(self, job: Callable[[], None]) -> None:
        self.pool.submit(_in_worker, job)

    @contextmanager
    def model(self, loaded: zoo.LoadedModel) -> Iterator[zoo.LoadedModel]:
        """``loaded`` or an identical copy of it that no other request is using."""
        key = id(loaded.model)
        with self._replicas_guard:
            pool = self._replicas.get(key)
            if pool is None:
                pool = self._replicas[key] = _Replicas(self._replica_limit(loaded))
                weakref.finalize(loaded.model, self._forget, key)
        with pool.take(loaded) as model:
            yield model

    def _replica_limit(self, loaded: zoo.LoadedModel) -> int:
        """How many models (the cached one included) requests on ``loaded`` may use at once: one per worker, on a
        GPU as long as the copies take under a quarter of its free memory (else they take turns on one model)."""
        if loaded.device.type != "cuda" or self.policy.concurrent <= 1:
            return self.policy.concurrent
        size = sum(t.numel() * t.element_size() for t in itertools.chain(loaded.model.parameters(),
                                                                          loaded.model.buffers()))
        free, _ = torch.cuda.mem_get_info(loaded.device)
        return self.policy.concurrent if size * (self.policy.concurrent - 1) < free / 4 else 1

    def _forget(self, key: int) -> None:
        with self._replicas_guard:
            self._replicas.pop(key, None)


@st.cache_resource(show_spinner=False)
def engine() -> Engine:
    """The process-wide engine, created (and the thread policy applied) before the first model is loaded."""
    policy = thread_policy()
    _log.info("senet-viz: %d torch thread(s) per request, %d request(s) at once, %d core(s)", policy.threads,
              policy.concurrent, policy.cores)
    return Engine(policy)


def _shared(kind: str, key: Hashable, compute: Callable[..., T], wait: Callable[[Flight], None] | None = None, *,
            model: zoo.LoadedModel | None = None, needs: Callable[[], Any] | None = None,
            on_worker: bool = True) -> T:
    """The one memo of the pages' results: shared by every session in the engine's :class:`ResultCache` under
    ``(kind, key)`` (content keys: :func:`model_key`, :func:`images_key`, ...), computed once on a miss on a worker
    thread (``on_worker=False``: on this session's thread, for work without a network) while this session waits
    behind ``wait(flight)`` (a progress bar, a spinner).

    The computation is called ``compute(progress)``, with ``model`` given ``compute(progress, replica)`` (a copy of
    the model no other request is using, see :meth:`Engine.model`), and with ``needs`` one more argument: what
    ``needs()`` returns, asked for on this session's thread only on a miss (after a first look, so a hit never asks
    for it and a result whose inputs were evicted is still served), e.g. the shared full pass an ablation reuses.
    """
    eng = engine()  # here, on the session's thread: the computation runs on a worker, outside any script run
    needed: tuple = ()
    if needs is not None:
        found, value = eng.results.peek(kind, key)
        if found:
            return value
        needed = (needs(),)

    def work(progress: ProgressFn) -> T:
        if model is None:
            return compute(progress, *needed)
        with eng.model(model) as replica:
            return compute(progress, replica, *needed)

    return eng.results.fetch(kind, key, work, submit=eng.submit if on_worker else run_inline, wait=wait)


def _progress_wait(text: str, unit: str) -> Callable[[Flight], None]:
    """Wait for a flight behind this session's own progress bar (the computation runs on a worker thread)."""

    def wait(flight: Flight) -> None:
        bar = st.progress(0.0, text=text)
        try:
            shown: object = None
            while not flight.done.wait(0.1):
                now = flight.progress if flight.started else "queued"
                if now == shown:
                    continue
                shown = now
                if now == "queued":
                    bar.progress(0.0, text=f"{text} (waiting for other sessions' computations)")
                elif now is not None:
                    done, total = now
                    bar.progress(min(1.0, done / max(total, 1)), text=f"{text} {done}/{total} {unit}")
        finally:
            bar.empty()

    return wait


def _spinner_wait(text: str) -> Callable[[Flight], None]:
    def wait(flight: Flight) -> None:
        with st.spinner(text):
            flight.done.wait()

    return wait


def _no_wait(flight: Flight) -> None:
    flight.done.wait()


# ------------------------------------------------------------------------------------------ models and keys


MODEL_LIMIT = 8  # models kept at most, however small (the byte budget is the real bound)
#: Loads that failed (no gates, unknown name, over the budget, bad weights, download needed), by the same key as
#: the model cache plus the weights status: a rerun raises the remembered error instead of loading again.
FAILED_LOADS = LRU(64)
_failed_guard = threading.Lock()
_models: ResultCache | None = None
_models_guard = threading.Lock()


def _model_bytes(loaded: zoo.LoadedModel) -> int:
    from senet_viz.gates.census import tensor_bytes

    return tensor_bytes(loaded.model)


def model_cache() -> ResultCache:
    """The process-wide model cache: kind ``"model"``, at most :data:`MODEL_LIMIT` models and
    ``SENET_VIZ_MODELS_MB`` of parameters and buffers (read when the first model is asked for), least recently
    used out first; one load per key at a time (a second session asking meanwhile waits for it)."""
    global _models
    with _models_guard:
        if _models is None:
            _models = ResultCache({"model": MODEL_LIMIT}, serving.budget_bytes("SENET_VIZ_MODELS_MB"), _model_bytes)
        return _models


def _cached_model(name: str, weights: str | None, device: str, weights_key: str, options_key: str = "",
                  _options: zoo.ModelFileOptions | None = None) -> zoo.LoadedModel:
    # weights_key (the file's digest) makes a changed file a new cache entry; options_key stands for _options
    # (a model file's input size, class names, normalisation), which is not part of the key itself.
    cache = model_cache()

    def load(_progress: ProgressFn) -> zoo.LoadedModel:
        # never downloads (the sidebar's button does); over the budget: refused (a typed name before it is built)
        return zoo.load_model(name, weights=weights, device=device, options=_options, download=False,
                              max_param_bytes=cache.max_bytes)

    key = (name, weights, device, weights_key, options_key)
    found, loaded = cache.peek("model", key)
    if found:
        return loaded
    with st.spinner("Loading the model ..."):  # also while another session loads it
        return cache.fetch("model", key, load)


def weights_digest(path: str | Path) -> str:
    """Content digest of a weights file, hashed again only when its size or modification time changes (the
    library memoises it: :func:`senet_viz.models.weights.file_sha256`)."""
    from senet_viz.models.weights import file_digest

    return file_digest(path)


def _bare(exc: Exception) -> Exception:
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
        return str(zoo.weights_status(name))
    except (KeyError, ValueError):  # not a zoo name (a model file, an unknown name)
        return ""


def _source_file(name: str) -> Path | None:
    """The file a model-file name reads: the file itself, or the .py of a ``file.py:build`` entry point."""
    if not zoo.is_model_file(name):
        return None
    path = Path(name)
    if not path.is_file() and ":" in name:
        path = Path(name.rpartition(":")[0])
    return path if path.is_file() else None


def get_model(name: str, weights: str | None = None, device: str = "auto",
              options: zoo.ModelFileOptions | None = None) -> zoo.LoadedModel:
    """The shared, cached model; raises the library's errors (WeightsError, ...) for the caller to show.

    ``name`` is a zoo / timm / torchvision name or a model file (``options``: what the file does not say, see
    :class:`senet_viz.models.zoo.ModelFileOptions`); a changed model or weights file is loaded again."""
    engine()  # the thread policy is in place before the first forward (loading verifies the blocks with one)
    if zoo.is_model_file(name):  # whatever page asks, a model file the server loads is a stranger's
        options = replace(options or zoo.ModelFileOptions(), untrusted=True)
    key = weights_digest(weights) if weights and Path(weights).is_file() else (weights or "default")
    source = _source_file(name)
    if source is not None:
        key += "|" + weights_digest(source)
    options_key = repr(options) if options else ""
    failed_key = (name, weights, device, key, options_key, _weights_state(name) if not weights else "")
    with _failed_guard:
        failed = FAILED_LOADS.get(failed_key)
    if failed is not None:
        raise failed.with_traceback(None)
    try:
        loaded = _cached_model(name, weights, device, key, options_key, options)
    except (KeyError, ValueError) as exc:  # the library's refusals (WeightsError, NoGatesError, ... are ValueErrors)
        with _failed_guard:
            FAILED_LOADS.put(failed_key, _bare(exc))
        raise
    with _refs_guard:
        if id(loaded.model) not in _model_refs:
            _model_refs[id(loaded.model)] = jobs.ModelRef(name, weights, str(loaded.device), options)
            weakref.finalize(loaded.model, _model_refs.pop, id(loaded.model), None)
    return loaded


# How each cached model was loaded, so that a worker process can load the same (SENET_VIZ_COMPUTE=processes).
_model_refs: dict[int, jobs.ModelRef] = {}
_refs_guard = threading.Lock()


def _process_ref(loaded: zoo.LoadedModel) -> jobs.ModelRef | None:
    """Where ``loaded``'s passes run in a worker process: its load arguments, or None (threads: the policy, or a
    model the server did not load through :func:`get_model`)."""
    if not engine().policy.processes:
        return None
    return _model_refs.get(id(loaded.model))


def _item_stamp(item: ImageItem) -> tuple:
    """What identifies an item's pixels: uploads carry their content hash in the key; a file on disk is its
    absolute path (keys are relative to the folder), size and modification time, so an edited file is new."""
    if item.path is not None:
        try:
            stat = item.path.stat()
        except OSError:
            return (os.path.abspath(item.path), None, None)  # unreadable now: a later fix gives a new key
        return (os.path.abspath(item.path), stat.st_size, stat.st_mtime_ns)
    return ("data", len(item.data or b""))


def images_key(images: ImageSet) -> str:
    """A digest of everything a result depends on in ``images``: each item's identity (:func:`_item_stamp`;
    in-memory items are named by their key: a content hash for uploads, an index into the installed test set for
    Fashion-MNIST), label and label name (the same files with other labels are another request), the class names
    and the files left out (listed with a result)."""
    # Asked several times per script run (each result, Export's provenance) and it stats every file: computed once
    # per ImageSet object (the sidebar builds a new one each run, so an edited file is seen on the next run).
    cached = images.__dict__.get("_senet_viz_images_key")
    if cached is not None and cached[0] == len(images.items):
        return cached[1]
    h = hashlib.sha256()
    h.update(repr((list(images.class_names), [(s.file, s.reason) for s in images.skipped])).encode())
    for it in images.items:
        h.update(repr((it.key, it.label, it.label_name, _item_stamp(it))).encode())
    images.__dict__["_senet_viz_images_key"] = (len(images.items), h.hexdigest())
    return h.hexdigest()


def model_key(loaded: zoo.LoadedModel) -> tuple:
    return (loaded.name, loaded.weights_id, str(loaded.device))


def _pixels_key(pixels: torch.Tensor) -> str:
    # The exact input, not the image's key: two folders can hold different files under the same relative path.
    return hashlib.sha256(pixels.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _read_only(result: Result) -> Result:
    # One Result serves every session: an in-place edit by one page would change another user's charts.
    arrays = [result.labels, result.pred, result.top5, result.top5_prob, result.logits, *result.gates.values()]
    for array in arrays:
        if array is not None:
            array.flags.writeable = False
    return result


# ------------------------------------------------------------------------------------------ results


@dataclass
class Analysis:
    """One model over one image set: the raw result and its per-class statistics."""

    result: Result | None  # None for an opened bundle (statistics only)
    stats: GateStats  # read bounded views of it (stats.frame(blocks, classes), class_means, ...): no full frame
    indices: pd.DataFrame
    class_names: list[str]
    grouping: str  # "labels" or "predicted class"


def _streamed_run(loaded: zoo.LoadedModel, images: ImageSet) -> tuple[Result, GateStats]:
    """One pass: predictions and logits of every image, gate statistics by label streamed batch by batch, and the
    per-image gates only when the set has at most :data:`KEEP_GATES_LIMIT` images (shared by every session)."""
    names = list(images.class_names or loaded.class_names)
    keep = len(images.items) <= KEEP_GATES_LIMIT

    def compute(progress: ProgressFn, model: zoo.LoadedModel) -> tuple[Result, GateStats]:
        stats = GateStats.for_blocks(loaded.name, loaded.blocks, names)
        result = run_model(model, images, progress=progress, batch_size=32, keep_gates=keep, on_gates=stats.update)
        return _read_only(result), stats

    def in_process(progress: ProgressFn) -> tuple[Result, GateStats]:
        result, stats = engine().in_process(jobs.streamed_run, ref, images, names, keep, progress=progress)
        return _read_only(result), stats

    ref = _process_ref(loaded)
    # keep is in the key: a run without per-image gates must not answer one that needs them
    return _shared("run", (*model_key(loaded), images_key(images), keep), compute if ref is None else in_process,
                   _progress_wait(f"Running {loaded.name} on", "images"), model=loaded if ref is None else None)


def run(loaded: zoo.LoadedModel, images: ImageSet) -> Result:
    """Predictions and logits of every image, and their gates up to :data:`KEEP_GATES_LIMIT` images (shared)."""
    return _streamed_run(loaded, images)[0]


def analyse(loaded: zoo.LoadedModel, images: ImageSet, group_by_prediction: bool = False) -> Analysis:
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

    def compute(_progress: ProgressFn, needed: tuple[Result, GateStats, GateStats | None, bool]) -> Analysis:
        result, by_label, by_pred, by_prediction = needed
        if not by_prediction:
            stats, grouping = by_label, "labels"
        else:
            grouping = "predicted class"
            stats = by_pred if by_pred is not None else \
                GateStats.from_result(result, loaded.blocks, loaded.class_names, by="prediction")
        return Analysis(result=result, stats=stats, indices=stats.indices(), class_names=list(stats.class_names),
                        grouping=grouping)

    # Statistics need no network: computed on this thread (still once for sessions asking together).
    return _shared("analysis", (*model_key(loaded), images_key(images), group_by_prediction,
                               len(images.items) <= KEEP_GATES_LIMIT), compute,
                   needs=passes, on_worker=False)


def evaluate(loaded: zoo.LoadedModel, images: ImageSet, blocks: list, mode: str) -> ablation.AblationResult:
    """The ablation metrics of ``blocks`` in ``mode`` (shared); reuses the full pass when it can."""

    def compute(_progress: ProgressFn, model: zoo.LoadedModel, full: Result | None) -> ablation.AblationResult:
        return ablation.evaluate(model, images, blocks, mode=mode, full=full)

    def in_process(_progress: ProgressFn, full: Result | None) -> ablation.AblationResult:
        return engine().in_process(jobs.evaluate, ref, images, [b.name for b in blocks], mode, full)

    verb = "removed" if mode == "identity" else "frozen"
    ref = _process_ref(loaded)
    return _shared("evaluate", (*model_key(loaded), images_key(images), tuple(b.name for b in blocks), mode),
                   compute if ref is None else in_process,
                   _spinner_wait(f"Evaluating with {len(blocks)} SE block(s) {verb} ..."),
                   model=loaded if ref is None else None,
                   needs=lambda: run(loaded, images) if mode == "identity" else None)


def sweep(loaded: zoo.LoadedModel, images: ImageSet, modes: tuple[str, ...], kinds: tuple[str, ...]) -> pd.DataFrame:
    """Every single-block, stage and last-k ablation in each mode (shared), with a progress bar over the images."""

    def compute(progress: ProgressFn, model: zoo.LoadedModel) -> pd.DataFrame:
        configs = [c for c in ablation.sweep_configs(loaded.blocks) if c[0] in kinds]
        return ablation.sweep(model, images, modes, configs, progress=progress)

    def in_process(progress: ProgressFn) -> pd.DataFrame:
        return engine().in_process(jobs.sweep, ref, images, modes, kinds, progress=progress)

    ref = _process_ref(loaded)
    return _shared("sweep", (*model_key(loaded), images_key(images), modes, kinds),
                   compute if ref is None else in_process,
                   _progress_wait("Sweeping SE ablations:", "images"), model=loaded if ref is None else None)


class _Bundles:
    """Opened analysis bundles and their analyses, shared by every session. Keyed by the sha256 of the file's bytes
    (never by its bundle.json, which a doctored file can copy from a genuine one) and bounded by bytes
    (``SENET_VIZ_BUNDLES_MB``, estimated from the statistics' arrays), the least recently used dropped first.
    A file that cannot be opened is remembered by digest too, so a bomb is not parsed again on every rerun."""

    FAILURES = 64  # refused files remembered (digest -> message)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, list] = OrderedDict()  # digest -> [bundle, bytes, analysis or None]
        self._failed: OrderedDict[str, str] = OrderedDict()
        self._reading: dict[str, threading.Lock] = {}  # one reader per digest: another session waits for it

    def _get(self, digest: str) -> Bundle | None:
        if digest in self._failed:
            raise BundleError(self._failed[digest])
        entry = self._entries.get(digest)
        if entry is None:
            return None
        self._entries.move_to_end(digest)
        return entry[0]

    def _put(self, digest: str, bundle: Bundle) -> None:
        budget = _bundles_budget()
        self._entries[digest] = [bundle, _bundle_bytes(bundle), None]
        while len(self._entries) > 1 and sum(e[1] for e in self._entries.values()) > budget:
            self._entries.popitem(last=False)

    def open(self, digest: str, read: Callable[[], Bundle]) -> Bundle:
        with self._lock:
            hit = self._get(digest)
            if hit is not None:
                return hit
            gate = self._reading.setdefault(digest, threading.Lock())
        with gate:
            with self._lock:
                hit = self._get(digest)
                if hit is not None:
                    return hit
            try:
                bundle = read()
                bundle.digest = digest
                with self._lock:
                    self._put(digest, bundle)
            except BundleError as exc:
                with self._lock:
                    self._failed[digest] = str(exc)
                    while len(self._failed) > self.FAILURES:
                        self._failed.popitem(last=False)
                raise
            finally:
                with self._lock:
                    self._reading.pop(digest, None)
        return bundle

    def analysis(self, bundle: Bundle) -> Analysis:
        with self._lock:
            entry = self._entries.get(bundle.digest) if bundle.digest else None
            if entry is not None and entry[0] is bundle and entry[2] is not None:
                self._entries.move_to_end(bundle.digest)
                return entry[2]
        analysis = Analysis(result=None, stats=bundle.stats, indices=bundle.stats.indices(),
                            class_names=list(bundle.stats.class_names), grouping="labels")
        with self._lock:  # kept only beside its own bundle (the statistics are shared, the indices are small)
            entry = self._entries.get(bundle.digest) if bundle.digest else None
            if entry is not None and entry[0] is bundle:
                entry[1] += int(analysis.indices.memory_usage(deep=True).sum())
                entry[2] = analysis
        return analysis

    def nbytes(self) -> int:
        with self._lock:
            return sum(e[1] for e in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._failed.clear()


def _bundles_budget() -> int:
    from ui.serving import budget_bytes

    return budget_bytes("SENET_VIZ_BUNDLES_MB")


def _bundle_bytes(bundle: Bundle) -> int:
    """Memory of an opened bundle: its statistics' arrays, plus its provenance and metrics (parsed JSON: counted
    as 16 times its text, about what small Python objects take)."""
    return bundle.stats.nbytes() + 16 * len(json.dumps([bundle.provenance, bundle.metrics], default=str))


BUNDLES = _Bundles()


def open_bundle(source: bytes | str) -> Bundle:
    """An analysis bundle from an upload's bytes or a typed server path (shared by the sessions; raises
    BundleError with a message to show). An upload is keyed by the sha256 of its bytes, a path by that of the
    file's content (memoised by resolved path, size and modification time); a path outside the data roots gets
    the one answer of :func:`ui.serving.server_path`, whether or not the file exists."""
    from senet_viz.models.weights import file_sha256
    from ui.serving import OutsideRootsError, server_path

    budget = _bundles_budget()
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
        return BUNDLES.open(hashlib.sha256(data).hexdigest(), lambda: read_bundle(data, max_bytes=budget))
    try:
        path = server_path(source, "analysis file")
    except OutsideRootsError as exc:
        raise BundleError(str(exc)) from None
    if not path.is_file():
        raise BundleError(f"no file at {path}: check the path, or upload the file instead")
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise BundleError(f"{path} cannot be read: {exc.strerror or exc}") from None

    def read() -> Bundle:
        bundle = read_bundle(path, max_bytes=budget)
        if file_sha256(path) != digest:  # replaced while it was read: its statistics may not be these bytes'
            raise BundleError(f"{path} changed while it was read; open it again")
        return bundle

    return BUNDLES.open(digest, read)


def bundle_analysis(bundle: Bundle) -> Analysis:
    """The pages' view of an opened bundle: its statistics, and no per-image result (computed once per file
    content, kept beside the bundle in the shared cache)."""
    return BUNDLES.analysis(bundle)


def single_image_gates(loaded: zoo.LoadedModel, images: ImageSet, analysis: Analysis, key: str
                       ) -> dict[str, np.ndarray]:
    """One image's gates: from the run when it kept them, else from a one-image pass (shared)."""
    if analysis.result.gates:
        row = analysis.result.keys.index(key)
        return {name: g[row].astype(np.float32) for name, g in analysis.result.gates.items()}
    one = subset_by_keys(images, {key})
    return {name: g[0].astype(np.float32) for name, g in run(loaded, one).gates.items()}


def subset_by_keys(images: ImageSet, keys: set[str]) -> ImageSet:
    return replace(images, items=[it for it in images.items if it.key in keys])


@st.cache_data(max_entries=16, show_spinner="Counting parameters and MACs ...")
def _cost(model_name: str, weights_id: str, _loaded: zoo.LoadedModel):
    from senet_viz.analysis.cost import model_cost

    with _loaded.lock:
        return model_cost(_loaded.model, _loaded.blocks, (), _loaded.input_size, _loaded.name)


def cost(loaded: zoo.LoadedModel):
    return _cost(loaded.name, loaded.weights_id, loaded)


@st.cache_data(show_spinner="Counting SE-ResNet-50 variants (no weights needed) ...")
def paper_cost_table() -> dict[str, pd.DataFrame]:
    """The paper's Tables 10 and 13 beside parameter counts measured on random-weight SE-ResNet-50s."""
    from senet_viz.analysis import paper
    return {"table13": paper.table13_measured(), "table10": paper.table10_measured()}


def gradcams(loaded: zoo.LoadedModel, image_key: str, pixels, stage: int, removed: list) -> tuple[dict, int]:
    """Grad-CAM with the full network and with ``removed`` SE blocks (shared; keyed by the pixels themselves,
    ``image_key`` only names the image)."""
    from senet_viz.analysis.attribution import gradcam

    def compute(_progress: ProgressFn, model: zoo.LoadedModel) -> tuple[dict, int]:
        full, target = gradcam(model, pixels, stage)
        ablated, _ = gradcam(model, pixels, stage, target=target, ablate_blocks=removed)
        names = ", ".join(b.name for b in removed)
        return {"full network": full, f"without {names}": ablated}, target

    key = (*model_key(loaded), _pixels_key(pixels), stage, tuple(b.name for b in removed))
    return _shared("gradcam", key, compute, _spinner_wait("Computing Grad-CAM ..."), model=loaded)


def channel_attribution(loaded: zoo.LoadedModel, image_key: str, pixels, block) -> tuple:
    """Gradient x gate of each channel of ``block`` for one image (shared; keyed by the pixels)."""
    from senet_viz.analysis.attribution import se_channel_attribution

    def compute(_progress: ProgressFn, model: zoo.LoadedModel) -> tuple:
        return se_channel_attribution(model, pixels, block)

    key = (*model_key(loaded), _pixels_key(pixels), block.name)
    return _shared("channel_attr", key, compute, _spinner_wait("Attributing the class score to SE channels ..."),
                   model=loaded)
