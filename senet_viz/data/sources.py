"""Labelled image sets: the items of a source, the files left out and why, what counts as an image file.

Everything the rest of the library sees is an RGB :class:`PIL.Image.Image` produced by
:func:`senet_viz.data.decode.decode_image`, whose only documented exception is
:class:`~senet_viz.data.decode.ImageDecodeError` (a ``ValueError``). Sources are listed cheaply (no pixels are
decoded at listing time); decoding happens lazily in :meth:`ImageItem.load`, typically in the runner, or up front
with :func:`validate`.

The sources: folders (:mod:`senet_viz.data.folders`), uploads and zip archives (:mod:`senet_viz.data.uploads`),
ImageNet's labels files (:mod:`senet_viz.data.imagenet`). Labels are integer indices into
:attr:`ImageSet.class_names`, in the model's class space or the user's own (:mod:`senet_viz.data.labels`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from senet_viz.data import decode
from senet_viz.data.labels import WNID_RE, norm_name

__all__ = [
    "IMAGE_EXTENSIONS",
    "NOT_IMAGE_EXTENSIONS",
    "ImageItem",
    "ImageSet",
    "Skipped",
    "classify_file",
    "file_suffix",
    "is_hidden_or_junk",
    "model_space_labels",
    "validate",
]

#: File extensions listed as images (lower case, with the dot).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif"}
)

# Files that are obviously not images are ignored without a word; anything else that is not an image
# extension is reported in ImageSet.skipped so the user sees why a file was left out.
NOT_IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".txt", ".md", ".rst", ".json", ".jsonl", ".csv", ".tsv", ".xml", ".html", ".htm", ".yaml", ".yml",
     ".toml", ".ini", ".cfg", ".log", ".py", ".ipynb", ".sh", ".db", ".sqlite", ".parquet", ".npy", ".npz",
     ".pt", ".pth", ".safetensors", ".tflite", ".onnx", ".pkl", ".pdf", ".lnk", ".url"}
)
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})


# --------------------------------------------------------------------------------------------- file kinds


def is_hidden_or_junk(name: str) -> bool:
    """Hidden files and folders, Office lock files, and the junk operating systems leave (``__MACOSX``, ...)."""
    return name.startswith(".") or name.startswith("~$") or name.casefold() in _IGNORED_NAMES


def file_suffix(name: str) -> str:
    """``PurePosixPath(name).suffix.lower()``, without building a path (50,000 of them per listing)."""
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def classify_file(name: str, extensions: frozenset[str]) -> str | None:
    """'image', 'ignore' (silently), or a reason to report the file as skipped."""
    if is_hidden_or_junk(name):
        return "ignore"
    suffix = file_suffix(name)
    if suffix in extensions:
        return "image"
    if suffix in NOT_IMAGE_EXTENSIONS:
        return "ignore"
    shown = suffix or "no extension"
    return f"not a supported image file type ({shown}); expected one of {', '.join(sorted(extensions))}"


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
        """Decode this image to RGB (:func:`senet_viz.data.decode.decode_image`; raises its ``ImageDecodeError``)."""
        if self.data is not None:
            return decode.decode_image(self.data, max_pixels)
        if self.path is not None:
            return decode.decode_image(self.path, max_pixels)
        raise decode.ImageDecodeError(f"{self.name}: item has neither a path nor data")

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
            by_name.setdefault(norm_name(cname), []).append(i)
        for c in classes:
            if isinstance(c, str):
                if norm_name(c) not in by_name:
                    raise ValueError(f"unknown class name {c!r}")
                wanted.update(by_name[norm_name(c)])
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
        except decode.ImageDecodeError as exc:
            skipped.append(Skipped(item.origin, str(exc)))
        if progress is not None:
            progress(done, total)
    return ImageSet(good, skipped, list(image_set.class_names))



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
        by_name.setdefault(norm_name(cname), i)
    wnid_index = {w: i for i, w in enumerate(wnids or [])}

    def target(item: ImageItem) -> int | None:
        if item.label_name:
            name = item.label_name.strip()
            if norm_name(name) in by_name:
                return by_name[norm_name(name)]
            if name in wnid_index:
                return wnid_index[name]
        if wnid_index and (m := WNID_RE.match(item.name)):
            return wnid_index.get(m.group(1))
        return None

    items = []
    for it in image_set.items:
        t = target(it)
        items.append(replace(it, label=t, label_name=class_names[t] if t is not None else None))
    return ImageSet(items, list(image_set.skipped), list(class_names))
