"""Fashion-MNIST for the embedded model: the IDX reader, where the dataset is found (or downloaded), the test set
as an image source, and the sample folder shipped in ``assets/fmnist_samples``.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando Research, MIT licence): 28 x 28 grey garments (light garment
on a black background), 60,000 training and 10,000 test images, 10 classes. Read with gzip + numpy from Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), ``$SENET_VIZ_FMNIST_DIR`` or a previous
download; training downloads it through torchvision only when none of these exists.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path
from string import Template

import numpy as np

from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.models.embedded import templates
from senet_viz.paths import ASSETS_DIR, cache_dir

CLASS_NAMES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                "Sneaker", "Bag", "Ankle boot")
LABEL_SET = "fashion-mnist"
#: Pixel mean and standard deviation of the 60,000 training images (pixels scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530
IMAGE_SIZE = 28
TEST_SIZE = 10_000

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "SENET_VIZ_FMNIST_DIR"
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

SAMPLES_DIR = ASSETS_DIR / "fmnist_samples"
SAMPLES_PER_CLASS = 30


def download_root() -> Path:
    """Where a downloaded Fashion-MNIST is kept: ``<cache>/fashion-mnist`` (see :func:`senet_viz.paths.cache_dir`)."""
    return cache_dir() / "fashion-mnist"


def folder_name(class_name: str) -> str:
    """The sample folder of a class: ``T-shirt/top`` -> ``T-shirt_top``, ``Ankle boot`` -> ``Ankle_boot``.
    :func:`senet_viz.data.folders.folder_source` maps it back (``_`` and ``/`` read as a space)."""
    return class_name.replace("/", "_").replace(" ", "_")


# --------------------------------------------------------------------------------------------- IDX files


_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; gzip-compressed if the name ends in ``.gz``) into a native-endian
    numpy array. Raises ``ValueError`` if the header or the size is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path.name}: not an IDX file (magic {raw[:4].hex() or 'missing'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path.name}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) != header + count * dtype.itemsize:
        raise ValueError(f"{path.name}: {len(raw) - header} data bytes, expected {count * dtype.itemsize} for "
                         f"shape {dims}")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _split_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    out = []
    for stem in _FILES[split]:
        found = next((folder / f"{stem}{ext}" for ext in (".gz", "") if (folder / f"{stem}{ext}").is_file()), None)
        if found is None:
            return None
        out.append(found)
    return out[0], out[1]


# --------------------------------------------------------------------------------------------- the dataset


def dataset_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: $SENET_VIZ_FMNIST_DIR, Debian's package, the download cache."""
    env = [Path(d) for d in os.environ.get(DATA_DIR_ENV, "").split(os.pathsep) if d]
    return [*env, DEBIAN_DIR, download_root() / "FashionMNIST" / "raw"]


def find_fashion_mnist(root: str | Path | None = None) -> Path | None:
    """The first folder (``root`` if given, else :func:`dataset_dirs`) that holds all four IDX files."""
    for folder in [Path(root)] if root is not None else dataset_dirs():
        if _split_files(folder, "train") and _split_files(folder, "test"):
            return folder
    return None


def fashion_mnist_available() -> bool:
    """True when the full dataset is on disk (so the full test set can be offered as an image source)."""
    return find_fashion_mnist() is not None


def _download() -> Path:
    from torchvision.datasets import FashionMNIST

    root = download_root()
    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def load_fashion_mnist(split: str = "test", root: str | Path | None = None,
                       download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 N x 28 x 28, labels int64 N)`` of the ``"train"`` or ``"test"`` split.

    Looks in ``root`` or :func:`dataset_dirs`; with ``download=True`` and nothing found, fetches it through
    torchvision's downloader into :func:`download_root`. Raises ``FileNotFoundError`` otherwise.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    folder = find_fashion_mnist(root)
    if folder is None and download and root is None:
        folder = _download()
    if folder is None:
        where = str(root) if root is not None else ", ".join(str(d) for d in dataset_dirs())
        raise FileNotFoundError(f"Fashion-MNIST not found in {where}; install Debian's dataset-fashion-mnist, set "
                                f"${DATA_DIR_ENV}, or run `python -m senet_viz train` online to download it")
    files = _split_files(folder, split)
    assert files is not None  # find_fashion_mnist checked both splits
    images, labels = read_idx(files[0]), read_idx(files[1]).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise ValueError(f"{files[0]}: expected uint8 N x 28 x 28 images, got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"{files[1]}: expected {len(images)} labels in 0..9")
    return images, labels


def _png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@functools.lru_cache(maxsize=2)
def _test_items(folder: str, limit: int | None) -> tuple[ImageItem, ...]:
    images, labels = load_fashion_mnist("test", root=folder)
    n = len(images) if limit is None else min(limit, len(images))
    return tuple(ImageItem(f"fashion-mnist/test/{i:05d}.png", f"test_{i:05d}.png", int(labels[i]),
                           CLASS_NAMES[labels[i]], data=_png(images[i])) for i in range(n))


def fashion_mnist_test_source(limit: int | None = None, root: str | Path | None = None) -> ImageSet:
    """The Fashion-MNIST test set (10,000 images, or the first ``limit``) as an image source in the model's
    label space. Items carry PNG bytes (about 5 MB in all, encoded once per process in a few seconds).
    Raises ``FileNotFoundError`` when the dataset is not installed (see :func:`fashion_mnist_available`)."""
    folder = find_fashion_mnist(root)
    if folder is None:
        load_fashion_mnist("test", root=root)  # raises with the places looked in
    return ImageSet(list(_test_items(str(folder), limit)), [], list(CLASS_NAMES))


# --------------------------------------------------------------------------------------------- the sample


def write_samples(dest: str | Path = SAMPLES_DIR, per_class: int = SAMPLES_PER_CLASS,
                  root: str | Path | None = None) -> Path:
    """Write the first ``per_class`` test images of every class (test-set order) to
    ``dest/<class folder>/<test index>.png`` plus a README crediting the dataset. Deterministic."""
    images, labels = load_fashion_mnist("test", root=root)
    dest = Path(dest)
    for c, cname in enumerate(CLASS_NAMES):
        folder = dest / folder_name(cname)
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            (folder / f"{i:05d}.png").write_bytes(_png(images[i]))
    (dest / "README.md").write_text(samples_readme(per_class))
    return dest


def samples_readme(per_class: int = SAMPLES_PER_CLASS) -> str:
    """The sample folder's README (``templates/samples_readme.md``), crediting the dataset and its licence."""
    return Template(templates.read("samples_readme.md")).substitute(per_class=per_class,
                                                                    total=per_class * len(CLASS_NAMES))
