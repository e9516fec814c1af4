"""Decode and validate images, and list labelled image sources (folders, uploads, zip archives).

Everything the rest of the library sees is an RGB :class:`PIL.Image.Image` produced by :func:`decode_image`,
whose only documented exception is :class:`ImageDecodeError` (a ``ValueError``). Sources are listed cheaply
(no pixels are decoded at listing time); decoding happens lazily in :meth:`ImageItem.load`, typically in the
runner, or up front with :func:`validate`.

Labels are integer indices into :attr:`ImageSet.class_names`. Two label spaces occur:

- the model's space (e.g. the 1000 ImageNet classes): ImageNet-style file names (``n01443537_goldfish.JPEG``),
  class folders named by wnid, or class folders / upload labels that *all* match the given ``class_names``;
- the user's own space: otherwise, the user's class names in a fixed order (sorted folder names, or the order
  of first appearance for uploads). Accuracy against a model only makes sense in the model's space.

Decoding one image is :mod:`senet_viz.data.decode` (re-exported here).

Size: three kinds of source (folders, uploads, zip archives) share the item/set classes, the skip reasons and the
label-space rules above; split, each would import the other two.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

from PIL import Image

from senet_viz.paths import OutsideRootsError, resolve_inside

if TYPE_CHECKING:
    pass

from senet_viz.data.decode import (  # re-exported (see __all__): the decoding API has always been importable from here
    _FORMATS_HINT,
    MAX_PIXELS,
    ImageDecodeError,
    JpegData,
    decode_image,
    decode_image_fast,
    decode_jpeg_tensor,
    max_pixels_limit,
    orient_tensor,
    read_jpeg,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MAX_WALK_DEPTH",
    "MAX_WALK_ENTRIES",
    "MAX_WALK_SECONDS",
    "MAX_ZIP_BYTES",
    "MAX_ZIP_MEMBERS",
    "FolderWalkLimit",
    "ImageDecodeError",
    "ImageItem",
    "ExpandedZip",
    "ImageSet",
    "JpegData",
    "Skipped",
    "decode_image",
    "decode_image_fast",
    "decode_jpeg_tensor",
    "folder_source",
    "imagenet_class_names",
    "imagenet_wnids",
    "max_pixels_limit",
    "orient_tensor",
    "read_jpeg",
    "ZipMember",
    "ZipRefused",
    "expand_zip",
    "is_zip_upload",
    "uploads_source",
    "validate",
]


#: Limits for one uploaded zip archive (zip-bomb guard): members, and total declared uncompressed bytes.
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_BYTES = 1 << 30
# Central directory bytes allowed per permitted entry (46 fixed + name + extras; real entries take ~100-200): a
# directory past max_members x this is refused before zipfile builds one object per entry.
_MAX_DIRECTORY_ENTRY = 512

#: File extensions listed as images (lower case, with the dot).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif"}
)

# Files that are obviously not images are ignored without a word; anything else that is not an image
# extension is reported in ImageSet.skipped so the user sees why a file was left out.
_NOT_IMAGE_EXTENSIONS = frozenset(
    {".txt", ".md", ".rst", ".json", ".jsonl", ".csv", ".tsv", ".xml", ".html", ".htm", ".yaml", ".yml",
     ".toml", ".ini", ".cfg", ".log", ".py", ".ipynb", ".sh", ".db", ".sqlite", ".parquet", ".npy", ".npz",
     ".pt", ".pth", ".safetensors", ".tflite", ".onnx", ".pkl", ".pdf", ".lnk", ".url"}
)
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})


_WNID_RE = re.compile(r"^(n\d{8})(?=[_\-. ]|$)")


# --------------------------------------------------------------------------------------------- labels


@lru_cache(maxsize=1)
def _imagenet_info() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from timm.data import ImageNetInfo  # local import: timm is heavy and only needed for ImageNet labels

    info = ImageNetInfo()
    n = info.num_classes()
    wnids = tuple(info.index_to_label_name(i) for i in range(n))
    names = tuple(info.index_to_description(i).split(",")[0].strip() for i in range(n))
    return wnids, names


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (``n01440764`` = 0, tench), offline."""
    return list(_imagenet_info()[0])


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, each the first name of its description
    (``"goldfish, Carassius auratus"`` -> ``"goldfish"``). Two names occur twice (``crane``, ``maillot``)."""
    return list(_imagenet_info()[1])


def _norm_name(name: str) -> str:
    # "_" and "/" read as spaces: a folder "T-shirt_top" is the class "T-shirt/top" (no "/" in a folder name)
    return " ".join(name.replace("_", " ").replace("/", " ").split()).casefold()


def _match_names(names: Iterable[str], class_names: Sequence[str]) -> dict[str, int] | None:
    """Map every name to its index in ``class_names`` (case-, space- and underscore-insensitive; a name that
    occurs twice maps to its first index), or None if any name does not match."""
    index: dict[str, int] = {}
    for i, cname in enumerate(class_names):
        index.setdefault(_norm_name(cname), i)
    out: dict[str, int] = {}
    for name in names:
        i = index.get(_norm_name(name))
        if i is None:
            return None
        out[name] = i
    return out


def _names_for_wnids(wnids: Sequence[str]) -> list[str]:
    std_wnids, std_names = _imagenet_info()
    lookup = dict(zip(std_wnids, std_names, strict=True))
    return [lookup.get(w, w) for w in wnids]


# --------------------------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class ImageItem:
    """One image of a source, not yet decoded.

    ``key`` is a stable unique id (relative path for folder items, ``<content hash>/<name>`` for uploads),
    ``name`` the display name (a base name, never a path), ``label`` an index into the set's ``class_names``
    (None: unlabelled). Exactly one of ``path`` / ``data`` is set.
    """

    key: str
    name: str
    label: int | None
    label_name: str | None
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def load(self, max_pixels: int | None = None) -> Image.Image:
        """Decode this image to RGB with :func:`decode_image` (raises :class:`ImageDecodeError`)."""
        if self.data is not None:
            return decode_image(self.data, max_pixels)
        if self.path is not None:
            return decode_image(self.path, max_pixels)
        raise ImageDecodeError(f"{self.name}: item has neither a path nor data")

    @property
    def origin(self) -> str:
        """Where the item comes from, for messages: the relative path, or the uploaded name (zip/member)."""
        if self.path is not None or "/" not in self.key:
            return self.key
        return self.key.split("/", 1)[1]


@dataclass(frozen=True)
class Skipped:
    """A file that was left out of a source, and why."""

    file: str
    reason: str


@dataclass
class ImageSet:
    """Images with optional labels indexing ``class_names``, plus the files that were left out."""

    items: list[ImageItem]
    skipped: list[Skipped] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ImageItem]:
        return iter(self.items)

    def labels(self) -> list[int | None]:
        """The label of each item, in item order (None for unlabelled items)."""
        return [it.label for it in self.items]

    def classes_present(self) -> list[int]:
        """Sorted distinct labels that occur among the items."""
        return sorted({it.label for it in self.items if it.label is not None})

    def subset(self, classes: Iterable[int | str]) -> ImageSet:
        """Items whose label is in ``classes`` (label indices, or class names matched case-insensitively).
        ``class_names`` and ``skipped`` are kept unchanged, so labels keep their meaning."""
        wanted: set[int] = set()
        by_name: dict[str, list[int]] = {}
        for i, cname in enumerate(self.class_names):
            by_name.setdefault(_norm_name(cname), []).append(i)
        for c in classes:
            if isinstance(c, str):
                if _norm_name(c) not in by_name:
                    raise ValueError(f"unknown class name {c!r}")
                wanted.update(by_name[_norm_name(c)])
            else:
                wanted.add(int(c))
        kept = [it for it in self.items if it.label in wanted]
        return ImageSet(kept, list(self.skipped), list(self.class_names))

    def shard(self, i: int, n: int) -> ImageSet:
        """Deterministic part ``i`` (0-based) of ``n``: every ``n``-th item starting at ``i`` (likewise for
        ``skipped``). Shard sizes differ by at most one, each shard spans all classes of a sorted set, and
        the ``n`` shards are disjoint and together give back the whole set."""
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard index must satisfy 0 <= i < n, got i={i}, n={n}")
        return ImageSet(self.items[i::n], self.skipped[i::n], list(self.class_names))


def validate(
    image_set: ImageSet,
    max_pixels: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImageSet:
    """Decode every item once; items that fail move to ``skipped`` with the decoder's reason.

    ``progress(done, total)`` is called after each item. Returns a new set; the input is unchanged.
    """
    good: list[ImageItem] = []
    skipped = list(image_set.skipped)
    total = len(image_set.items)
    for done, item in enumerate(image_set.items, start=1):
        try:
            item.load(max_pixels).close()
            good.append(item)
        except ImageDecodeError as exc:
            skipped.append(Skipped(item.origin, str(exc)))
        if progress is not None:
            progress(done, total)
    return ImageSet(good, skipped, list(image_set.class_names))


# --------------------------------------------------------------------------------------------- folders

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
    """What one walk of a folder saw. ``folders`` (every folder entered, with its mtime) is also its stamp: a file
    added, removed or renamed changes its folder's mtime, a new sub-folder its parent's."""

    files: tuple[str, ...]  # relative posix paths, folders in walk order, names sorted within a folder
    folders: tuple[tuple[str, int], ...]
    too_deep: int = 0  # folders below max_depth that were not entered
    links_out: int = 0  # symlinked files whose target lies outside ``within``
    error: str | None = None  # the bound that stopped the walk
    made: float = 0.0  # time.monotonic() of the walk
    racy: bool = False  # a folder changed within RACY_S of the walk: its mtime may not show the next change
    listings: dict = field(default_factory=dict, compare=False, repr=False)  # labelled listings, by labelling


def _is_hidden_or_junk(name: str) -> bool:
    return name.startswith(".") or name.startswith("~$") or name.casefold() in _IGNORED_NAMES


def _classify_file(name: str, extensions: frozenset[str]) -> str | None:
    """'image', 'ignore' (silently), or a reason to report the file as skipped."""
    if _is_hidden_or_junk(name):
        return "ignore"
    suffix = _suffix(name)
    if suffix in extensions:
        return "image"
    if suffix in _NOT_IMAGE_EXTENSIONS:
        return "ignore"
    shown = suffix or "no extension"
    return f"not a supported image file type ({shown}); expected one of {', '.join(sorted(extensions))}"


def _walk_files(root: Path, max_entries: int | None = None, max_depth: int | None = None,
                max_seconds: float | None = None, within: Sequence[Path] | None = None) -> _Walk:
    """Files under ``root`` (hidden folders and __MACOSX pruned, folder symlinks not followed), within the bounds.

    Entries are read one at a time (``os.scandir``), so a folder with millions of entries stops at the bound too.
    With ``within``, a symlinked file is listed only when its target lies inside one of those folders."""
    start = time.monotonic()
    files: list[str] = []
    folders: list[tuple[str, int]] = []
    too_deep = links_out = seen = 0
    stack: list[tuple[Path, str, int]] = [(root, "", 0)]

    def walk(error: str | None = None) -> _Walk:
        recent = time.time_ns() - int(RACY_S * 1e9)
        return _Walk(tuple(files), tuple(folders), too_deep, links_out, error, time.monotonic(),
                     racy=any(mtime >= recent for _, mtime in folders))

    while stack:
        folder, rel, depth = stack.pop()
        names: list[str] = []
        subdirs: list[str] = []
        try:
            folders.append((str(folder), folder.stat().st_mtime_ns))
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
                        if entry.is_symlink() or _is_hidden_or_junk(entry.name):
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


_walks: OrderedDict[tuple, _Walk] = OrderedDict()
_walks_lock = threading.Lock()


def _fresh(walk: _Walk) -> bool:
    """Whether a remembered walk still describes its folder: every folder it entered has the mtime it had (one
    ``stat`` per folder, not a new listing) and none had just changed when it was walked (``racy``); a walk that
    hit a bound is retried after FAILED_WALK_TTL_S anyway."""
    if walk.racy or (walk.error is not None and time.monotonic() - walk.made > FAILED_WALK_TTL_S):
        return False
    for folder, mtime in walk.folders:
        try:
            if os.stat(folder).st_mtime_ns != mtime:
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
    with _walks_lock:
        walk = _walks.get(key)
    if walk is not None and _fresh(walk):
        with _walks_lock:
            if key in _walks:
                _walks.move_to_end(key)
        return walk
    walk = _walk_files(root, max_entries, max_depth, max_seconds, within)
    with _walks_lock:
        _walks[key] = walk
        _walks.move_to_end(key)
        _trim_walks()
    return walk


def _trim_walks() -> None:
    """Evict the least recently used walks beyond WALK_CACHE_ENTRIES or WALK_CACHE_FILES (the newest stays, it
    is within the walk bound). Called with ``_walks_lock`` held."""
    def held() -> int:
        return sum(len(w.files) * (1 + len(w.listings)) for w in _walks.values())

    while len(_walks) > 1 and (len(_walks) > WALK_CACHE_ENTRIES or held() > WALK_CACHE_FILES):
        _walks.popitem(last=False)


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
            return _names_for_wnids(wn)
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
                _trim_walks()
    return ImageSet(list(listed.items), list(listed.skipped), list(listed.class_names))


def _suffix(name: str) -> str:
    """``PurePosixPath(name).suffix.lower()``, without building a path (50,000 of them per listing)."""
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


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
        kind = _classify_file(parts[-1], exts)
        if kind == "ignore":
            continue
        if kind != "image" and name_non_images:
            skipped.append(Skipped(rel, kind))
        elif kind != "image":
            suffix = _suffix(parts[-1])
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
        labels = [wnid_index.get(m.group(1)) if (m := _WNID_RE.match(rel)) else None for rel in top_images]
        has_labels = any(lbl is not None for lbl in labels)
        out_names = wnid_class_names() if has_labels else list(class_names or [])
        for rel, label in zip(top_images, labels, strict=True):
            items.append(item(rel, label, out_names[label] if label is not None else None))
    else:  # layout (b)
        folders = sorted(by_class)
        if all(d in wnid_index for d in folders):
            out_names = wnid_class_names()
            mapping = {d: wnid_index[d] for d in folders}
        elif class_names is not None and (matched := _match_names(folders, class_names)) is not None:
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


# --------------------------------------------------------------------------------------------- uploads


def _base_name(filename: str) -> str:
    """The last component of a path given by a browser or a zip (``/`` or ``\\``), never empty."""
    base = re.split(r"[/\\]", filename.strip())[-1].strip()
    return base or "upload"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _unsafe_member(name: str) -> bool:
    parts = re.split(r"[/\\]", name)
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts


class ZipRefused(ValueError):
    """A whole zip archive was refused before anything was expanded to memory or disk: not a zip, too many
    entries, or more uncompressed bytes than allowed (``declared`` bytes of images against ``limit``).
    ``over_budget``: the limit in force was the caller's byte budget (e.g. a session's), not the per-zip limit."""

    def __init__(self, message: str, declared: int = 0, limit: int = 0, over_budget: bool = False) -> None:
        super().__init__(message)
        self.declared = declared
        self.limit = limit
        self.over_budget = over_budget


class ZipMember(NamedTuple):
    """One image expanded from a zip: its path parts (label folders first), member name, bytes and digest."""

    parts: tuple[str, ...]
    name: str
    data: bytes
    digest: str  # _digest(data), computed once at expansion


@dataclass(frozen=True)
class ExpandedZip:
    """A zip archive expanded once (see :func:`expand_zip`): its image members in memory and what was left out.
    :func:`uploads_source` takes one in place of the archive's bytes, so an app expands each archive once and not
    on every rerun."""

    name: str
    members: tuple[ZipMember, ...]
    skipped: tuple[Skipped, ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes held: the expanded members (the archive's own bytes are not kept)."""
        return sum(len(m.data) for m in self.members)


def is_zip_upload(name: str, data: bytes) -> bool:
    """Whether an upload is read as a zip archive: a ``.zip`` name, or zip bytes under a name without extension."""
    return name.lower().endswith(".zip") or (data[:4] == b"PK\x03\x04" and "." not in _base_name(name))


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory: signature, disk numbers, entries, size, offset, ...
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _directory_extent(data: bytes) -> tuple[int, int] | None:
    """(entries, central directory bytes) as the end records of a zip declare them, read without parsing the
    directory (None when no end record is found: ``zipfile`` then words the error). Lets a directory of millions
    of entries be refused before ``zipfile`` builds an object per entry."""
    start = data.rfind(b"PK\x05\x06", max(0, len(data) - (1 << 16) - _EOCD.size))
    if start < 0 or start + _EOCD.size > len(data):
        return None
    _sig, _disk, _cd_disk, _n_here, entries, cd_size, _offset, _comment = _EOCD.unpack_from(data, start)
    loc = start - _ZIP64_LOCATOR.size
    if loc >= 0 and data[loc:loc + 4] == b"PK\x06\x07":
        _sig, _disk, eocd64, _disks = _ZIP64_LOCATOR.unpack_from(data, loc)
        if 0 <= eocd64 and eocd64 + _ZIP64_EOCD.size <= len(data) and data[eocd64:eocd64 + 4] == b"PK\x06\x06":
            fields = _ZIP64_EOCD.unpack_from(data, eocd64)
            entries, cd_size = fields[7], fields[8]
    return entries, cd_size


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _read_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """A member's bytes, streamed in chunks and never more than ``cap`` (its declared size, itself within the
    budget): a member whose data runs past what the directory declares is refused, whatever ``zipfile`` does."""
    out = io.BytesIO()  # grows in place and hands its buffer over: no second copy of a large member
    got = 0
    with zf.open(info) as fh:
        while chunk := fh.read(min(1 << 20, cap + 1 - got)):
            got += len(chunk)
            if got > cap:
                raise ZipRefused(f"its data runs past the {cap:,} bytes the zip declares for it")
            out.write(chunk)
    return out.getvalue()


def expand_zip(
    zip_name: str,
    data: bytes,
    *,
    max_members: int = MAX_ZIP_MEMBERS,
    max_bytes: int = MAX_ZIP_BYTES,
    budget: int | None = None,
) -> ExpandedZip:
    """Expand the safe image members of a zip into memory, once; nothing touches disk.

    Refused as a whole (:class:`ZipRefused`, before any member is expanded) when it is no zip, when its end record
    or directory has more than ``max_members`` entries, or when the images its directory declares come to more than
    ``max_bytes`` (the per-zip bomb guard) or than ``budget`` (what the caller has left, e.g. of a session's
    budget; ``over_budget`` is then set). Members are streamed with a hard cap at their declared size, so a
    directory that lies about sizes costs no more than it declares: such a member fails its CRC or runs past the
    cap and is listed in ``skipped``, as are unsafe paths (absolute, ``..``), symbolic links, nested zips and
    non-images. A single folder wrapping every class folder is dropped from the members' parts."""
    extent = _directory_extent(data)
    if extent is not None and (extent[0] > max_members or extent[1] > max_members * _MAX_DIRECTORY_ENTRY):
        raise ZipRefused(f"zip has {extent[0]:,} entries, over the limit of {max_members:,}; "
                         "upload fewer images per archive")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ZipRefused(f"not a valid zip archive ({exc}); re-create it") from None
    skipped: list[Skipped] = []
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise ZipRefused(f"zip has {len(infos):,} entries, over the limit of {max_members:,}; "
                             "upload fewer images per archive")
        wanted: list[tuple[list[str], zipfile.ZipInfo]] = []
        for info in infos:
            name = info.filename
            parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
            if info.is_dir() or not parts:
                continue
            where = f"{zip_name}/{name}"
            if _unsafe_member(name):
                skipped.append(Skipped(where, "unsafe path inside the zip (absolute or '..'); ignored"))
                continue
            if any(_is_hidden_or_junk(p) for p in parts):
                continue  # __MACOSX resource forks, .DS_Store, hidden files and folders
            if _is_symlink(info):
                skipped.append(Skipped(where, "symbolic link inside the zip; ignored (zip the files themselves)"))
                continue
            if PurePosixPath(parts[-1]).suffix.lower() == ".zip":
                skipped.append(Skipped(where, "nested zip archives are not expanded; upload it separately"))
                continue
            kind = _classify_file(parts[-1], IMAGE_EXTENSIONS)
            if kind == "ignore":
                continue
            if kind != "image":
                skipped.append(Skipped(where, kind))
                continue
            wanted.append((parts, info))
        # The directory's word on sizes, checked before anything is expanded; _read_capped holds it to that word.
        total = sum(info.file_size for _, info in wanted)
        if total > max_bytes:
            raise ZipRefused(f"zip would expand to {total / 2**20:,.1f} MiB, over the limit of "
                             f"{max_bytes / 2**20:,.1f} MiB (possible zip bomb); upload it in parts",
                             declared=total, limit=max_bytes)
        if budget is not None and total > budget:
            raise ZipRefused(f"zip would expand to {total / 2**20:,.1f} MiB of images, over the "
                             f"{max(budget, 0) / 2**20:,.1f} MiB left of the budget",
                             declared=total, limit=budget, over_budget=True)
        members: list[ZipMember] = []
        for parts, info in wanted:
            try:
                blob = _read_capped(zf, info, info.file_size)
            except ZipRefused as exc:
                skipped.append(Skipped(f"{zip_name}/{info.filename}", f"refused: {exc}; re-create the zip"))
                continue
            except Exception as exc:  # encrypted member, bad CRC (e.g. a size that lies), unsupported compression
                skipped.append(Skipped(f"{zip_name}/{info.filename}", f"cannot extract from the zip: {exc}"))
                continue
            members.append(ZipMember(tuple(parts), info.filename, blob, _digest(blob)))
    # A zip of a folder wraps everything in that folder: drop leading folders that all members share,
    # as long as the members still sit in class folders below them.
    while members and all(len(m.parts) > 2 for m in members) and len({m.parts[0] for m in members}) == 1:
        members = [m._replace(parts=m.parts[1:]) for m in members]
    return ExpandedZip(zip_name, tuple(members), tuple(skipped))


def uploads_source(
    files: Sequence[tuple[str, bytes | ExpandedZip, str | None]],
    class_names: list[str] | None = None,
    *,
    max_zip_members: int = MAX_ZIP_MEMBERS,
    max_zip_bytes: int = MAX_ZIP_BYTES,
) -> ImageSet:
    """Build an :class:`ImageSet` from in-memory uploads ``(filename, bytes, class label or None)``.

    A ``.zip`` upload is expanded (:func:`expand_zip`; pass its :class:`ExpandedZip` instead of the bytes to expand
    it only once): its first-level folders (below a single wrapping folder, if any) are
    class labels, files at its top take the zip's own label. Labels index ``class_names`` if it is given and
    *every* label matches one of them (case-insensitive, ``_`` = space); otherwise they index the user's
    label names in order of first appearance, which become the set's ``class_names``.

    ``key`` is ``<sha256 prefix>/<name>``: an identical second upload (same name and bytes) is skipped as a
    duplicate. Empty files and broken or oversized zips are listed in ``skipped``; other files are decoded
    lazily (see :func:`validate`).
    """
    raw: list[tuple[str, str, bytes, str | None, str | None]] = []  # (key name, display, bytes, label, digest)
    skipped: list[Skipped] = []
    for filename, payload, label in files:
        name = _base_name(filename)
        label = label.strip() if isinstance(label, str) and label.strip() else None
        expanded = payload if isinstance(payload, ExpandedZip) else None
        data = b"" if expanded is not None else bytes(payload)
        if expanded is None and not data:
            skipped.append(Skipped(name, "file is empty (0 bytes)"))
            continue
        if expanded is None and is_zip_upload(name, data):
            try:
                expanded = expand_zip(name, data, max_members=max_zip_members, max_bytes=max_zip_bytes)
            except ZipRefused as exc:
                skipped.append(Skipped(name, str(exc)))
                continue
        if expanded is not None:
            skipped.extend(expanded.skipped)
            for member in expanded.members:
                member_label = member.parts[0] if len(member.parts) > 1 else label
                if not member.data:
                    skipped.append(Skipped(f"{name}/{member.name}", "file is empty (0 bytes)"))
                    continue
                raw.append((f"{name}/{member.name}", member.parts[-1], member.data, member_label, member.digest))
            continue
        suffix = PurePosixPath(name).suffix
        if suffix.lower() in _NOT_IMAGE_EXTENSIONS:
            skipped.append(Skipped(name, f"not an image file ({suffix}); {_FORMATS_HINT}"))
            continue
        raw.append((name, name, data, label, None))

    label_order = list(dict.fromkeys(lbl for _, _, _, lbl, _ in raw if lbl is not None))
    mapping = _match_names(label_order, class_names) if class_names is not None else None
    if mapping is not None and class_names is not None:
        out_names = list(class_names)
    else:
        out_names = label_order
        mapping = {lbl: i for i, lbl in enumerate(label_order)}

    items: list[ImageItem] = []
    seen: set[str] = set()
    for key_name, display, blob, lbl, digest in raw:
        key = f"{digest or _digest(blob)}/{key_name}"
        if key in seen:
            skipped.append(Skipped(key_name, "duplicate: same name and content as an earlier upload"))
            continue
        seen.add(key)
        label_idx = mapping[lbl] if lbl is not None else None
        label_name = out_names[label_idx] if label_idx is not None else None
        items.append(ImageItem(key, display, label_idx, label_name, data=blob))
    return ImageSet(items, skipped, out_names)


# --------------------------------------------------------------------------------------------- scoring labels


def model_space_labels(image_set: ImageSet, class_names: Sequence[str], wnids: Sequence[str] | None = None
                       ) -> ImageSet:
    """The same images labelled in the model's class space, for scoring top-1 / top-5.

    The grouping labels of a set (e.g. upload classes named by the user) need not be model classes. Per item, the
    scoring label is: its class name when that names a model class (case-, space- and underscore-insensitive) or
    a wnid of ``wnids``; else the wnid at the start of its file name (``n02088632_bluetick.JPEG``), as for
    folders; else none (the item is not scored, but still counts for agreement and KL). Returns a new set whose
    ``class_names`` are ``class_names``; keys, order and ``skipped`` are unchanged.
    """
    if list(image_set.class_names) == list(class_names):
        return image_set
    by_name: dict[str, int] = {}
    for i, cname in enumerate(class_names):
        by_name.setdefault(_norm_name(cname), i)
    wnid_index = {w: i for i, w in enumerate(wnids or [])}

    def target(item: ImageItem) -> int | None:
        if item.label_name:
            name = item.label_name.strip()
            if _norm_name(name) in by_name:
                return by_name[_norm_name(name)]
            if name in wnid_index:
                return wnid_index[name]
        if wnid_index and (m := _WNID_RE.match(item.name)):
            return wnid_index.get(m.group(1))
        return None

    items = []
    for it in image_set.items:
        t = target(it)
        items.append(replace(it, label=t, label_name=class_names[t] if t is not None else None))
    return ImageSet(items, list(image_set.skipped), list(class_names))
