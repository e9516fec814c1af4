"""Tiny ImageNet, 100 classes (``../shared/data/tiny-imagenet-100``), for ``se_resnet50_tiny100``.

The shared zip holds Tiny ImageNet's training split for 100 classes: 500 photos of 64 x 64 per class, stored as
``train/<wnid>/<wnid>_<n>.JPEG``. There is no validation split, so 50 images per class are held out as the test
set (the SENet paper's 50 per class), chosen deterministically: the 50 file names with the smallest sha1 digests.
The held-out images are never trained on.

Decoding 50,000 JPEGs takes a while, so the whole split is decoded once into a uint8 ``N x 64 x 64 x 3`` array in
the per-user cache (about 614 MB, never in the repository), keyed by the zip's size and a digest of its index.
"""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.paths import ASSETS_DIR, SHARED_DIR, cache_dir

DATA_DIR = SHARED_DIR / "data" / "tiny-imagenet-100"
ZIP_PATH = DATA_DIR / "train.zip"
CLASSES_TSV = DATA_DIR / "classes.tsv"
IMAGE_SIZE = 64
HELD_OUT_PER_CLASS = 50
LABEL_SET = "tiny-imagenet-100"
#: Per-channel RGB mean / std (pixels in [0, 1]): the values commonly used for Tiny ImageNet-200. On this split's
#: 45,000 training images (every 5th) ``channel_stats`` gives (0.485, 0.450, 0.400) / (0.276, 0.270, 0.282): close.
MEAN: tuple[float, float, float] = (0.4802, 0.4481, 0.3975)
STD: tuple[float, float, float] = (0.2770, 0.2691, 0.2821)
SAMPLES_DIR = ASSETS_DIR / "tiny100_samples"


def read_classes(path: str | Path = CLASSES_TSV) -> tuple[list[str], list[str]]:
    """(wnids, names) in sorted-wnid order, the class index order; a name is the first synonym of the TSV line."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            wnid, names = line.split("\t", 1)
            rows.append((wnid.strip(), names.split(",")[0].strip()))
    rows.sort()
    return [w for w, _ in rows], [n for _, n in rows]


def held_out_key(file_name: str) -> str:
    """The sort key that picks the held-out images: sha1 of the bare file name (e.g. ``n01443537_12.JPEG``)."""
    return hashlib.sha1(Path(file_name).name.encode()).hexdigest()


@dataclass
class Split:
    """Decoded images (uint8 N x 64 x 64 x 3), labels (int64 N), zip member names; train and test parts."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    test: np.ndarray  # bool N: held out

    def part(self, test: bool) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(self.test == test)
        return self.images[idx], self.labels[idx]


def list_members(zip_path: str | Path, wnids: Sequence[str], max_per_class: int | None = None) -> list[str]:
    """The JPEG members of the zip, sorted by class then file name; ``max_per_class`` keeps the first n per class
    by held-out key (so a small subset keeps both held-out and training images in proportion)."""
    known = set(wnids)
    by_class: dict[str, list[str]] = {w: [] for w in wnids}
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            if name.upper().endswith(".JPEG") and len(parts) >= 2 and parts[-2] in known:
                by_class[parts[-2]].append(name)
    out = []
    for w in wnids:
        names = sorted(by_class[w])
        if max_per_class is not None:
            names = sorted(sorted(names, key=held_out_key)[:max_per_class])
        out.extend(names)
    return out


def held_out_mask(names: Sequence[str], labels: np.ndarray, per_class: int) -> np.ndarray:
    """True for the ``per_class`` names of each class with the smallest :func:`held_out_key`."""
    mask = np.zeros(len(names), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keys = sorted(idx, key=lambda i: held_out_key(names[i]))
        mask[keys[:per_class]] = True
    return mask


def decode(zip_path: str | Path, names: Sequence[str]) -> np.ndarray:
    """Decode the members to uint8 N x 64 x 64 x 3 (RGB; greyscale files converted)."""
    from PIL import Image

    out = np.empty((len(names), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    with zipfile.ZipFile(zip_path) as zf:
        for i, name in enumerate(names):
            with Image.open(io.BytesIO(zf.read(name))) as im:
                im = im.convert("RGB")
                if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                    im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
                out[i] = np.asarray(im)
    return out


def _cache_key(zip_path: Path, names: Sequence[str]) -> str:
    h = hashlib.sha1(f"{zip_path.stat().st_size}\n".encode())
    h.update("\n".join(names).encode())
    return h.hexdigest()[:16]


def load_split(zip_path: str | Path = ZIP_PATH, classes: str | Path | None = None, *,
               max_per_class: int | None = None, held_out_per_class: int = HELD_OUT_PER_CLASS,
               cache: str | Path | None = None, log=print) -> Split:
    """The decoded split with its held-out mask; decoded arrays are cached under ``cache`` (default
    ``<cache>/tiny-imagenet-100``) and memory-mapped on later calls."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise FileNotFoundError(f"Tiny ImageNet zip not found: {zip_path}")
    wnids, _ = read_classes(classes or zip_path.parent / "classes.tsv")
    names = list_members(zip_path, wnids, max_per_class)
    index = {w: i for i, w in enumerate(wnids)}
    labels = np.array([index[n.split("/")[-2]] for n in names], dtype=np.int64)
    folder = Path(cache) if cache is not None else cache_dir() / "tiny-imagenet-100"
    npy = folder / f"images_{_cache_key(zip_path, names)}.npy"
    if npy.is_file():
        images = np.load(npy, mmap_mode="r")
    else:
        log(f"decoding {len(names):,} JPEGs from {zip_path} into {npy} (once)")
        images = decode(zip_path, names)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_suffix(".tmp.npy")
        np.save(tmp, images)
        tmp.replace(npy)
    return Split(images=images, labels=labels, names=names, test=held_out_mask(names, labels, held_out_per_class))


def held_out_source(limit: int | None = None, zip_path: str | Path = ZIP_PATH) -> ImageSet:
    """The 5,000 held-out images (50 per class; the first ``limit`` in class order) as an image source in the
    model's label space; items carry the original JPEG bytes read from the shared zip."""
    return ImageSet(list(_held_out_items(str(zip_path), limit)), [], read_classes(Path(zip_path).parent
                                                                                   / "classes.tsv")[1])


def held_out_available() -> bool:
    """True when the shared zip is on disk (so the full held-out set can be offered as an image source)."""
    return ZIP_PATH.is_file() and CLASSES_TSV.is_file()


@functools.lru_cache(maxsize=2)
def _held_out_items(zip_path: str, limit: int | None) -> tuple[ImageItem, ...]:
    wnids, names = read_classes(Path(zip_path).parent / "classes.tsv")
    members = list_members(zip_path, wnids)
    index = {w: i for i, w in enumerate(wnids)}
    labels = np.array([index[m.split("/")[-2]] for m in members])
    mask = held_out_mask(members, labels, HELD_OUT_PER_CLASS)
    chosen = [i for i in np.flatnonzero(mask)][:limit]
    with zipfile.ZipFile(zip_path) as zf:
        return tuple(ImageItem(f"tiny-imagenet-100/{members[i]}", Path(members[i]).name, int(labels[i]),
                               names[labels[i]], data=zf.read(members[i])) for i in chosen)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N x H x W x 3 images, pixels scaled to [0, 1]."""
    x = np.asarray(images, dtype=np.float64).reshape(-1, 3) / 255.0
    return tuple(float(v) for v in x.mean(0)), tuple(float(v) for v in x.std(0))


# --------------------------------------------------------------------------------------------- shipped samples

#: The classes whose held-out images ship in ``assets/tiny100_samples`` (goldfish and cliff: the paper's Fig. 6).
SAMPLE_CLASSES: tuple[str, ...] = ("n01443537", "n09246464", "n01882714", "n02279972", "n02123045", "n04146614",
                                   "n04285008", "n07749582", "n07873807", "n09332890", "n02504458", "n04366367")


def folder_name(class_name: str) -> str:
    """A class's sample folder: spaces become ``_`` (:func:`senet_viz.data.folders.folder_source` maps it back)."""
    return class_name.replace("/", "_").replace(" ", "_")


def write_samples(dest: str | Path = SAMPLES_DIR, zip_path: str | Path = ZIP_PATH,
                  wnids: Sequence[str] = SAMPLE_CLASSES, per_class: int = HELD_OUT_PER_CLASS) -> Path:
    """Copy the held-out JPEGs (original bytes) of ``wnids`` to ``dest/<class name>/`` with a README."""
    from senet_viz.models.tiny100 import templates

    zip_path, dest = Path(zip_path), Path(dest)
    all_wnids, names = read_classes(zip_path.parent / "classes.tsv")
    members = list_members(zip_path, all_wnids)
    by_class: dict[str, list[str]] = {}
    for m in members:
        by_class.setdefault(m.split("/")[-2], []).append(m)
    dest.mkdir(parents=True, exist_ok=True)
    listed = []
    with zipfile.ZipFile(zip_path) as zf:
        for w in wnids:
            held = sorted(by_class[w], key=held_out_key)[:per_class]
            name = names[all_wnids.index(w)]
            folder = dest / folder_name(name)
            folder.mkdir(exist_ok=True)
            for m in sorted(held):
                (folder / Path(m).name).write_bytes(zf.read(m))
            listed.append(f"| `{folder_name(name)}` | {w} | {len(held)} |")
    (dest / "README.md").write_text(templates.read("samples_readme.md").replace("$classes", "\n".join(listed))
                                    .replace("$per_class", str(per_class)).replace("$n_classes", str(len(wnids))))
    return dest
