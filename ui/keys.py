"""Content keys of what the shared results depend on: the model (:func:`model_key`), the images
(:func:`images_key`), one input's pixels (:func:`pixels_key`) and a weights or model file (:func:`weights_digest`).
Two requests with equal keys get one result, whichever session asks."""

from __future__ import annotations

import hashlib
import os
import weakref

import torch

from senet_viz.data import watch
from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.lru import LRU
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.weights import file_digest

# images_key per ImageSet object (by id, checked against a weak reference: an id can be reused once the set is gone)
_image_keys: LRU[int, tuple] = LRU(64)


def item_stamp(item: ImageItem) -> tuple:
    """What identifies an item's pixels: uploads carry their content hash in the key; a file on disk is its
    absolute path (keys are relative to the folder), size and modification time, so an edited file is new.
    See :func:`_stamps` for when a file is stat'ed."""
    return _stamps([item])[0]


def _folder_of(path: str, key: str) -> str | None:
    """The folder a folder item was listed from: its path is ``<folder>/<key>`` (folder_source, imagenet)."""
    if key and len(path) > len(key) + 1 and path.endswith(key) and path[-len(key) - 1] in ("/", os.sep):
        return path[: -len(key) - 1]
    return None


def _stamps(items: list[ImageItem]) -> list[tuple]:
    """:func:`item_stamp` of each item. Files listed from a folder are not stat'ed one by one on every call: the
    folder is watched (:func:`senet_viz.data.watch.file_stamps`) and their stamps are taken again only after a
    change under it, which is seen once the watcher delivered its event (milliseconds after the write). Without a
    watcher (no ``watchdog``, inotify limits) each file is stat'ed, as are files of no folder."""
    out: list = [None] * len(items)
    by_folder: dict[str | None, tuple[list[int], list[str]]] = {}
    folder, prefix, group = None, None, None
    for i, it in enumerate(items):
        if it.path is None:
            out[i] = ("data", len(it.data or b""))
            continue
        path = str(it.path)
        if prefix is None or path != prefix + it.key:  # most items share the previous item's folder
            folder = _folder_of(path, it.key)
            prefix = None if folder is None else path[: len(folder) + 1]
            group = by_folder.setdefault(folder, ([], []))
        group[0].append(i)
        group[1].append(path)
    for folder, (idx, paths) in by_folder.items():
        stamps = [watch.stamp_or_none(p) for p in paths] if folder is None else watch.file_stamps(folder, paths)
        for i, path, stamp in zip(idx, paths, stamps, strict=True):
            # unreadable now: (path, None, None), and a later fix gives a new key
            out[i] = stamp if stamp is not None else (os.path.abspath(path), None, None)
    return out


def images_key(images: ImageSet) -> str:
    """A digest of everything a result depends on in ``images``: each item's identity (:func:`item_stamp`;
    in-memory items are named by their key: a content hash for uploads, an index into the installed test set for
    Fashion-MNIST), label and label name (the same files with other labels are another request), the class names
    and the files left out (listed with a result)."""
    # Asked several times per script run (each result, Export's provenance): computed once per ImageSet object (the
    # sidebar builds a new one each run; its files' stamps come from the watched folder, see _stamps).
    cached = _image_keys.get(id(images))
    if cached is not None and cached[0]() is images and cached[1] == len(images.items):
        return cached[2]
    h = hashlib.sha256()
    h.update(repr((list(images.class_names), [(s.file, s.reason) for s in images.skipped])).encode())
    for it, stamp in zip(images.items, _stamps(images.items), strict=True):
        h.update(repr((it.key, it.label, it.label_name, stamp)).encode())
    digest = h.hexdigest()
    _image_keys.put(id(images), (weakref.ref(images), len(images.items), digest))
    return digest


def model_key(loaded: LoadedModel) -> tuple:
    """The model as results are keyed: name, weights digest and device."""
    return (loaded.name, loaded.weights_id, str(loaded.device))


def pixels_key(pixels: torch.Tensor) -> str:
    """The exact input, not the image's key: two folders can hold different files under the same relative path."""
    return hashlib.sha256(pixels.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def weights_digest(path: str | os.PathLike) -> str:
    """Content digest of a weights or model file, hashed again only when its size or modification time changes
    (the library memoises it: :func:`senet_viz.models.weights.file_sha256`)."""
    return file_digest(path)
