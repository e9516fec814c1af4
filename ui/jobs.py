"""The app's network passes as plain functions of plain arguments, for compute processes.

With ``SENET_VIZ_COMPUTE=processes`` (see ui/engine.py) the passes run in worker processes instead of threads of
the server: every process has its own Python interpreter, so two sessions' per-image Python work (decoding small
images, hooks, bookkeeping) runs in parallel instead of taking turns on the server's one GIL. Each function here
takes a :class:`ModelRef` (how the server loaded the model), the images (an :class:`~senet_viz.data.sources.ImageSet`,
picklable, uploads included) and returns what the thread version returns; the process keeps its own bounded
cache of loaded models and of decoded pixels. This module imports no streamlit: a worker process stays small.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import NamedTuple

import pandas as pd
import torch

from senet_viz.analysis import ablation
from senet_viz.analysis.stats import GateStats
from senet_viz.data.sources import ImageSet
from senet_viz.inference.pipeline import PixelCache
from senet_viz.inference.precision import ForwardCounter
from senet_viz.inference.run import Result, RunOptions, run_model
from senet_viz.lru import LRU
from senet_viz.models import model_files, zoo
from senet_viz.models.loaded import LoadedModel
from ui.serving import budget_bytes

MODELS_PER_PROCESS = 3  # each worker keeps its last few models; the server's own cache is bounded by bytes


class ModelRef(NamedTuple):
    """The arguments the server loaded a model with (:func:`senet_viz.models.zoo.load_model`)."""

    name: str
    weights: str | None
    device: str
    options: model_files.ModelFileOptions | None = None  # a model file's input size, class names, normalisation


_models: LRU[ModelRef, LoadedModel] = LRU(MODELS_PER_PROCESS)
_pixels = PixelCache(budget_bytes("SENET_VIZ_PIXELS_MB"))
#: Images this process sent through a network for the app (every pass of the app is given it as its counter).
FORWARDS = ForwardCounter()


_main_guard = threading.Lock()


@contextmanager
def bare_main() -> Iterator[None]:
    """Start worker processes inside this block: they do not run the app's script again.

    A spawned process re-runs the parent's ``__main__`` from its file (multiprocessing's spawn preparation reads
    ``sys.modules["__main__"].__file__``), and Streamlit installs app.py as ``__main__`` while it runs a page: each
    worker would run the whole app in "bare mode" (hundreds of warnings, the sidebar's work, a model load). While
    the pool starts its processes, ``__main__`` is an empty module, so they start from this module's imports
    only."""
    with _main_guard:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def main_script() -> str | None:
    """The parent script this worker process ran at start (``__mp_main__``'s file), None when it ran none."""
    return getattr(sys.modules.get("__mp_main__"), "__file__", None)


def init_worker(threads: int) -> None:
    """Process initializer: the per-request torch thread cap of the server's policy."""
    torch.set_num_threads(threads)


def ready() -> int:
    """A no-op the server submits once per worker when it starts the pool, so every process is started (and has
    imported torch) before the first request needs it."""
    return torch.get_num_threads()


def model(ref: ModelRef) -> LoadedModel:
    """The model ``ref`` names, loaded once per process (least recently used out beyond MODELS_PER_PROCESS)."""
    loaded = _models.get(ref)
    if loaded is not None:
        return loaded
    # as the server loads (ui.model_cache.get_model): never a download, never past the models budget
    loaded = zoo.load_model(ref.name, weights=ref.weights, device=ref.device, options=ref.options, download=False,
                            max_param_bytes=budget_bytes("SENET_VIZ_MODELS_MB"))
    _models.put(ref, loaded)
    return loaded


def forward_count() -> int:
    """Images this process sent through a network for the app so far: tests read it to see whether a result was
    shared or computed again, and in which process."""
    return FORWARDS.count


def _reporter(board: MutableMapping | None, token: str) -> Callable[[int, int], None] | None:
    """Progress written to the server's shared board (a multiprocessing manager dict) under ``token``."""
    if board is None:
        return None

    def report(done: int, total: int) -> None:
        board[token] = (done, total)

    return report


def cancel_flag(board: MutableMapping | None, token: str) -> Callable[[], bool] | None:
    """True once the server asked the job ``token`` to stop (:meth:`ui.engine.Engine.in_process`'s ``cancel``)."""
    if board is None:
        return None
    return lambda: bool(board.get((token, "cancel"), False))


def streamed_run(ref: ModelRef, images: ImageSet, class_names: list[str], keep_gates: bool,
                 board: MutableMapping | None = None, token: str = "") -> tuple[Result, GateStats]:
    """The server's streamed pass: predictions, logits, gate statistics by label, per-image gates if kept."""
    loaded = model(ref)
    stats = GateStats.for_blocks(loaded.name, loaded.blocks, class_names)
    options = RunOptions(batch_size=32, keep_gates=keep_gates, progress=_reporter(board, token),
                         on_gates=stats.update, counter=FORWARDS, keep_cuts=True)
    return run_model(loaded, images, None, options, pixel_cache=_pixels), stats


def evaluate(ref: ModelRef, images: ImageSet, block_names: list[str], mode: str, full: Result | None,
             board: MutableMapping | None = None, token: str = "") -> ablation.AblationResult:
    """:func:`senet_viz.analysis.ablation.evaluate` of the blocks named ``block_names``."""
    loaded = model(ref)
    blocks = [b for b in loaded.blocks if b.name in set(block_names)]
    return ablation.evaluate(loaded, images, blocks, mode=mode, full=full, pixel_cache=_pixels, counter=FORWARDS)


def sweep(ref: ModelRef, images: ImageSet, modes: tuple[str, ...], kinds: tuple[str, ...],
          board: MutableMapping | None = None, token: str = "") -> pd.DataFrame:
    """:func:`senet_viz.analysis.ablation.sweep` over the configurations of ``kinds``."""
    loaded = model(ref)
    configs = [c for c in ablation.sweep_configs(loaded.blocks) if c[0] in kinds]
    return ablation.sweep(loaded, images, modes, configs, progress=_reporter(board, token), pixel_cache=_pixels,
                          counter=FORWARDS, cancel=cancel_flag(board, token))
