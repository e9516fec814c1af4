"""File stamps of watched folders: :func:`file_stamps`, the :func:`~senet_viz.paths.file_stamp` of many files
under one folder without a ``stat`` per file on every call.

A folder is watched (recursively) with ``watchdog``'s native observer (inotify on Linux, FSEvents on macOS, the
Windows API); the files' stamps are remembered until the observer reports any change under the folder, and the
first call after that stats them again. So an unchanged folder costs one ``stat`` (of the folder itself: a
folder renamed or replaced is a new one) per call, whatever its number of files.

The race, honestly: an edit is seen once the observer has delivered its event, a few milliseconds after the
write; a call in between still gets the old stamp. Changes a watcher cannot see (a network file system edited
from another machine, an overflowed event queue, a write through a memory map or through a hard link in another
folder) are seen within :data:`STAMP_TTL_S`, after which the stamps are taken again anyway. Symlinked files are
stat'ed on every call (their target's folder is not watched).

Without ``watchdog``, without a native observer (a polling or kqueue observer would cost more than it saves), or
when a watch cannot be added (inotify limits, a folder with too many sub-folders), every file is stat'ed on
every call, as before. Thread-safe: the app's sessions run in threads and share the watches.
"""

from __future__ import annotations

import os
import stat as stat_mod
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from senet_viz.data.folders import WALK_CACHE_ENTRIES, WALK_CACHE_FILES
from senet_viz.paths import file_stamp

__all__ = ["MAX_WATCHED_DIRS", "MAX_WATCHED_ROOTS", "STAMP_TTL_S", "file_stamps", "reset", "stamp_or_none",
           "watched_roots"]

#: Folders watched at once (the least recently used one is unwatched beyond): as many as remembered walks.
MAX_WATCHED_ROOTS = WALK_CACHE_ENTRIES
#: Stamps remembered across all watched folders (~250 bytes each), as many as remembered walk files.
MAX_STAMPS = WALK_CACHE_FILES
#: A folder with more sub-folders than this is not watched (inotify spends one watch per folder, and a user's
#: limit is shared by all their processes): its files are stat'ed on each call.
MAX_WATCHED_DIRS = 5_000
#: Remembered stamps are taken again after this long even without an event (changes no watcher reports).
STAMP_TTL_S = 60.0
#: A folder that could not be watched is not tried again for this long.
FAILED_WATCH_TTL_S = 60.0

_LINK: Any = object()  # memo marker: a symlinked file, stat'ed on every call


@dataclass
class _Root:
    """One watched folder: its watch, identity and remembered stamps (path -> stamp or _LINK)."""

    path: str
    watch: Any
    ident: tuple[int, int]  # (st_dev, st_ino) of the folder when it was watched
    generation: int = 0  # bumped by every event: stamps taken before an event are not remembered
    stamps: dict[str, Any] = field(default_factory=dict)
    filled: float = 0.0  # time.monotonic() when the memo was last emptied
    rewatch: bool = False  # a folder was created, moved or deleted: watch again (and check each one is watched)
    # Guards the fields above that events change. The observer holds its own lock while it calls the handler, and
    # _lock is held while watches are added: the handler takes only this one, so the locks cannot deadlock (the
    # order is _lock, then the observer's or a folder's lock; never a folder's, then another).
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_lock = threading.Lock()
_roots: OrderedDict[str, _Root] = OrderedDict()  # least recently used first
_failed: OrderedDict[str, float] = OrderedDict()  # folder -> time.monotonic() of the failed watch
_observer: Any = None
_unavailable = False  # watchdog missing or no native observer: stat every file


def file_stamps(root: str | os.PathLike[str], paths: Sequence[str]) -> list[tuple | None]:
    """:func:`~senet_viz.paths.file_stamp` of each of ``paths`` (files under the folder ``root``), None for one
    that cannot be stat'ed. ``root`` is watched (see the module docstring) and the stamps are remembered until an
    event under it; when it cannot be watched each file is stat'ed."""
    root = os.fspath(root)
    state = _watched(root)
    if state is None:
        return [stamp_or_none(p) for p in paths]
    with state.lock:
        generation, memo = state.generation, state.stamps
        remembered = [memo.get(p) for p in paths]
    out: list[tuple | None] = []
    new: dict[str, Any] = {}
    inside = root.rstrip(os.sep) + os.sep
    for p, stamp in zip(paths, remembered, strict=True):
        if stamp is None:
            stamp, keep = _first_stamp(p)
            if keep is not None and p.startswith(inside):  # a file outside the watched folder is never remembered
                new[p] = keep
        elif stamp is _LINK:
            stamp = stamp_or_none(p)
        out.append(stamp)
    if new:
        with _lock:
            if _roots.get(root) is state:
                _remember(state, new, generation)
    return out


def watched_roots() -> list[str]:
    """The folders watched now, least recently used first."""
    with _lock:
        return list(_roots)


def reset() -> None:
    """Unwatch every folder and stop the observer (tests; the next call starts afresh)."""
    global _observer, _unavailable
    with _lock:
        for state in _roots.values():
            _unschedule(state)
        _roots.clear()
        _failed.clear()
        observer, _observer, _unavailable = _observer, None, False
    if observer is not None:
        observer.stop()
        observer.join(10)


# ------------------------------------------------------------------------------------------------ internals


def stamp_or_none(path: str | os.PathLike[str]) -> tuple | None:
    """:func:`~senet_viz.paths.file_stamp` of ``path``, None when it cannot be stat'ed."""
    try:
        return file_stamp(path)
    except OSError:
        return None


def _first_stamp(path: str | os.PathLike[str]) -> tuple[tuple | None, Any]:
    """(the stamp, what to remember: the stamp, _LINK for a symlink, None for nothing)."""
    try:
        st = os.lstat(path)
        if stat_mod.S_ISLNK(st.st_mode):
            return file_stamp(path), _LINK
    except OSError:
        return None, None
    stamp = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    return stamp, stamp


def _remember(state: _Root, new: dict[str, Any], generation: int) -> None:
    """Add stamps taken at ``generation`` to a folder's memo (under _lock), unless an event came since (they may
    predate the change), within MAX_STAMPS overall: other folders' memos are emptied first (least recently used
    first); what still does not fit is not remembered (stat'ed each call)."""
    total = sum(len(s.stamps) for s in _roots.values())
    for other in list(_roots.values()):
        if total + len(new) <= MAX_STAMPS:
            break
        if other is not state:
            with other.lock:
                total -= len(other.stamps)
                other.stamps = {}
    room = MAX_STAMPS - total
    if room <= 0:
        return
    if len(new) > room:
        new = dict(list(new.items())[:room])
    with state.lock:
        if state.generation == generation:
            state.stamps.update(new)


def _watched(root: str) -> _Root | None:
    """The watched state of ``root`` (watching it now if need be), or None: not watchable, stat instead."""
    try:
        st = os.stat(root)  # one stat per call: a folder renamed away and replaced is another folder
    except OSError:
        _forget(root)
        return None
    ident = (st.st_dev, st.st_ino)
    with _lock:
        state = _roots.get(root)
        if state is not None and (state.ident != ident or state.rewatch):
            _unschedule(_roots.pop(root))
            state = None
        if state is not None:
            _roots.move_to_end(root)
            with state.lock:
                if time.monotonic() - state.filled > STAMP_TTL_S:
                    state.stamps, state.filled = {}, time.monotonic()
                    state.generation += 1
            return state
        if _unavailable:
            return None
        failed = _failed.get(root)
        if failed is not None and time.monotonic() - failed < FAILED_WATCH_TTL_S:
            return None
        # Watching takes a walk of the folders and one inotify watch each: once per folder, under the lock so that
        # two sessions do not watch the same folder twice.
        state = _schedule(root, ident)
        if state is None:
            _failed[root] = time.monotonic()
            while len(_failed) > 64:
                _failed.popitem(last=False)
            return None
        _roots[root] = state
        while len(_roots) > MAX_WATCHED_ROOTS:
            _unschedule(_roots.popitem(last=False)[1])
        return state


def _forget(root: str) -> None:
    with _lock:
        state = _roots.pop(root, None)
        if state is not None:
            _unschedule(state)


def _get_observer() -> Any:
    """The process's observer (started on first use), or None when there is no native one."""
    global _observer, _unavailable
    if _observer is not None:
        return _observer
    try:
        from watchdog.observers import Observer

        observer = Observer()
    except Exception:  # not installed, or no usable native API (e.g. inotify instance limit reached)
        _unavailable = True
        return None
    if type(observer).__name__ not in ("InotifyObserver", "FSEventsObserver", "WindowsApiObserver"):
        _unavailable = True  # polling stats every file every second; kqueue opens every file
        return None
    observer.start()
    _observer = observer
    return observer


def _folders_under(root: str) -> list[str] | None:
    """The folders under ``root`` (symlinked ones not entered, as inotify does not), None past MAX_WATCHED_DIRS."""
    found, stack = [root], [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        found.append(entry.path)
                        if len(found) > MAX_WATCHED_DIRS:
                            return None
                        stack.append(entry.path)
        except OSError:
            continue
    return found


def _schedule(root: str, ident: tuple[int, int]) -> _Root | None:
    observer = _get_observer()
    if observer is None:
        return None
    folders = _folders_under(root)
    if folders is None:
        return None
    from watchdog import events as ev

    state = _Root(root, None, ident, filled=time.monotonic())
    handler = _Handler(state)
    # Changes only: opening and reading a file (decoding an image) must not count as one.
    kinds = [ev.FileModifiedEvent, ev.FileAttribEvent, ev.FileCreatedEvent, ev.FileDeletedEvent, ev.FileMovedEvent,
             ev.FileClosedEvent, ev.DirModifiedEvent, ev.DirAttribEvent, ev.DirCreatedEvent, ev.DirDeletedEvent,
             ev.DirMovedEvent]
    try:
        state.watch = observer.schedule(handler, root, recursive=True, event_filter=kinds)
    except Exception:  # e.g. OSError ENOSPC / EMFILE: inotify limits
        return None
    if not _all_watched(observer, state.watch, folders):
        _unschedule(state)
        return None
    return state


def _all_watched(observer: Any, watch: Any, folders: list[str]) -> bool:
    """Whether every folder has its inotify watch: watchdog adds a sub-folder's watch silently or not at all (at
    the user's watch limit), and a folder without one would keep stale stamps. Other observers watch a tree as one."""
    if type(observer).__name__ != "InotifyObserver":
        return True
    try:  # watchdog's internals (7.x); if they change, the folder is not watched (safe, only slower)
        group = observer._emitter_for_watch[watch]._inotify
        watched = group._active_callbacks_by_path
        return all(os.fsencode(f) in watched for f in folders)
    except Exception:
        return False


def _unschedule(state: _Root) -> None:
    if state.watch is not None and _observer is not None:
        try:
            _observer.unschedule(state.watch)
        except Exception:  # already gone (its folder was deleted)
            pass
    state.watch = None


class _Handler:
    """Empties a folder's stamps on any event under it (watchdog calls ``dispatch`` on its own thread)."""

    def __init__(self, state: _Root) -> None:
        self.state = state

    def dispatch(self, event: Any) -> None:
        state = self.state
        with state.lock:
            state.generation += 1
            state.stamps = {}
            state.filled = time.monotonic()
            if event.is_directory and event.event_type in ("created", "moved", "deleted"):
                state.rewatch = True  # a new folder's watch may have failed silently; a deleted root stops its watch
