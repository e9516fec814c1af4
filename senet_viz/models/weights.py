"""Load weights from files without executing pickled code, and report clearly what does not fit.

Supported files: ``.safetensors``; ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` through
``torch.load(weights_only=True)`` (a checkpoint nested under ``state_dict`` / ``model`` / ``model_state_dict`` /
``state_dict_ema`` / ``module`` ... and ``module.`` prefixes from DataParallel are unwrapped); ``.tflite`` through
the importer in :mod:`senet_viz.models.tflite`. One loader, :func:`load_weights_into`, for the zoo's weights and a
model file's entry point (``file.py:build`` with ``weights=``) alike.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from senet_viz.paths import file_stamp

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tflite")
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_NESTING_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "state_dict_ema", "module")


class WeightsError(ValueError):
    """Weights that cannot be used: unreadable file, unsafe pickle, or a checkpoint of another architecture."""


def hash_file(path: str) -> str:
    """The sha256 (hex) of a file's content, read now (:func:`file_sha256` remembers it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=128)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return hash_file(path)


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's content, memoised by (absolute path, size, modification time in ns): a file
    is read again only when it changed (or was replaced), not on every call (e.g. every dashboard rerun)."""
    return _sha256_of(*file_stamp(path))


def file_digest(path: str | Path, length: int = 16) -> str:
    """Short sha256 of a file's content (a cache key that changes when the weights change); see
    :func:`file_sha256`."""
    return file_sha256(path)[:length]


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    for _ in range(3):  # a few levels of {"model": {"state_dict": ...}} nesting
        # A training checkpoint may hold tensors beside its state dict (e.g. {"best_acc1": tensor(76.1)}):
        # descend into a nesting key whenever it holds a mapping, not only when no top-level value is a tensor.
        if not isinstance(obj, Mapping):
            break
        key = next((k for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError("the checkpoint holds no state dict (a mapping of parameter names to tensors)")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError("the checkpoint holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a weights file. ``model`` is needed for ``.tflite`` (it fixes the layout)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path.name} is not a readable safetensors file: {exc}") from exc
    if suffix in _PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise WeightsError(
                f"refused to load {path.name}: it contains pickled objects other than tensors, which could run "
                "code (loaded with weights_only=True). Re-save it as a plain state dict "
                "(torch.save(model.state_dict(), ...)) or as .safetensors."
            ) from exc
        except Exception as exc:  # a damaged or non-PyTorch file fails in many ways (IndexError, KeyError, ...)
            raise WeightsError(f"{path.name} is not a readable PyTorch checkpoint: "
                               f"{exc.__class__.__name__}: {exc}") from exc
        return _unwrap(obj)
    if suffix == ".tflite":
        if model is None:
            raise WeightsError("a .tflite file needs the target model to map its layers")
        from senet_viz.models.tflite import TFLiteImportError, load_tflite_state_dict

        try:
            return load_tflite_state_dict(path, model)
        except TFLiteImportError as exc:
            raise WeightsError(str(exc)) from exc
    raise WeightsError(f"unsupported weights file '{path.name}': use one of {', '.join(WEIGHT_SUFFIXES)}")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], max_keys: int = 8,
                     what: str = "the weights") -> None:
    """Raise :class:`WeightsError` naming the keys that are missing, unexpected or of another shape (``what``: the
    weights' name in the message)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or wrong):
        return

    def listing(title: str, keys: list[str]) -> str:
        more = f" ... and {len(keys) - max_keys} more" if len(keys) > max_keys else ""
        return f"{title} ({len(keys)}): " + "; ".join(keys[:max_keys]) + more

    parts = [listing(t, k) for t, k in (("shape mismatch", wrong), ("missing in file", missing),
                                          ("not in model", unexpected)) if k]
    raise WeightsError(f"{what} do not fit this architecture - is it a checkpoint of another model? "
                       + " | ".join(parts))


def load_weights_into(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into ``model`` strictly, after checking every key and shape."""
    state = read_state_dict(path, model)
    check_state_dict(model, state, what=f"the weights in {Path(path).name}")
    model.load_state_dict(state, strict=True)
