"""Full garbage collections while the server is idle, not in the middle of a click.

Python's collector walks every tracked object of the oldest generation when that generation has grown by a quarter:
with an analysis of 900 images, a few models and their figures in memory, that took 130-300 ms, about ten times in
two minutes of clicking (benchmarks/interactions.py), and whichever script run it fell into answered that much
later. ``ui.engine`` already freezes what the imports made; :func:`install` also hands the oldest generation's
collections to :class:`IdleCollector`: a thread that runs ``gc.collect()`` once no script has run for
:data:`IDLE_S`, at most every :data:`MIN_INTERVAL_S`, and at the latest :data:`MAX_INTERVAL_S` after the last one
while sessions keep the server busy (memory of cyclic garbage stays bounded). The young generations are collected
by Python as always (they are small). Nothing to collect after no activity: an unused server does not wake up.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator

IDLE_S = 2.0
MIN_INTERVAL_S = 10.0
MAX_INTERVAL_S = 120.0
#: Python's threshold of the oldest generation (collections of the middle one before a full one): out of reach
GEN2_OFF = 1_000_000
_log = logging.getLogger(__name__)


class IdleCollector:
    """When to collect: :meth:`activity` wraps each script run; :meth:`step` collects if due (see the module)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, collect: Callable[[], object] = gc.collect) -> None:
        self._clock, self._collect = clock, collect
        self._lock = threading.Lock()
        self.running = 0
        self.last_activity = self.last_collect = clock()
        self.collections = 0

    @contextlib.contextmanager
    def activity(self) -> Iterator[None]:
        with self._lock:
            self.running += 1
            self.last_activity = self._clock()
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
                self.last_activity = self._clock()

    def due(self) -> bool:
        now = self._clock()
        with self._lock:
            if self.last_activity <= self.last_collect and not self.running:
                return False  # nothing happened since the last collection
            since = now - self.last_collect
            if since >= MAX_INTERVAL_S:
                return True
            return not self.running and now - self.last_activity >= IDLE_S and since >= MIN_INTERVAL_S

    def step(self) -> bool:
        """Collect if :meth:`due`; whether it did."""
        if not self.due():
            return False
        self._collect()
        with self._lock:
            self.last_collect = self._clock()
            self.collections += 1
        return True


_collector: IdleCollector | None = None
_install_guard = threading.Lock()


def collector() -> IdleCollector | None:
    """The process's collector once :func:`install` ran, else None."""
    return _collector


@contextlib.contextmanager
def script_run() -> Iterator[None]:
    """Wraps a script run (app.py): the collector waits for it to end and for the server to stay idle."""
    if _collector is None:
        yield
        return
    with _collector.activity():
        yield


def install(poll_s: float = 0.5) -> IdleCollector:
    """Turn Python's own full collections off and start the idle collector's thread (once per process)."""
    global _collector
    with _install_guard:
        if _collector is None:
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, GEN2_OFF)
            _collector = IdleCollector()
            threading.Thread(target=_loop, args=(_collector, poll_s), name="senet-viz-idle-gc", daemon=True).start()
        return _collector


def _loop(idle: IdleCollector, poll_s: float) -> None:
    while True:
        time.sleep(poll_s)
        try:
            idle.step()
        except Exception:  # noqa: BLE001 - a failed collection must not end the thread
            _log.warning("senet-viz: idle garbage collection failed", exc_info=True)
