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

Decoding one image is :mod:`senet_viz.decode` (re-exported here).

Size: three kinds of source (folders, uploads, zip archives) share the item/set classes, the skip reasons and the
label-space rules above; split, each would import the other two.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    pass

from .decode import (  # re-exported (see __all__): the decoding API has always been importable from here
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
    "MAX_ZIP_BYTES",
    "MAX_ZIP_MEMBERS",
    "ImageDecodeError",
    "ImageItem",
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
    "uploads_source",
    "validate",
]


#: Limits for one uploaded zip archive (zip-bomb guard): members, and total declared uncompressed bytes.
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_BYTES = 1 << 30

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


def _is_hidden_or_junk(name: str) -> bool:
    return name.startswith(".") or name.startswith("~$") or name.casefold() in _IGNORED_NAMES


def _classify_file(name: str, extensions: frozenset[str]) -> str | None:
    """'image', 'ignore' (silently), or a reason to report the file as skipped."""
    if _is_hidden_or_junk(name):
        return "ignore"
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in extensions:
        return "image"
    if suffix in _NOT_IMAGE_EXTENSIONS:
        return "ignore"
    shown = suffix or "no extension"
    return f"not a supported image file type ({shown}); expected one of {', '.join(sorted(extensions))}"


def _walk_files(root: Path) -> list[Path]:
    """All files under ``root``, sorted; hidden folders and __MACOSX pruned, folder symlinks not followed."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden_or_junk(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames))
    return out


def folder_source(
    path: str | Path,
    class_names: list[str] | None = None,
    wnids: list[str] | None = None,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
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
    files) are ignored; other unknown file types are listed in ``skipped``. Raises ``FileNotFoundError`` for
    a missing folder and ``ValueError`` for a path that is not a folder or a folder with no images.
    """
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

    skipped: list[Skipped] = []
    top_images: list[Path] = []
    by_class: dict[str, list[Path]] = {}
    for f in _walk_files(root):
        rel = f.relative_to(root)
        kind = _classify_file(f.name, exts)
        if kind == "ignore":
            continue
        if kind != "image":
            skipped.append(Skipped(rel.as_posix(), kind))
        elif len(rel.parts) == 1:
            top_images.append(f)
        else:
            by_class.setdefault(rel.parts[0], []).append(f)

    def item(f: Path, label: int | None, label_name: str | None) -> ImageItem:
        return ImageItem(f.relative_to(root).as_posix(), f.name, label, label_name, path=f)

    items: list[ImageItem] = []
    if not by_class:  # layout (a)
        labels = [wnid_index.get(m.group(1)) if (m := _WNID_RE.match(f.name)) else None for f in top_images]
        has_labels = any(lbl is not None for lbl in labels)
        out_names = wnid_class_names() if has_labels else list(class_names or [])
        for f, label in zip(top_images, labels, strict=True):
            items.append(item(f, label, out_names[label] if label is not None else None))
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
            for f in by_class[d]:
                items.append(item(f, mapping[d], out_names[mapping[d]]))
        skipped.extend(Skipped(f.name, "image outside the class folders (unlabelled); move it into one")
                       for f in top_images)

    if not items:
        found = ""
        if skipped:
            found = f"; {len(skipped)} file(s) skipped, e.g. {skipped[0].file}: {skipped[0].reason}"
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


def _zip_members(
    zip_name: str, data: bytes, max_members: int, max_bytes: int
) -> tuple[list[tuple[list[str], str, bytes]], list[Skipped]]:
    """Safe image members of a zip: ([(label path parts, member name, bytes)], skipped).

    The whole archive is refused (one Skipped) if it has too many members or declares too many uncompressed
    bytes; member sizes cannot lie upward because ``zipfile`` stops reading at the declared size."""
    skipped: list[Skipped] = []
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        return [], [Skipped(zip_name, f"not a valid zip archive ({exc}); re-create it")]
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            reason = (f"zip has {len(infos):,} entries, over the limit of {max_members:,}; "
                      "upload fewer images per archive")
            return [], [Skipped(zip_name, reason)]
        total = sum(i.file_size for i in infos if not i.is_dir())
        if total > max_bytes:
            reason = (f"zip would expand to {total / 2**20:,.1f} MiB, over the limit of "
                      f"{max_bytes / 2**20:,.1f} MiB (possible zip bomb); upload it in parts")
            return [], [Skipped(zip_name, reason)]
        members: list[tuple[list[str], str, bytes]] = []
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
            if PurePosixPath(parts[-1]).suffix.lower() == ".zip":
                skipped.append(Skipped(where, "nested zip archives are not expanded; upload it separately"))
                continue
            kind = _classify_file(parts[-1], IMAGE_EXTENSIONS)
            if kind == "ignore":
                continue
            if kind != "image":
                skipped.append(Skipped(where, kind))
                continue
            try:
                with zf.open(info) as fh:
                    blob = fh.read(info.file_size + 1)
            except Exception as exc:  # encrypted member, bad CRC, unsupported compression, ...
                skipped.append(Skipped(where, f"cannot extract from the zip: {exc}"))
                continue
            members.append((parts, name, blob))
    # A zip of a folder wraps everything in that folder: drop leading folders that all members share,
    # as long as the members still sit in class folders below them.
    while members and all(len(p) > 2 for p, _, _ in members) and len({p[0] for p, _, _ in members}) == 1:
        members = [(p[1:], n, b) for p, n, b in members]
    return members, skipped


def uploads_source(
    files: list[tuple[str, bytes, str | None]],
    class_names: list[str] | None = None,
    *,
    max_zip_members: int = MAX_ZIP_MEMBERS,
    max_zip_bytes: int = MAX_ZIP_BYTES,
) -> ImageSet:
    """Build an :class:`ImageSet` from in-memory uploads ``(filename, bytes, class label or None)``.

    A ``.zip`` upload is expanded: its first-level folders (below a single wrapping folder, if any) are
    class labels, files at its top take the zip's own label. Labels index ``class_names`` if it is given and
    *every* label matches one of them (case-insensitive, ``_`` = space); otherwise they index the user's
    label names in order of first appearance, which become the set's ``class_names``.

    ``key`` is ``<sha256 prefix>/<name>``: an identical second upload (same name and bytes) is skipped as a
    duplicate. Empty files and broken or oversized zips are listed in ``skipped``; other files are decoded
    lazily (see :func:`validate`).
    """
    raw: list[tuple[str, str, bytes, str | None]] = []  # (key name, display name, bytes, label name)
    skipped: list[Skipped] = []
    for filename, data, label in files:
        name = _base_name(filename)
        label = label.strip() if isinstance(label, str) and label.strip() else None
        data = bytes(data)
        if not data:
            skipped.append(Skipped(name, "file is empty (0 bytes)"))
            continue
        if name.lower().endswith(".zip") or (data[:4] == b"PK\x03\x04" and "." not in name):
            members, bad = _zip_members(name, data, max_zip_members, max_zip_bytes)
            skipped.extend(bad)
            for parts, member, blob in members:
                member_label = parts[0] if len(parts) > 1 else label
                if not blob:
                    skipped.append(Skipped(f"{name}/{member}", "file is empty (0 bytes)"))
                    continue
                raw.append((f"{name}/{member}", parts[-1], blob, member_label))
            continue
        suffix = PurePosixPath(name).suffix
        if suffix.lower() in _NOT_IMAGE_EXTENSIONS:
            skipped.append(Skipped(name, f"not an image file ({suffix}); {_FORMATS_HINT}"))
            continue
        raw.append((name, name, data, label))

    label_order = list(dict.fromkeys(lbl for *_, lbl in raw if lbl is not None))
    mapping = _match_names(label_order, class_names) if class_names is not None else None
    if mapping is not None and class_names is not None:
        out_names = list(class_names)
    else:
        out_names = label_order
        mapping = {lbl: i for i, lbl in enumerate(label_order)}

    items: list[ImageItem] = []
    seen: set[str] = set()
    for key_name, display, blob, lbl in raw:
        key = f"{_digest(blob)}/{key_name}"
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
