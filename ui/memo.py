"""The one memo of the pages' results (:func:`shared`), the waits a session shows meanwhile, and a session's own
memo (:func:`session_memo`).

Results (network passes, statistics, ablations, sweeps, Grad-CAMs, channel attributions) are shared by every
session of the process: one :class:`~ui.caches.ResultCache` in the :func:`~ui.engine.engine`, keyed by content
(:mod:`ui.keys`: the model, its weights digest, the device and the content of the images), so a second tab or a
second user asking for the same thing gets it without a forward pass, and two sessions asking at the same moment
compute it once (the second waits for the first). Shared results are read-only (their arrays are not writeable).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import streamlit as st

from senet_viz.inference.run import ProgressFn
from senet_viz.lru import LRU
from senet_viz.models.loaded import LoadedModel
from ui.caches import Flight, run_inline
from ui.engine import engine

T = TypeVar("T")
_MISSING = object()


@dataclass(frozen=True)
class Task:
    """What a computation of :func:`shared` is given, whatever it asked for."""

    progress: ProgressFn  # report (done, total): the waiting sessions' progress bars show it
    model: LoadedModel | None = None  # a copy of ``shared(model=...)`` no other request is using; None without it
    needed: Any = None  # what ``shared(needs=...)`` returned; None without it
    #: True once the computation was cancelled (:func:`cancel_shared`): ask it between batches and stop
    cancelled: Callable[[], bool] = field(default=lambda: False)


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
        cancelled = getattr(progress, "cancelled", None) or (lambda: False)  # the Flight is both
        if model is None:
            return compute(Task(progress, None, needed, cancelled))
        with eng.model(model) as replica:
            return compute(Task(progress, replica, needed, cancelled))

    return eng.results.fetch(kind, key, work, submit=eng.submit if on_worker else run_inline, wait=wait,
                             waiter=_session_id())


def _session_id() -> str | None:
    """This browser session's id (None outside a script run): who waits for a shared computation."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else None


def cancel_shared(kind: str, key: Hashable) -> bool:
    """Cancel the computation of :func:`shared` ``(kind, key)`` unless another session waits for it (see
    :meth:`ui.caches.ResultCache.cancel`; this session's own interrupted wait does not count); True when it was
    cancelled."""
    return engine().results.cancel(kind, key, waiter=_session_id())


def time_left_text(seconds: float | None) -> str:
    """A rounded estimate: "about 40 s left", "about 3 min left"; "" when unknown."""
    if seconds is None:
        return ""
    if seconds < 10:
        return "a few seconds left"
    if seconds < 90:
        return f"about {int(round(seconds / 5) * 5)} s left"
    return f"about {int(round(seconds / 60))} min left"


def counted_wait(describe: Callable[[int, int], str], refresh_s: float = 0.5) -> Callable[[Flight], None]:
    """Wait for a flight behind a progress bar whose text is ``describe(done, total)`` and the time left (estimated
    from the rate since the computation's first report). The bar is redrawn at least every ``refresh_s``: each
    redraw is where Streamlit stops a run for a rerun, so a button pressed meanwhile (Cancel) is answered within
    that time, not after the next batch."""

    def wait(flight: Flight) -> None:
        bar = st.progress(0.0, text=describe(0, 0))
        try:
            while not flight.done.wait(refresh_s):
                if not flight.started:
                    bar.progress(0.0, text="Waiting for other sessions' computations ...")
                    continue
                done, total = flight.progress or (0, 0)
                left = time_left_text(flight.seconds_left())
                text = describe(done, total) + (f" · {left}" if left else "")
                bar.progress(min(1.0, done / total) if total else 0.0, text=text)
        finally:
            bar.empty()

    return wait


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


_derived: dict[int, LRU] = {}  # by id() of a shared result; an entry goes when its result is collected
_derived_guard = threading.Lock()


def derived(owner: object, key: Hashable, build: Callable[[], T], limit: int = 32) -> T:
    """``build()``, memoised for as long as ``owner`` lives (a shared, read-only result such as an
    :class:`ui.results.Analysis`) under ``key`` (what else the value depends on: the widgets' values), for every
    session: what a page derives from a result (a figure, a table, a caption) is built once per distinct view, so a
    rerun that changes no input of it (another widget, a page switch and back) costs no rebuild. The value is shared:
    never mutate it (a Plotly figure is drawn and offered for export as it is)."""
    with _derived_guard:
        memo = _derived.get(id(owner))
        if memo is None:
            memo = _derived[id(owner)] = LRU(limit)
            weakref.finalize(owner, _derived.pop, id(owner), None)
    found = memo.get(key, _MISSING)
    if found is _MISSING:
        found = build()
        for part in found if isinstance(found, tuple) else (found,):
            _mark_shared_figure(part)
        memo.put(key, found)
    return found


# Figures :func:`derived` built (shared, never mutated): id -> (weak reference, its to_dict() once asked)
_shared_figures: dict[int, list] = {}
_shared_figures_guard = threading.Lock()


def _mark_shared_figure(value: object) -> None:
    from plotly.basedatatypes import BaseFigure

    if isinstance(value, BaseFigure):
        with _shared_figures_guard:
            _shared_figures[id(value)] = [weakref.ref(value), None]
        weakref.finalize(value, _shared_figures.pop, id(value), None)


def shared_figure_dict(fig: object) -> dict | None:
    """``fig.to_dict()`` computed once for a figure :func:`derived` built (it is never mutated, so its dict never
    changes), None for any other figure. Walking a figure into its dict (every array to base64) is what
    ``st.plotly_chart`` spends most of its time on, on every rerun that draws the figure again."""
    entry = _shared_figures.get(id(fig))
    if entry is None or entry[0]() is not fig:
        return None
    if entry[1] is None:
        entry[1] = fig.to_dict()  # two sessions racing here compute the same dict; either is kept
    return entry[1]


def session_memo(name: str, limit: int, max_bytes: int | None = None) -> LRU:
    """This browser session's :class:`LRU` memo ``name`` (made on first use with ``limit`` entries and, if given,
    ``max_bytes``): for what one session keeps for itself (rendered PNGs, figures offered for export), never shared
    with other sessions."""
    memo = st.session_state.get(name)
    if not isinstance(memo, LRU):
        memo = st.session_state[name] = LRU(limit, max_bytes)
    return memo
