"""Opened analysis bundles and their analyses, shared by every session (:func:`open_bundle`,
:func:`bundle_analysis`).

Keyed by the sha256 of the file's bytes (never by its bundle.json, which a doctored file can copy from a genuine
one) and bounded by bytes (``SENET_VIZ_BUNDLES_MB``, estimated from the statistics' arrays), the least recently
used dropped first. A file that cannot be opened is remembered by digest too, so a bomb is not parsed again on
every rerun.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from senet_viz.analysis.bundle import Bundle, BundleError, read_bundle
from senet_viz.lru import LRU
from senet_viz.models.weights import file_sha256
from senet_viz.paths import OutsideRootsError
from ui.results import Analysis
from ui.serving import budget_bytes, server_path

FAILURES = 64  # refused files remembered (digest -> message)
OLD_BUNDLE_NOTE = ("This analysis file holds no chance table (it was written before chance levels were saved): "
                   "chance levels, bands and intervals are unknown. Write it again with `python -m senet_viz stats "
                   "--excitations ... --bundle FILE` to have them.")


@dataclass(frozen=True)
class _Entry:
    bundle: Bundle
    analysis: Analysis | None = None  # kept beside its own bundle (the statistics are shared, the indices small)


def bundles_budget() -> int:
    """The byte budget of opened bundles (``SENET_VIZ_BUNDLES_MB``, read at each call)."""
    return budget_bytes("SENET_VIZ_BUNDLES_MB")


def bundle_bytes(bundle: Bundle) -> int:
    """Memory of an opened bundle: its statistics' arrays, plus its provenance and metrics (parsed JSON: counted
    as 16 times its text, about what small Python objects take)."""
    return bundle.stats.nbytes() + 16 * len(json.dumps([bundle.provenance, bundle.metrics], default=str))


class BundleCache:
    """The bundles every session opened, by content digest (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # bounded by bytes only; a bundle larger than the budget (read within the reader's limit) is kept alone
        self._entries: LRU[str, _Entry] = LRU(max_bytes=bundles_budget(), sizer=self._size, keep_newest=True)
        self._failed: LRU[str, str] = LRU(FAILURES)  # digest -> why it was refused
        self._reading: dict[str, threading.Lock] = {}  # one reader per digest: another session waits for it

    @staticmethod
    def _size(entry: _Entry) -> int:
        size = bundle_bytes(entry.bundle)
        if entry.analysis is not None:
            size += int(entry.analysis.indices.memory_usage(deep=True).sum())
        if entry.bundle.chance is not None:
            size += int(entry.bundle.chance.memory_usage(deep=True).sum())
        return size

    def _put(self, digest: str, entry: _Entry) -> None:
        self._entries.max_bytes = bundles_budget()  # read at each change, like the reader's limit
        self._entries.put(digest, entry)

    def _get(self, digest: str) -> Bundle | None:
        message = self._failed.get(digest)
        if message is not None:
            raise BundleError(message)
        entry = self._entries.get(digest)
        return None if entry is None else entry.bundle

    def open(self, digest: str, read: Callable[[], Bundle]) -> Bundle:
        """The bundle of ``digest``: kept, or ``read()`` once (another session asking meanwhile waits for it)."""
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
                    self._put(digest, _Entry(bundle))
            except BundleError as exc:
                with self._lock:
                    self._failed.put(digest, str(exc))
                raise
            finally:
                with self._lock:
                    self._reading.pop(digest, None)
        return bundle

    def analysis(self, bundle: Bundle) -> Analysis:
        """The pages' view of ``bundle`` (made once, kept beside it while it is kept)."""
        with self._lock:
            entry = self._entries.get(bundle.digest) if bundle.digest else None
            if entry is not None and entry.bundle is bundle and entry.analysis is not None:
                return entry.analysis
        note = "" if bundle.chance is not None else OLD_BUNDLE_NOTE
        analysis = Analysis(result=None, stats=bundle.stats, indices=bundle.stats.indices(),
                            class_names=list(bundle.stats.class_names), grouping="labels", chance=bundle.chance,
                            chance_note=note)
        with self._lock:
            entry = self._entries.get(bundle.digest) if bundle.digest else None
            if entry is not None and entry.bundle is bundle:
                self._put(bundle.digest, _Entry(bundle, analysis))
        return analysis

    def digests(self) -> list[str]:
        """The digests kept, least recently used first."""
        with self._lock:
            return list(self._entries.keys())

    def nbytes(self) -> int:
        with self._lock:
            return self._entries.bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._failed.clear()


BUNDLES = BundleCache()


def open_bundle(source: bytes | str) -> Bundle:
    """An analysis bundle from an upload's bytes or a typed server path (shared by the sessions; raises
    BundleError with a message to show). An upload is keyed by the sha256 of its bytes, a path by that of the
    file's content (memoised by resolved path, size and modification time); a path outside the data roots gets
    the one answer of :func:`ui.serving.server_path`, whether or not the file exists."""
    budget = bundles_budget()
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
