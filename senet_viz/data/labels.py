"""Class labels: the ImageNet-1k wnids and names (offline, from timm), and matching of class names.

Labels are integer indices into a set's ``class_names``. Two label spaces occur:

- the model's space (e.g. the 1000 ImageNet classes): ImageNet-style file names (``n01443537_goldfish.JPEG``),
  class folders named by wnid, or class folders / upload labels that *all* match the given ``class_names``;
- the user's own space: otherwise, the user's class names in a fixed order (sorted folder names, or the order
  of first appearance for uploads). Accuracy against a model only makes sense in the model's space.

Names match case-, space- and underscore-insensitively (:func:`norm_name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = ["WNID_RE", "imagenet_class_names", "imagenet_wnids", "match_names", "names_for_wnids", "norm_name"]

#: A WordNet id at the start of a name (``n01443537_goldfish.JPEG``), as group 1.
WNID_RE = re.compile(r"^(n\d{8})(?=[_\-. ]|$)")


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


def names_for_wnids(wnids: Sequence[str]) -> list[str]:
    """The ImageNet class name of each wnid (a wnid that is not an ImageNet-1k class stands for itself)."""
    std_wnids, std_names = _imagenet_info()
    lookup = dict(zip(std_wnids, std_names, strict=True))
    return [lookup.get(w, w) for w in wnids]


def norm_name(name: str) -> str:
    """A class name as compared: case-folded, ``_`` and ``/`` read as spaces, runs of spaces as one (a folder
    ``T-shirt_top`` is the class ``T-shirt/top``: a folder name cannot hold a ``/``)."""
    return " ".join(name.replace("_", " ").replace("/", " ").split()).casefold()


def match_names(names: Iterable[str], class_names: Sequence[str]) -> dict[str, int] | None:
    """Map every name to its index in ``class_names`` (compared with :func:`norm_name`; a name that occurs twice
    maps to its first index), or None if any name does not match."""
    index: dict[str, int] = {}
    for i, cname in enumerate(class_names):
        index.setdefault(norm_name(cname), i)
    out: dict[str, int] = {}
    for name in names:
        i = index.get(norm_name(name))
        if i is None:
            return None
        out[name] = i
    return out
