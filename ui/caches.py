"""The result cache the server's engine shares between sessions: :class:`ResultCache` (results by kind and content
key, computed once however many sessions ask at the same moment, bounded per kind in entries and over all kinds in
bytes), built on the project's one :class:`senet_viz.lru.LRU`. Plain Python: no Streamlit, no model code."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from senet_viz.inference.run import ProgressFn
from senet_viz.lru import LRU, value_bytes

_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Flight:
    """One computation under way: its progress, then its value or its error (``done`` is set after either).

    A flight is the computation's progress function (``flight(done, total)``) and its cancel token: a computation
    that asks :meth:`cancelled` between its batches stops once :meth:`ResultCache.cancel` was called while no
    session waited for it."""

    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    progress: tuple[int, int] | None = None  # (done, total) as the computation reports it
    value: Any = None
    error: BaseException | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    waiters: dict[Hashable, int] = field(default_factory=dict)  # who waits for it now: count per waiter (the lock)
    first: tuple[float, int] | None = None  # (monotonic time, done) of the first report: the estimate's origin
    last: tuple[float, int] | None = None  # (monotonic time, done) of the latest report that advanced

    def report(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        if self.last is None or done != self.last[1]:
            self.last = (now, done)
        self.progress = (done, total)

    __call__ = report  # the flight is the progress function it hands its computation

    def cancelled(self) -> bool:
        """True once the flight was cancelled: the computation should stop at its next check."""
        return self.cancel.is_set()

    def seconds_left(self, now: float | None = None) -> float | None:
        """Time left at the rate since the first report (None before two reports that advanced)."""
        if self.first is None or self.last is None or self.progress is None:
            return None
        return seconds_left(self.first, self.last, self.progress[1], time.monotonic() if now is None else now)


def seconds_left(first: tuple[float, int], last: tuple[float, int], total: int, now: float) -> float | None:
    """Seconds left from two reports ``(time, done)`` of a computation of ``total`` units: the rate between them,
    and the time since the last report counted as spent (so a slow batch raises the estimate while it runs).
    None before the work has advanced since the first report."""
    (t0, d0), (t1, d1) = first, last
    if d1 <= d0 or t1 <= t0:
        return None
    rate = (d1 - d0) / (t1 - t0)
    return max(0.0, (total - d1) / rate - (now - t1))


Submit = Callable[[Callable[[], None]], object]  # runs a job now or later, on some thread


def run_inline(job: Callable[[], None]) -> None:
    """Run ``job`` now, on this thread (the default way :meth:`ResultCache.fetch` runs a computation)."""
    job()


_MISSING = object()


class ResultCache:
    """Process-wide, thread-safe LRU of computed results, bounded per kind (``limits``: entries) and in all
    (``max_bytes``: bytes by ``sizer``, :func:`value_bytes` by default; None: no byte bound).

    A hit moves the entry to the end (most recently used); inserting beyond the kind's limit evicts that kind's
    least recently used entry, and beyond ``max_bytes`` the least recently used entries of any kind. A value larger
    than ``max_bytes`` by itself is returned to its askers but not kept. A miss starts one :class:`Flight` per key:
    whoever asks for a key while it is being computed waits for that flight instead of computing it again. A
    computation that raises is not cached: every waiter gets the error, and the next request computes again.
    """

    def __init__(self, limits: Mapping[str, int], max_bytes: int | None = None,
                 sizer: Callable[[Any], int] | None = None) -> None:
        self.limits = dict(limits)
        self.max_bytes = max_bytes
        self._sizer = sizer or value_bytes
        # All kinds in one LRU (least recently used first), so the byte bound evicts across kinds; no kind holds
        # more than its limit, so the sum of the limits bounds the entries.
        self._entries: LRU[tuple[str, Hashable], Any] = LRU(max(1, sum(self.limits.values())), max_bytes)
        self._flights: dict[tuple[str, Hashable], Flight] = {}
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """What the kept results hold, by ``sizer`` (0 without ``max_bytes``)."""
        return self._entries.bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every finished result (computations in flight finish and are stored as usual)."""
        self._entries.clear()

    def keys(self, kind: str) -> list[Hashable]:
        """Keys of ``kind``, least recently used first."""
        self.limits[kind]  # noqa: B018 - an unknown kind is a KeyError, as in fetch
        return [key for k, key in self._entries.keys() if k == kind]

    def _get(self, kind: str, key: Hashable) -> Any:
        self.limits[kind]  # noqa: B018 - an unknown kind is a KeyError
        return self._entries.get((kind, key), _MISSING)

    def _store(self, kind: str, key: Hashable, value: Any, size: int) -> None:
        if not self._entries.put((kind, key), value, size):
            _log.info("a %s result of %d MiB is larger than the whole cache; served, not kept", kind, size >> 20)
            return
        mine = self.keys(kind)
        for old in mine[:len(mine) - self.limits[kind]]:  # the kind's least recently used beyond its limit
            self._entries.pop((kind, old))

    def peek(self, kind: str, key: Hashable) -> tuple[bool, Any]:
        """(found, value) without computing; a hit counts as a use."""
        with self._lock:
            value = self._get(kind, key)
        return (False, None) if value is _MISSING else (True, value)

    def fetch(self, kind: str, key: Hashable, compute: Callable[[ProgressFn], T], *, submit: Submit = run_inline,
              wait: Callable[[Flight], None] | None = None, waiter: Hashable = None) -> T:
        """The value of ``key``: cached, or computed once by ``compute(progress)`` run through ``submit``.

        ``wait(flight)`` is called on a miss, by the thread that started the flight and by any thread that found
        it under way, to show ``flight.progress`` until ``flight.done`` is set (the value is awaited either way).
        ``waiter`` names who waits (a browser session), for :meth:`cancel`.
        """
        with self._lock:
            value = self._get(kind, key)
            if value is not _MISSING:
                return value
            flight = self._flights.get((kind, key))
            start = flight is None or flight.cancelled()  # a cancelled flight ends soon: a new request starts anew
            if start:
                flight = self._flights[(kind, key)] = Flight()
            flight.waiters[waiter] = flight.waiters.get(waiter, 0) + 1
        try:
            if start:
                try:
                    submit(lambda: self._compute(kind, key, compute, flight))
                except BaseException as exc:  # e.g. the pool is shut down: no waiter may hang on this flight
                    self._finish(kind, key, flight, None, exc)
                    raise
            if wait is not None:
                wait(flight)
            flight.done.wait()
        finally:  # also when the session's script run is interrupted (a rerun) while it waits
            with self._lock:
                flight.waiters[waiter] -= 1
                if not flight.waiters[waiter]:
                    del flight.waiters[waiter]
        if flight.error is not None:
            raise flight.error
        return flight.value

    def cancel(self, kind: str, key: Hashable, waiter: Hashable = None) -> bool:
        """Cancel the computation of ``key`` unless someone other than ``waiter`` waits for it now (``waiter``'s
        own waits do not count: a session's interrupted script run may still be leaving its wait when its next run
        cancels); True when it was cancelled. The computation stops at its next check of :meth:`Flight.cancelled`
        and raises; nothing is cached, and a later request computes again."""
        with self._lock:
            flight = self._flights.get((kind, key))
            if flight is None or any(w != waiter for w in flight.waiters):
                return False
            flight.cancel.set()
            return True

    def _compute(self, kind: str, key: Hashable, compute: Callable[[ProgressFn], Any], flight: Flight) -> None:
        flight.started = True
        try:
            value, error = compute(flight), None
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter, raised in their threads
            value, error = None, exc
        self._finish(kind, key, flight, value, error)

    def _finish(self, kind: str, key: Hashable, flight: Flight, value: Any, error: BaseException | None) -> None:
        size = 0
        if error is None and self.max_bytes is not None:
            try:
                size = self._sizer(value)  # outside the lock: walking a large result takes a moment
            except Exception as exc:  # noqa: BLE001 - a value that cannot be measured is served, not kept
                _log.warning("cannot size a %s result (%s); not kept", kind, exc)
                size = self.max_bytes + 1
        with self._lock:  # stored and the flight retired together: a new request sees one or the other
            if error is None:
                self._store(kind, key, value, size)
            if self._flights.get((kind, key)) is flight:  # not a newer flight that replaced a cancelled one
                del self._flights[(kind, key)]
        flight.value, flight.error = value, error
        flight.done.set()
