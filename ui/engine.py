"""The engine every session shares: the result cache, the worker threads (or processes) that run network passes,
and the copies of a model that let two requests use it at once. Pages go through :func:`ui.memo.shared`.

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

Results are bounded per kind by :data:`RESULT_LIMITS` (entries) and in all by ``SENET_VIZ_RESULTS_MB`` (bytes,
estimated by :func:`senet_viz.lru.value_bytes`; a value larger than the whole budget is served but not kept).
Memory is dominated by network passes: one keeps 2 bytes per SE gate and 4 per logit of every image (34 kB per
image for SE-ResNet-50, 0.8 kB for the embedded Fashion-MNIST model), and at most ``run`` + ``analysis`` = 32 of
them are held (an analysis holds its pass), e.g. 32 x 34 MB for 1,000 ImageNet images on SE-ResNet-50, or
32 x 8 MB for the 10,000 Fashion-MNIST test images. Decoded pixels (:data:`PIXELS`) are bounded by
``SENET_VIZ_PIXELS_MB``.
"""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import multiprocessing
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import streamlit as st
import torch

from senet_viz.inference.pipeline import PixelCache
from senet_viz.inference.run import ProgressFn
from senet_viz.models.loaded import LoadedModel
from senet_viz.settings import env_int, usable_cores
from ui import collector, jobs
from ui.caches import ResultCache
from ui.serving import budget_bytes

T = TypeVar("T")
THREADS_ENV = "SENET_VIZ_TORCH_THREADS"
CONCURRENT_ENV = "SENET_VIZ_MAX_CONCURRENT"
COMPUTE_ENV = "SENET_VIZ_COMPUTE"
# Entries kept per kind, for the whole process (all sessions together); see the module docstring for memory.
RESULT_LIMITS: dict[str, int] = {"run": 16, "analysis": 16, "evaluate": 64, "sweep": 8, "gradcam": 64,
                                 "channel_attr": 128, "channel_maps": 64, "slim": 4,
                                 "latency": 8}
_log = logging.getLogger(__name__)
# torch.nn.Module's hook dicts: a copy gets empty ones (see _Replicas.copy)
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


# ------------------------------------------------------------------------------------------ threads per request


@dataclass(frozen=True)
class ThreadPolicy:
    cores: int  # CPUs this process may use
    threads: int  # torch intra-op threads per request
    concurrent: int  # requests computing at once (worker threads)
    processes: bool = False  # network passes in worker processes (SENET_VIZ_COMPUTE=processes)


def thread_policy(env: Mapping[str, str] | None = None, cores: int | None = None) -> ThreadPolicy:
    """The policy ``SENET_VIZ_TORCH_THREADS``, ``SENET_VIZ_MAX_CONCURRENT`` and ``SENET_VIZ_COMPUTE`` ask for
    (module docstring)."""
    env = os.environ if env is None else env
    cores = cores or usable_cores()
    threads = env_int(THREADS_ENV, max(1, cores // 2), env)
    compute = env.get(COMPUTE_ENV, "threads").strip().lower() or "threads"
    if compute not in ("threads", "processes"):
        _log.warning("%s=%r is neither 'threads' nor 'processes'; using threads", COMPUTE_ENV, compute)
        compute = "threads"
    return ThreadPolicy(cores, threads, env_int(CONCURRENT_ENV, max(1, cores // threads), env),
                        processes=compute == "processes")


# ------------------------------------------------------------------------------------------ model copies


class _Replicas:
    """The cached model and copies of it for concurrent requests, each used by one request at a time.

    Holds no reference to the cached model (each request passes it in), so when the model cache drops a model,
    its copies go with it (see :meth:`Engine.model`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # models in all, the cached one included
        self.primary_free = True
        self.copies: list[LoadedModel] = []  # copies not in use
        self.made = 0
        self.cond = threading.Condition()

    @contextmanager
    def take(self, loaded: LoadedModel) -> Iterator[LoadedModel]:
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
                model = self.copy(loaded)
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
    def copy(loaded: LoadedModel) -> LoadedModel:
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


# ------------------------------------------------------------------------------------------ workers


_worker_streams = threading.local()
# Model-ready pixels shared by every request: the Remove page's three passes (full, ablated, retrained twin) and
# other pages over the same images decode each image once (SENET_VIZ_PIXELS_MB, read at import; the default
# 256 MB holds ~1,700 ImageNet crops, every upload-sized set).
PIXELS = PixelCache(budget_bytes("SENET_VIZ_PIXELS_MB"))


def _in_worker(job: Callable[[], None]) -> None:
    """Run ``job`` on this worker thread's own CUDA stream where there is a GPU: PyTorch's default stream is one
    per GPU for every thread, so two requests' kernels would otherwise queue behind each other."""
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
                                   else budget_bytes("SENET_VIZ_RESULTS_MB"))
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

    def in_process(self, job: Callable[..., T], *args: Any, progress: ProgressFn | None = None,
                   cancel: Callable[[], bool] | None = None) -> T:
        """``job(*args, board, token)`` in a worker process (see :mod:`ui.jobs`), its progress relayed to
        ``progress``; called from a worker thread, which waits for it. Once ``cancel()`` is True the board's
        ``(token, "cancel")`` entry tells the job to stop (a job that reads it: :func:`ui.jobs.cancel_flag`)."""
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
                    if cancel is not None and progress is not None and cancel():
                        self._board[(token, "cancel")] = True
        finally:
            if progress is not None:
                self._board.pop(token, None)
                self._board.pop((token, "cancel"), None)

    def submit(self, job: Callable[[], None]) -> None:
        self.pool.submit(_in_worker, job)

    @contextmanager
    def model(self, loaded: LoadedModel) -> Iterator[LoadedModel]:
        """``loaded`` or an identical copy of it that no other request is using."""
        key = id(loaded.model)
        with self._replicas_guard:
            pool = self._replicas.get(key)
            if pool is None:
                pool = self._replicas[key] = _Replicas(self._replica_limit(loaded))
                weakref.finalize(loaded.model, self._forget, key)
        with pool.take(loaded) as model:
            yield model

    def _replica_limit(self, loaded: LoadedModel) -> int:
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
    import plotly.io as pio

    pio.templates.default = "plotly_white"  # every figure of the app's: set once, not copied into each (plots.common)
    # What the imports made (torch, timm, plotly, pandas: most of the process's objects) lives as long as the server:
    # moved out of the collector's reach, so that a full collection walks only what the sessions made since.
    gc.collect()
    gc.freeze()
    collector.install()  # and what they make later is collected while the server is idle, not during a click
    policy = thread_policy()
    _log.info("senet-viz: %d torch thread(s) per request, %d request(s) at once, %d core(s)", policy.threads,
              policy.concurrent, policy.cores)
    return Engine(policy)
