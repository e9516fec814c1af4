"""The project's one least-recently-used cache, :class:`LRU`, bounded in entries, in bytes or both, and
:func:`value_bytes`, the size estimate behind byte budgets.

Every bounded memo uses it: decoded pixels (:class:`senet_viz.inference.pipeline.PixelCache`), remembered folder
walks (:mod:`senet_viz.data.sources`), the app's results, bundles and per-process models (ui/). Plain Python: it
imports neither torch nor pandas (:func:`value_bytes` recognises their objects only when they are loaded).
"""

from __future__ import annotations

import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING: Any = object()


# Counted by their own size only: scalars, and classes, modules, functions and threads (held elsewhere anyway).
_LEAVES = (str, bytes, bytearray, int, float, bool, type(None), type, types.ModuleType, types.BuiltinFunctionType,
           types.FunctionType, threading.Thread)


def _loaded(module: str, *attrs: str) -> Any:
    """``module.attr...`` when ``module`` is already imported (an object of it can only exist then), else None."""
    obj = sys.modules.get(module)
    for attr in attrs:
        obj = getattr(obj, attr, None)
    return obj


def value_bytes(value: Any, _seen: set[int] | None = None, _depth: int = 0) -> int:
    """An estimate of the memory ``value`` holds, for byte budgets: arrays' ``nbytes``, tensors' elements, a
    DataFrame's ``memory_usage(deep=True)``, a module's parameters and buffers, and containers, dataclasses and
    plain objects (a ``Result``, ``GateStats``, an ``Analysis``) summed over what they hold, each object counted
    once."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    ndarray, tensor, module = _loaded("numpy", "ndarray"), _loaded("torch", "Tensor"), _loaded("torch", "nn", "Module")
    frame, series, index = (_loaded("pandas", name) for name in ("DataFrame", "Series", "Index"))
    if ndarray is not None and isinstance(value, ndarray):
        return int(value.nbytes)
    if tensor is not None and isinstance(value, tensor):
        return 0 if value.is_meta else value.numel() * value.element_size()
    if frame is not None and isinstance(value, frame | series | index):
        usage = value.memory_usage(deep=True)  # per column for a DataFrame
        return int(usage.sum()) if isinstance(value, frame) else int(usage)
    if module is not None and isinstance(value, module):
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


class LRU(Generic[K, V]):
    """A thread-safe memo that drops the least recently used entries beyond ``limit`` entries or ``max_bytes``
    bytes (sizes by ``sizer``, :func:`value_bytes` by default; either bound may be None, not both).

    :meth:`get` is a use (the key becomes the most recently used) and counts :attr:`hits` / :attr:`misses`;
    :meth:`put` stores as the most recently used and evicts past the bounds. A value larger than ``max_bytes`` by
    itself is not kept (``put`` returns False), unless ``keep_newest``: then the newest entry always stays, alone
    if need be (a cache whose newest entry is needed right away, such as a folder walk). The bounds are plain
    attributes: a new bound applies from the next :meth:`put` or :meth:`trim`.
    """

    def __init__(self, limit: int | None = None, max_bytes: int | None = None,
                 sizer: Callable[[V], int] | None = None, *, keep_newest: bool = False) -> None:
        if limit is None and max_bytes is None:
            raise ValueError("an LRU is bounded in entries (limit) or bytes (max_bytes)")
        if limit is not None and limit < 1:
            raise ValueError(f"an LRU memo holds at least one entry, not {limit}")
        self.limit = limit
        self.max_bytes = max_bytes
        self.keep_newest = keep_newest
        self.bytes = 0  # what the entries hold, by sizer (0 without max_bytes)
        self.hits = self.misses = 0
        self._sizer = sizer or value_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:  # not a use
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def get(self, key: K, default: Any = None) -> Any:
        """The value of ``key`` (a use: it becomes the most recently used), or ``default``."""
        with self._lock:
            entry = self._entries.get(key, _MISSING)
            if entry is _MISSING:
                self.misses += 1
                return default
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def peek(self, key: K, default: Any = None) -> Any:
        """The value of ``key`` without making it a use, or ``default``."""
        with self._lock:
            entry = self._entries.get(key, _MISSING)
            return default if entry is _MISSING else entry[0]

    def put(self, key: K, value: V, size: int | None = None) -> bool:
        """Store ``value`` as the most recently used (``size``: its bytes, else ``sizer(value)``, measured outside
        the lock) and evict past the bounds. Putting a key again replaces it and measures it again. Returns False
        (and keeps nothing under ``key``) for a value larger than ``max_bytes`` by itself, unless ``keep_newest``."""
        if size is None:
            size = self._sizer(value) if self.max_bytes is not None else 0
        with self._lock:
            self._pop(key)
            if self.max_bytes is not None and size > self.max_bytes and not self.keep_newest:
                return False
            self._entries[key] = (value, size)
            self.bytes += size
            self._trim()
            return key in self._entries

    def pop(self, key: K, default: Any = None) -> Any:
        with self._lock:
            entry = self._pop(key)
            return default if entry is None else entry[0]

    def _pop(self, key: K) -> tuple[V, int] | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1]
        return entry

    def trim(self, measure: bool = False) -> None:
        """Evict the least recently used entries beyond the bounds (after a bound was lowered); with ``measure``,
        size every entry again first (values that grew in place, e.g. a folder walk that gained a listing)."""
        with self._lock:
            if measure and self.max_bytes is not None:
                for key, (value, _) in list(self._entries.items()):
                    self._entries[key] = (value, self._sizer(value))
                self.bytes = sum(size for _, size in self._entries.values())
            self._trim()

    def _trim(self) -> None:
        keep = 1 if self.keep_newest else 0
        while len(self._entries) > keep and (
                (self.limit is not None and len(self._entries) > self.limit)
                or (self.max_bytes is not None and self.bytes > self.max_bytes)):
            self._pop(next(iter(self._entries)))

    def keys(self) -> list[K]:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def items(self) -> list[tuple[K, V]]:
        """(key, value) pairs, least recently used first."""
        with self._lock:
            return [(k, v) for k, (v, _) in self._entries.items()]

    def values(self) -> list[V]:
        """Values, least recently used first."""
        with self._lock:
            return [v for v, _ in self._entries.values()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0
