"""ImageNet's real validation layouts, labelled in a model's class space through wnids, and per-class subsets.

Two layouts occur in the wild:

- class folders named by wnid (torchvision ImageFolder, ``val/n01440764/ILSVRC2012_val_00000293.JPEG``):
  :func:`senet_viz.data.folders.folder_source` labels these already (wnid -> index in the model's 1000-class list);
- the official flat folder (``val/ILSVRC2012_val_00000001.JPEG`` ... ``00050000``) whose labels live in a
  separate file, read here by :func:`read_labels_file` and applied by :func:`labels_file_source`:

  * Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString`` where PredictionString starts with the wnid
    (``ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295``);
  * the devkit's ``ILSVRC2012_validation_ground_truth.txt``: line i holds the ``ILSVRC2012_ID`` (1..1000) of
    image i. These ids follow the devkit's own class order (``meta.mat``: 1 = n02119789 kit fox, 2 = n02100735
    English setter, ...), not the sorted-wnid order of the models' outputs, so the id -> wnid table is needed:
    ``meta.mat`` (read with scipy, when installed) or the ``map_clsloc.txt`` of later devkits
    (``n02119789 1 kit_fox``), given as ``devkit``. Neither timm nor torchvision ships that table (torchvision
    reads meta.mat with scipy), and it is not guessed here;
  * one wnid per line in image order (TensorFlow's ``imagenet_2012_validation_synset_labels.txt``).

Every image in the folder must have a label in the file and every wnid must be a class of the model, else a
``ValueError`` says which (a labels file of another split or another model must not pass silently); ids of the
file without an image are fine (a folder may hold part of the 50,000).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from senet_viz.data.sources import IMAGE_EXTENSIONS, ImageItem, ImageSet, Skipped

__all__ = ["labels_file_source", "read_devkit_synsets", "read_labels_file", "take_per_class", "val_image_id"]

_WNID = re.compile(r"^n\d{8}$")
_VAL_ID = re.compile(r"^ILSVRC2012_val_(\d{8})$")
# Files beside the images that are plainly not images (labels files, devkit data): not reported as skipped.
_QUIET_SUFFIXES = frozenset({".csv", ".txt", ".mat", ".json", ".md", ".tar", ".gz", ".tgz", ".xml"})
_EXAMPLES = 3


def val_image_id(number: int) -> str:
    """The ImageId of validation image ``number`` (1-based): ``ILSVRC2012_val_00000001``."""
    return f"ILSVRC2012_val_{number:08d}"


def _examples(values: Sequence[str]) -> str:
    more = f" and {len(values) - _EXAMPLES} more" if len(values) > _EXAMPLES else ""
    return ", ".join(values[:_EXAMPLES]) + more


def read_devkit_synsets(path: str | Path) -> dict[int, str]:
    """ILSVRC2012_ID (1..1000) -> wnid from the devkit: ``data/meta.mat`` (needs scipy) or a text table with
    lines ``<wnid> <id> [name]`` (``data/map_clsloc.txt`` of the ILSVRC2014+ devkits)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"devkit class table not found: {path}")
    if path.suffix.lower() == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError:
            raise ValueError(f"reading {path.name} needs scipy, which is not installed; use LOC_val_solution.csv "
                             "(Kaggle) as --labels instead, or the devkit's data/map_clsloc.txt as the class "
                             "table") from None
        try:
            synsets = loadmat(str(path), squeeze_me=True)["synsets"]
            table = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
        except (KeyError, ValueError, TypeError, IndexError, OSError) as exc:
            raise ValueError(f"{path.name} is not the devkit's meta.mat (synsets with ILSVRC2012_ID, WNID): "
                             f"{exc}") from None
    else:
        table = {}
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2 or not _WNID.match(parts[0]) or not parts[1].isdigit():
                raise ValueError(f"{path.name} line {n}: expected '<wnid> <ILSVRC2012_ID> [name]' "
                                 f"(e.g. 'n02119789 1 kit_fox'), got {line.strip()[:80]!r}")
            table[int(parts[1])] = parts[0]
    wanted = set(range(1, 1001))
    if set(table) & wanted != wanted:
        missing = sorted(wanted - set(table))
        raise ValueError(f"{path.name} does not map ILSVRC2012_IDs 1..1000 to wnids "
                         f"(missing {_examples([str(m) for m in missing])})")
    return {i: table[i] for i in sorted(wanted)}


def _read_loc_csv(path: Path, text: str) -> dict[str, str]:
    rows = csv.reader(text.splitlines())
    header = [h.strip() for h in next(rows)]
    try:
        id_col, pred_col = header.index("ImageId"), header.index("PredictionString")
    except ValueError:
        raise ValueError(f"{path.name}: expected the header ImageId,PredictionString, got {','.join(header)}") \
            from None
    out: dict[str, str] = {}
    for n, row in enumerate(rows, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(id_col, pred_col):
            raise ValueError(f"{path.name} row {n}: expected ImageId,PredictionString, got {','.join(row)[:80]!r}")
        image_id, tokens = row[id_col].strip(), row[pred_col].split()
        if not tokens or not _WNID.match(tokens[0]):
            raise ValueError(f"{path.name} row {n} ({image_id}): PredictionString must start with a wnid "
                             f"(e.g. n02119789), got {row[pred_col].strip()[:40]!r}")
        if out.setdefault(image_id, tokens[0]) != tokens[0]:
            raise ValueError(f"{path.name} row {n}: {image_id} is labelled both {out[image_id]} and {tokens[0]}")
    return out


def read_labels_file(path: str | Path, devkit: str | Path | None = None) -> dict[str, str]:
    """ImageId (file name without extension, e.g. ``ILSVRC2012_val_00000001``) -> wnid, from one of the files
    described in the module docstring. ``devkit`` (meta.mat or map_clsloc.txt) is needed for the devkit's ground
    truth, whose ids are not in wnid order. Raises ``FileNotFoundError`` or ``ValueError`` with the reason."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read labels file {path.name}: {exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    first = next((line for line in lines if line), "")
    if first.replace(" ", "").startswith("ImageId,"):
        return _read_loc_csv(path, text)
    # Line-based files: line i (1-based) labels ILSVRC2012_val_<i>; blank lines only at the end.
    while lines and not lines[-1]:
        lines.pop()
    if lines and all(line.isdigit() for line in lines):
        if devkit is None:
            raise ValueError(
                f"{path.name} holds devkit class ids (ILSVRC2012_ID), which follow the devkit's meta.mat order, "
                "not the models' sorted-wnid order; pass the devkit's class table (--devkit-meta "
                "ILSVRC2012_devkit_t12/data/meta.mat, needs scipy, or a map_clsloc.txt), or use Kaggle's "
                "LOC_val_solution.csv as --labels")
        table = read_devkit_synsets(devkit)
        out = {}
        for n, line in enumerate(lines, start=1):
            if int(line) not in table:
                raise ValueError(f"{path.name} line {n}: ILSVRC2012_ID {line} is outside 1..1000")
            out[val_image_id(n)] = table[int(line)]
        return out
    if lines and all(_WNID.match(line) for line in lines):
        return {val_image_id(n): line for n, line in enumerate(lines, start=1)}
    raise ValueError(f"{path.name} is not a labels file this reads: expected Kaggle's LOC_val_solution.csv "
                     "(ImageId,PredictionString), the devkit's ILSVRC2012_validation_ground_truth.txt (one id per "
                     "line, with --devkit-meta) or one wnid per line in image order")


def labels_file_source(path: str | Path, labels: str | Path, class_names: Sequence[str],
                       wnids: Sequence[str] | None, devkit: str | Path | None = None) -> ImageSet:
    """The images under folder ``path`` (flat, or nested: each file is looked up by its name without extension),
    labelled by ``labels`` (see :func:`read_labels_file`) with the index of their wnid in ``wnids``, the model's
    class order (so labels are the model's output indices). Items are sorted by key (relative path), like
    :func:`senet_viz.data.folders.folder_source`.

    Raises ``FileNotFoundError`` for a missing folder or file, ``ValueError`` when the model has no wnids, an
    image has no label in the file, or a label is not a class of the model (with examples of each)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"not a folder: {root} (give the folder that holds the images)")
    if not wnids:
        raise ValueError("a labels file names classes by wnid, but this model has no ImageNet wnids; "
                         "use class folders instead")
    if len(wnids) != len(class_names):
        raise ValueError(f"{len(wnids)} wnids but {len(class_names)} class names; pass both in model order")
    wnid_of = read_labels_file(labels, devkit)
    index = {w: i for i, w in enumerate(wnids)}
    labels_path = Path(labels).expanduser().resolve()
    items: list[ImageItem] = []
    skipped: list[Skipped] = []
    missing: list[str] = []
    unknown: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            f = Path(dirpath) / name
            rel = f.relative_to(root).as_posix()
            suffix = f.suffix.lower()
            if name.startswith(".") or f.resolve() == labels_path:
                continue
            if suffix not in IMAGE_EXTENSIONS:
                if suffix not in _QUIET_SUFFIXES:
                    skipped.append(Skipped(rel, f"not a supported image file type ({suffix or 'no extension'})"))
                continue
            wnid = wnid_of.get(f.stem)
            if wnid is None:
                missing.append(rel)
            elif wnid not in index:
                unknown.append(f"{rel} ({wnid})")
            else:
                label = index[wnid]
                items.append(ImageItem(rel, name, label, class_names[label], path=f))
    label_file = Path(labels).name
    if missing:
        raise ValueError(f"{len(missing)} image(s) in {root} have no label in {label_file}, e.g. "
                         f"{_examples(missing)}; is it the labels file of these images (the name without its "
                         "extension must be an ImageId of the file)?")
    if unknown:
        raise ValueError(f"{label_file} labels {len(unknown)} image(s) with wnids that are not classes of this "
                         f"model: {_examples(unknown)}")
    if not items:
        raise ValueError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    items.sort(key=lambda it: it.key)
    return ImageSet(items, skipped, list(class_names))


def take_per_class(images: ImageSet, k: int) -> ImageSet:
    """The first ``k`` images of every class, by sorted key within the class (deterministic; the paper's protocol
    is 50 per class). Unlabelled images are left out; the result keeps the set's sorted-key order, its
    ``class_names`` and ``skipped``."""
    if k < 1:
        raise ValueError(f"--per-class must be at least 1, got {k}")
    taken: dict[int, int] = {}
    kept: list[ImageItem] = []
    for item in sorted(images.items, key=lambda it: it.key):
        if item.label is None or taken.get(item.label, 0) >= k:
            continue
        taken[item.label] = taken.get(item.label, 0) + 1
        kept.append(item)
    return replace(images, items=kept, skipped=list(images.skipped))
