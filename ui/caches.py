"""The bounded caches the server's engine shares between sessions: :class:`LRU` (a memo bounded in entries and
bytes) and :class:`ResultCache` (results by kind and content key, computed once however many sessions ask at the
same moment, bounded per kind in entries and over all kinds in bytes), with :func:`value_bytes`, the size
estimate behind every byte budget. Plain Python: no Streamlit, no model code."""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from senet_viz.inference.run import ProgressFn

_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Flight:
    """One computation under way: its progress, then its value or its error (``done`` is set after either)."""

    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    progress: tuple[int, int] | None = None  # (done, total) as the computation reports it
    value: Any = None
    error: BaseException | None = None

    def report(self, done: int, total: int) -> None:
        self.progress = (done, total)


Submit = Callable[[Callable[[], None]], object]  # runs a job now or later, on some thread


def run_inline(job: Callable[[], None]) -> None:
    """Run ``job`` now, on this thread (the default way :meth:`ResultCache.fetch` runs a computation)."""
    job()


_MISSING = object()
# Counted by their own size only: scalars, and classes, modules, functions and threads (held elsewhere anyway).
_LEAVES = (str, bytes, bytearray, int, float, bool, type(None), type, type(sys), type(len), type(run_inline),
           threading.Thread)


def value_bytes(value: Any, _seen: set[int] | None = None, _depth: int = 0) -> int:
    """An estimate of the memory ``value`` holds, for byte budgets: arrays' ``nbytes``, tensors' elements, a
    DataFrame's ``memory_usage(deep=True)``, a module's parameters and buffers, and containers, dataclasses and
    plain objects (a :class:`Result`, :class:`GateStats`, an :class:`Analysis`) summed over what they hold, each
    object counted once."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, torch.Tensor):
        return 0 if value.is_meta else value.numel() * value.element_size()
    if isinstance(value, pd.DataFrame | pd.Series):
        return int(np.sum(value.memory_usage(deep=True)))
    if isinstance(value, pd.Index):
        return int(value.memory_usage(deep=True))
    if isinstance(value, torch.nn.Module):
        return sum(value_bytes(t, seen) for t in (*value.parameters(), *value.buffers()))
    if isinstance(value, _LEAVES) or _depth > 12:
        return sys.getsizeof(value)
    size, depth = sys.getsizeof(value), _depth + 1
    if isinstance(value, Mapping):
        return size + sum(value_bytes(k, seen, depth) + value_bytes(v, seen, depth) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return size + sum(value_bytes(v, seen, depth) for v in value)
    if is_dataclass(value):
        return size + sum(value_bytes(getattr(value, f.name, None), seen, depth) for f in fields(value))
    if hasattr(value, "__dict__"):
        return size + sum(value_bytes(v, seen, depth) for v in vars(value).values())
    return size


class LRU:
    """A small bounded memo keyed by content keys: a hit (:meth:`get`) moves the key to the end, :meth:`put`
    beyond ``limit`` entries (or ``max_bytes``, sizes by ``sizer``, :func:`value_bytes` by default) drops the least
    recently used first. Not locked: :class:`ResultCache` holds its own lock, and a session's memo
    (:func:`session_memo`) is used by that session's script only."""

    def __init__(self, limit: int, max_bytes: int | None = None, sizer: Callable[[Any], int] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"an LRU memo holds at least one entry, not {limit}")
        self.limit = limit
        self.max_bytes = max_bytes
        self.bytes = 0  # what the entries hold, when max_bytes is set
        self._sizer = sizer or value_bytes
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:  # not a use
        return key in self._entries

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value of ``key`` (a use: it becomes the most recently used), or ``default``."""
        if key not in self._entries:
            return default
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: Hashable, value: Any) -> bool:
        """Store ``value`` as the most recently used; evict the least recently used past the limits. Returns False
        (and keeps nothing under ``key``) for a value larger than ``max_bytes`` by itself."""
        size = self._sizer(value) if self.max_bytes is not None else 0
        self.pop(key)
        if self.max_bytes is not None and size > self.max_bytes:
            return False
        self._entries[key], self._sizes[key] = value, size
        self.bytes += size
        while len(self._entries) > self.limit or (self.max_bytes is not None and self.bytes > self.max_bytes):
            self.pop(next(iter(self._entries)))
        return True

    def pop(self, key: Hashable, default: Any = None) -> Any:
        if key not in self._entries:
            return default
        self.bytes -= self._sizes.pop(key)
        return self._entries.pop(key)

    def keys(self) -> list[Hashable]:
        """Keys, least recently used first."""
        return list(self._entries)

    def items(self) -> list[tuple[Hashable, Any]]:
        """(key, value) pairs, least recently used first."""
        return list(self._entries.items())

    def clear(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self.bytes = 0


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
        self.bytes = 0
        self._sizer = sizer or value_bytes
        self._entries: OrderedDict[tuple[str, Hashable], tuple[Any, int]] = OrderedDict()  # all kinds, LRU first
        self._counts = dict.fromkeys(self.limits, 0)
        self._flights: dict[tuple[str, Hashable], Flight] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Forget every finished result (computations in flight finish and are stored as usual)."""
        with self._lock:
            self._entries.clear()
            self._counts = dict.fromkeys(self.limits, 0)
            self.bytes = 0

    def keys(self, kind: str) -> list[Hashable]:
        """Keys of ``kind``, least recently used first."""
        self.limits[kind]  # noqa: B018 - an unknown kind is a KeyError, as in fetch
        with self._lock:
            return [key for k, key in self._entries if k == kind]

    def _get(self, kind: str, key: Hashable) -> Any:
        self.limits[kind]  # noqa: B018 - an unknown kind is a KeyError
        entry = self._entries.get((kind, key))
        if entry is None:
            return _MISSING
        self._entries.move_to_end((kind, key))
        return entry[0]

    def _drop(self, item: tuple[str, Hashable]) -> None:
        _, size = self._entries.pop(item)
        self._counts[item[0]] -= 1
        self.bytes -= size

    def _store(self, kind: str, key: Hashable, value: Any, size: int) -> None:
        if (kind, key) in self._entries:
            self._drop((kind, key))
        if self.max_bytes is not None and size > self.max_bytes:
            _log.info("a %s result of %d MiB is larger than the whole cache; served, not kept", kind, size >> 20)
            return
        self._entries[(kind, key)] = (value, size)
        self._counts[kind] += 1
        self.bytes += size
        if self._counts[kind] > self.limits[kind]:
            self._drop(next(item for item in self._entries if item[0] == kind))
        while self.max_bytes is not None and self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def peek(self, kind: str, key: Hashable) -> tuple[bool, Any]:
        """(found, value) without computing; a hit counts as a use."""
        with self._lock:
            value = self._get(kind, key)
        return (False, None) if value is _MISSING else (True, value)

    def fetch(self, kind: str, key: Hashable, compute: Callable[[ProgressFn], T], *, submit: Submit = run_inline,
              wait: Callable[[Flight], None] | None = None) -> T:
        """The value of ``key``: cached, or computed once by ``compute(progress)`` run through ``submit``.

        ``wait(flight)`` is called on a miss, by the thread that started the flight and by any thread that found
        it under way, to show ``flight.progress`` until ``flight.done`` is set (the value is awaited either way).
        """
        with self._lock:
            value = self._get(kind, key)
            if value is not _MISSING:
                return value
            flight = self._flights.get((kind, key))
            start = flight is None
            if start:
                flight = self._flights[(kind, key)] = Flight()
        if start:
            try:
                submit(lambda: self._compute(kind, key, compute, flight))
            except BaseException as exc:  # e.g. the pool is shut down: no waiter may hang on this flight
                self._finish(kind, key, flight, None, exc)
                raise
        if wait is not None:
            wait(flight)
        flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.value

    def _compute(self, kind: str, key: Hashable, compute: Callable[[ProgressFn], Any], flight: Flight) -> None:
        flight.started = True
        try:
            value, error = compute(flight.report), None
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
            del self._flights[(kind, key)]
        flight.value, flight.error = value, error
        flight.done.set()
