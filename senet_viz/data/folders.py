"""Image folders as labelled sources: :func:`folder_source`, a bounded walk remembered per folder stamp.

Two layouts are read (see :func:`folder_source`): image files directly in the folder, labelled by the wnid that
starts their names, or class folders. The walk is bounded in entries, depth and seconds for a served app, and a
bounded walk is remembered, process-wide, until a folder it entered changes.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from senet_viz.data.labels import WNID_RE, imagenet_wnids, match_names, names_for_wnids
from senet_viz.data.sources import (
    IMAGE_EXTENSIONS,
    ImageItem,
    ImageSet,
    Skipped,
    classify_file,
    file_suffix,
    is_hidden_or_junk,
)
from senet_viz.lru import LRU
from senet_viz.paths import OutsideRootsError, file_stamp, resolve_inside

__all__ = [
    "FAILED_WALK_TTL_S",
    "MAX_WALK_DEPTH",
    "MAX_WALK_ENTRIES",
    "MAX_WALK_SECONDS",
    "RACY_S",
    "WALK_CACHE_ENTRIES",
    "WALK_CACHE_FILES",
    "FolderWalkLimit",
    "folder_source",
]

#: Bounds of one folder walk (folder_source's defaults, for the served app; the CLI passes None to walk a whole
#: data set). Entries are files and folders seen: ImageNet's validation set (50,000 images, flat or in 1,000
#: class folders) fits four times over.
MAX_WALK_ENTRIES = 200_000
#: Folder levels entered below the chosen folder: class folders (1) and two more.
MAX_WALK_DEPTH = 3
MAX_WALK_SECONDS = 10.0
#: Bounded walks kept (process-wide, shared by sessions), and how long a walk that hit a bound is remembered.
#: Besides the count, the files they hold, listings included, are bounded: ~300 bytes a file, so ~150 MiB (one
#: ImageNet validation set with two labellings is 150,000).
WALK_CACHE_ENTRIES = 8
WALK_CACHE_FILES = 500_000
FAILED_WALK_TTL_S = 60.0
#: A folder modified this close to its walk is walked again next time: file-system clocks tick coarsely, so a
#: change in the same tick would leave its mtime unchanged (git's "racy" index entries, the same remedy).
RACY_S = 2.0
#: A non-image file's type is named in the count only when it looks like a type (``.heic``), never a name part.
_SHOWN_SUFFIX_RE = re.compile(r"\.[a-z0-9]{1,5}")


class FolderWalkLimit(ValueError):
    """A folder walk stopped at one of its bounds (entries or seconds); the message says which."""


@dataclass(frozen=True)
class _Walk:
    """What one walk of a folder saw. ``folders`` (every folder entered, with its file stamp) is also its stamp: a file
    added, removed or renamed changes its folder's mtime, a new sub-folder its parent's."""

    files: tuple[str, ...]  # relative posix paths, folders in walk order, names sorted within a folder
    folders: tuple[tuple[str, int, int], ...]
    too_deep: int = 0  # folders below max_depth that were not entered
    links_out: int = 0  # symlinked files whose target lies outside ``within``
    error: str | None = None  # the bound that stopped the walk
    made: float = 0.0  # time.monotonic() of the walk
    racy: bool = False  # a folder changed within RACY_S of the walk: its mtime may not show the next change
    listings: dict = field(default_factory=dict, compare=False, repr=False)  # labelled listings, by labelling


def _walk_files(root: Path, max_entries: int | None = None, max_depth: int | None = None,
                max_seconds: float | None = None, within: Sequence[Path] | None = None) -> _Walk:
    """Files under ``root`` (hidden folders and __MACOSX pruned, folder symlinks not followed), within the bounds.

    Entries are read one at a time (``os.scandir``), so a folder with millions of entries stops at the bound too.
    With ``within``, a symlinked file is listed only when its target lies inside one of those folders."""
    start = time.monotonic()
    files: list[str] = []
    folders: list[tuple[str, int, int]] = []
    too_deep = links_out = seen = 0
    stack: list[tuple[Path, str, int]] = [(root, "", 0)]

    def walk(error: str | None = None) -> _Walk:
        recent = time.time_ns() - int(RACY_S * 1e9)
        return _Walk(tuple(files), tuple(folders), too_deep, links_out, error, time.monotonic(),
                     racy=any(mtime >= recent for _, _, mtime in folders))

    while stack:
        folder, rel, depth = stack.pop()
        names: list[str] = []
        subdirs: list[str] = []
        try:
            folders.append(file_stamp(folder))
            with os.scandir(folder) as entries:
                for entry in entries:
                    seen += 1
                    if max_entries is not None and seen > max_entries:
                        return walk(f"stopped after {max_entries:,} files and folders: pick a narrower folder "
                                    "(one class folder, or a folder of fewer images)")
                    if max_seconds is not None and time.monotonic() - start >= max_seconds:
                        return walk(f"stopped after {max_seconds:g} s of listing files: pick a narrower folder")
                    try:
                        is_dir = entry.is_dir()  # a symlinked folder counts as a folder (and is not entered)
                    except OSError:
                        continue
                    if is_dir:
                        if entry.is_symlink() or is_hidden_or_junk(entry.name):
                            continue
                        if max_depth is not None and depth >= max_depth:
                            too_deep += 1
                        else:
                            subdirs.append(entry.name)
                    elif within is not None and entry.is_symlink() and not _links_inside(entry.path, within):
                        links_out += 1
                    else:
                        names.append(entry.name)
        except OSError:  # an unreadable folder is left out, as os.walk does
            continue
        files.extend(f"{rel}{n}" for n in sorted(names))
        stack.extend((folder / d, f"{rel}{d}/", depth + 1) for d in sorted(subdirs, reverse=True))
    return walk()


def _links_inside(path: str, within: Sequence[Path]) -> bool:
    try:
        resolve_inside(path, within)
        return True
    except OutsideRootsError:
        return False


def _walk_size(walk: _Walk) -> int:
    return len(walk.files) * (1 + len(walk.listings))  # in files: the walk's and its listings' copies


# The newest walk always stays: it is within the walk bound.
_walks: LRU[tuple, _Walk] = LRU(WALK_CACHE_ENTRIES, WALK_CACHE_FILES, sizer=_walk_size, keep_newest=True)
_walks_lock = threading.Lock()  # a remembered walk's listings change after it is remembered


def _walk_cache() -> LRU[tuple, _Walk]:
    """The remembered walks, within WALK_CACHE_ENTRIES and WALK_CACHE_FILES as they are now (they can be lowered)."""
    _walks.limit, _walks.max_bytes = WALK_CACHE_ENTRIES, WALK_CACHE_FILES
    return _walks


def _fresh(walk: _Walk) -> bool:
    """Whether a remembered walk still describes its folder: every folder it entered has the mtime it had (one
    ``stat`` per folder, not a new listing) and none had just changed when it was walked (``racy``); a walk that
    hit a bound is retried after FAILED_WALK_TTL_S anyway."""
    if walk.racy or (walk.error is not None and time.monotonic() - walk.made > FAILED_WALK_TTL_S):
        return False
    for stamp in walk.folders:
        try:
            if file_stamp(stamp[0]) != stamp:
                return False
        except OSError:
            return False
    return True


def _cached_walk(root: Path, max_entries: int, max_depth: int | None, max_seconds: float | None,
                 within: Sequence[Path] | None) -> _Walk:
    """:func:`_walk_files`, remembered per folder stamp (see :func:`_fresh`) and shared by every caller of the
    process: a rerun or another session listing the same unchanged folder does not walk it again."""
    roots = None if within is None else tuple(map(str, within))
    key = (str(root.resolve()), max_entries, max_depth, max_seconds, roots)
    walk = _walks.get(key)
    if walk is not None and _fresh(walk):
        return walk
    walk = _walk_files(root, max_entries, max_depth, max_seconds, within)
    _walk_cache().put(key, walk)
    return walk


def _non_image_note(counts: dict[str, int]) -> Skipped:
    """One line for the files that are not images: how many, of which types; never their names (a served folder's
    other files are nobody else's business)."""
    n = sum(counts.values())
    types = ", ".join(f"{t} x{k}" for t, k in sorted(counts.items()))
    return Skipped(f"{n} non-image file(s)", f"ignored: not a supported image type ({types}); their names are not "
                                              "listed")


def folder_source(
    path: str | Path,
    class_names: list[str] | None = None,
    wnids: list[str] | None = None,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    *,
    max_entries: int | None = MAX_WALK_ENTRIES,
    max_depth: int | None = MAX_WALK_DEPTH,
    max_seconds: float | None = MAX_WALK_SECONDS,
    within: Sequence[Path] | None = None,
    name_non_images: bool = False,
) -> ImageSet:
    """List the images of a folder with their labels. Two layouts are detected:

    (a) flat: image files directly in ``path``. A name that starts with a wnid
        (``n01443537_goldfish.JPEG``) is labelled by that wnid's index in ``wnids`` (default: the full
        ImageNet-1k list, so a folder holding only some classes still gets the true indices); other files
        are unlabelled. ``class_names`` defaults to the names of ``wnids``.
    (b) class folders: ``path/<class>/**/<image>``. If every class folder is a wnid, labels are wnid
        indices as in (a); else if every folder name matches ``class_names`` (case-insensitive, ``_`` and
        ``/`` = space, so ``T-shirt_top`` is ``T-shirt/top``), labels are those indices; else labels are the
        indices of the sorted folder names, which become ``class_names``. Image files directly in ``path``
        are then reported as skipped.

    Files are not decoded here (see :func:`validate`). Obvious non-images (``.txt``, ``.json``, hidden
    files) are ignored; other files that are not images are counted in one ``skipped`` entry, by type, without
    their names (a served folder's other files are nobody else's business), or listed one by one with
    ``name_non_images`` (the CLI: the local user's own folder). Raises ``FileNotFoundError`` for a missing
    folder and ``ValueError`` for a path that is not a folder or a folder with no images.

    The walk is bounded (defaults: :data:`MAX_WALK_ENTRIES` files and folders, :data:`MAX_WALK_DEPTH` levels,
    :data:`MAX_WALK_SECONDS`): more entries or seconds raise :class:`FolderWalkLimit`; folders below the depth
    are not entered and counted in ``skipped``. ``None`` lifts a bound (the CLI walks whole data sets). A bounded
    walk is remembered per folder stamp (:func:`_cached_walk`). With ``within`` (a served app's data roots) the
    folder must resolve inside one of them (:class:`~senet_viz.paths.OutsideRootsError` otherwise, one message
    whether it exists or not) and symlinked files pointing outside them are left out.
    """
    if within is not None:
        root = resolve_inside(path, within, "image folder")
    else:
        root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"not a folder: {root} (give the folder that holds the images)")
    exts = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    wn = wnids if wnids is not None else imagenet_wnids()
    wnid_index = {w: i for i, w in enumerate(wn)}

    def wnid_class_names() -> list[str]:
        if class_names is None:
            return names_for_wnids(wn)
        if len(class_names) != len(wn):
            raise ValueError(f"labels come from wnids here, but the {len(wn)} wnids and the "
                             f"{len(class_names)} class_names differ in length; pass wnids= in model order")
        return list(class_names)

    if max_entries is None:  # an unbounded walk (a whole data set) is not kept in memory after this call
        walk = _walk_files(root, None, max_depth, max_seconds, within)
    else:
        walk = _cached_walk(root, max_entries, max_depth, max_seconds, within)
    if walk.error is not None:
        raise FolderWalkLimit(f"listing {root}: {walk.error}")

    # The listing (labels from names) is remembered with the walk, per labelling: a rerun gets a copy at once.
    how = (None if class_names is None else tuple(class_names), tuple(wn), exts, name_non_images, str(root))
    listed = walk.listings.get(how)
    if listed is None:
        listed = _list_walk(walk, root, exts, wnid_index, wnid_class_names, class_names, name_non_images, max_depth)
        if max_entries is not None:
            with _walks_lock:
                while len(walk.listings) >= 2:
                    walk.listings.pop(next(iter(walk.listings)))
                walk.listings[how] = listed
            _walk_cache().trim(measure=True)
    return ImageSet(list(listed.items), list(listed.skipped), list(listed.class_names))


def _list_walk(walk: _Walk, root: Path, exts: frozenset[str], wnid_index: dict[str, int],
               wnid_class_names: Callable[[], list[str]], class_names: list[str] | None, name_non_images: bool,
               max_depth: int | None) -> ImageSet:
    """The labelled images of a walk (the layouts of :func:`folder_source`)."""
    skipped: list[Skipped] = []
    other_types: dict[str, int] = {}
    top_images: list[str] = []
    by_class: dict[str, list[str]] = {}
    for rel in walk.files:
        parts = rel.split("/")
        kind = classify_file(parts[-1], exts)
        if kind == "ignore":
            continue
        if kind != "image" and name_non_images:
            skipped.append(Skipped(rel, kind))
        elif kind != "image":
            suffix = file_suffix(parts[-1])
            shown = suffix if _SHOWN_SUFFIX_RE.fullmatch(suffix) else "other" if suffix else "no extension"
            other_types[shown] = other_types.get(shown, 0) + 1
        elif len(parts) == 1:
            top_images.append(rel)
        else:
            by_class.setdefault(parts[0], []).append(rel)
    if other_types:
        skipped.append(_non_image_note(other_types))
    if walk.too_deep:
        skipped.append(Skipped(f"{walk.too_deep} folder(s) deeper than {max_depth} levels",
                               "not searched: pick a narrower folder, or move the images up to at most "
                               f"{max_depth} levels below the chosen folder"))
    if walk.links_out:
        skipped.append(Skipped(f"{walk.links_out} linked file(s)",
                               "ignored: they point outside the folders this server opens to the app"))

    def item(rel: str, label: int | None, label_name: str | None) -> ImageItem:
        return ImageItem(rel, rel.rpartition("/")[2], label, label_name, path=root / rel)

    items: list[ImageItem] = []
    if not by_class:  # layout (a)
        labels = [wnid_index.get(m.group(1)) if (m := WNID_RE.match(rel)) else None for rel in top_images]
        has_labels = any(lbl is not None for lbl in labels)
        out_names = wnid_class_names() if has_labels else list(class_names or [])
        for rel, label in zip(top_images, labels, strict=True):
            items.append(item(rel, label, out_names[label] if label is not None else None))
    else:  # layout (b)
        folders = sorted(by_class)
        if all(d in wnid_index for d in folders):
            out_names = wnid_class_names()
            mapping = {d: wnid_index[d] for d in folders}
        elif class_names is not None and (matched := match_names(folders, class_names)) is not None:
            out_names, mapping = list(class_names), matched
        else:
            out_names, mapping = folders, {d: i for i, d in enumerate(folders)}
        for d in folders:
            for rel in by_class[d]:
                items.append(item(rel, mapping[d], out_names[mapping[d]]))
        skipped.extend(Skipped(rel, "image outside the class folders (unlabelled); move it into one")
                       for rel in top_images)

    if not items:
        found = "".join(f"; {s.file}: {s.reason}" for s in skipped[:2])
        raise ValueError(f"no images found in {root} (looked for {', '.join(sorted(exts))}){found}")
    items.sort(key=lambda it: it.key)
    return ImageSet(items, skipped, out_names)
