"""Content keys of what the shared results depend on: the model (:func:`model_key`), the images
(:func:`images_key`), one input's pixels (:func:`pixels_key`) and a weights or model file (:func:`weights_digest`).
Two requests with equal keys get one result, whichever session asks."""

from __future__ import annotations

import hashlib
import os
import weakref

import torch

from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.lru import LRU
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.weights import file_digest
from senet_viz.paths import file_stamp

# images_key per ImageSet object (by id, checked against a weak reference: an id can be reused once the set is gone)
_image_keys: LRU[int, tuple] = LRU(64)


def item_stamp(item: ImageItem) -> tuple:
    """What identifies an item's pixels: uploads carry their content hash in the key; a file on disk is its
    absolute path (keys are relative to the folder), size and modification time, so an edited file is new."""
    if item.path is not None:
        try:
            return file_stamp(item.path)
        except OSError:
            return (os.path.abspath(item.path), None, None)  # unreadable now: a later fix gives a new key
    return ("data", len(item.data or b""))


def images_key(images: ImageSet) -> str:
    """A digest of everything a result depends on in ``images``: each item's identity (:func:`item_stamp`;
    in-memory items are named by their key: a content hash for uploads, an index into the installed test set for
    Fashion-MNIST), label and label name (the same files with other labels are another request), the class names
    and the files left out (listed with a result)."""
    # Asked several times per script run (each result, Export's provenance) and it stats every file: computed once
    # per ImageSet object (the sidebar builds a new one each run, so an edited file is seen on the next run).
    cached = _image_keys.get(id(images))
    if cached is not None and cached[0]() is images and cached[1] == len(images.items):
        return cached[2]
    h = hashlib.sha256()
    h.update(repr((list(images.class_names), [(s.file, s.reason) for s in images.skipped])).encode())
    for it in images.items:
        h.update(repr((it.key, it.label, it.label_name, item_stamp(it))).encode())
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
