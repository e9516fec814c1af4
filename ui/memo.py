"""The one memo of the pages' results (:func:`shared`), the waits a session shows meanwhile, and a session's own
memo (:func:`session_memo`).

Results (network passes, statistics, ablations, sweeps, Grad-CAMs, channel attributions) are shared by every
session of the process: one :class:`~ui.caches.ResultCache` in the :func:`~ui.engine.engine`, keyed by content
(:mod:`ui.keys`: the model, its weights digest, the device and the content of the images), so a second tab or a
second user asking for the same thing gets it without a forward pass, and two sessions asking at the same moment
compute it once (the second waits for the first). Shared results are read-only (their arrays are not writeable).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import streamlit as st

from senet_viz.inference.run import ProgressFn
from senet_viz.lru import LRU
from senet_viz.models.loaded import LoadedModel
from ui.caches import Flight, run_inline
from ui.engine import engine

T = TypeVar("T")


@dataclass(frozen=True)
class Task:
    """What a computation of :func:`shared` is given, whatever it asked for."""

    progress: ProgressFn  # report (done, total): the waiting sessions' progress bars show it
    model: LoadedModel | None = None  # a copy of ``shared(model=...)`` no other request is using; None without it
    needed: Any = None  # what ``shared(needs=...)`` returned; None without it


def shared(kind: str, key: Hashable, compute: Callable[[Task], T], wait: Callable[[Flight], None] | None = None, *,
           model: LoadedModel | None = None, needs: Callable[[], Any] | None = None, on_worker: bool = True) -> T:
    """``compute(task)``'s value, shared by every session in the engine's result cache under ``(kind, key)``
    (``key``: content keys, see :mod:`ui.keys`): computed once on a miss, on a worker thread (``on_worker=False``:
    on this session's thread, for work without a network), while this session waits behind ``wait(flight)`` (a
    progress bar, a spinner).

    ``task.model`` is a copy of ``model`` that no other request is using (see :meth:`ui.engine.Engine.model`);
    ``task.needed`` is what ``needs()`` returns, asked for on this session's thread only on a miss (after a first
    look, so a hit never asks for it and a result whose inputs were evicted is still served), e.g. the shared full
    pass an ablation reuses.
    """
    eng = engine()  # here, on the session's thread: the computation runs on a worker, outside any script run
    needed = None
    if needs is not None:
        found, value = eng.results.peek(kind, key)
        if found:
            return value
        needed = needs()

    def work(progress: ProgressFn) -> T:
        if model is None:
            return compute(Task(progress, None, needed))
        with eng.model(model) as replica:
            return compute(Task(progress, replica, needed))

    return eng.results.fetch(kind, key, work, submit=eng.submit if on_worker else run_inline, wait=wait)


def progress_wait(text: str, unit: str) -> Callable[[Flight], None]:
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


def spinner_wait(text: str) -> Callable[[Flight], None]:
    """Wait for a flight behind a spinner saying ``text``."""

    def wait(flight: Flight) -> None:
        with st.spinner(text):
            flight.done.wait()

    return wait


def session_memo(name: str, limit: int, max_bytes: int | None = None) -> LRU:
    """This browser session's :class:`LRU` memo ``name`` (made on first use with ``limit`` entries and, if given,
    ``max_bytes``): for what one session keeps for itself (rendered PNGs, figures offered for export), never shared
    with other sessions."""
    memo = st.session_state.get(name)
    if not isinstance(memo, LRU):
        memo = st.session_state[name] = LRU(limit, max_bytes)
    return memo
