"""A user's own network as a zoo model: TorchScript, ``torch.export`` ``.pt2``, ONNX or Python code.

:func:`senet_viz.models.zoo.load_model` hands a name that :func:`is_model_file` recognises to :func:`load_model_file`:
the file is loaded by :mod:`senet_viz.models.loaders` (Python code only with ``allow_code``; a stranger's file,
``untrusted``, only in formats that carry no code), its gates are found by :func:`senet_viz.gates.blocks.discover`,
and it becomes a :class:`~senet_viz.models.loaded.LoadedModel` without a spec: a transform from
:class:`ModelFileOptions` (input size, resize, mean / std), class names (given, the file's own, ImageNet's for
1,000 outputs, else ``class 0 .. N-1``), and a ``weights_id`` that is the file's digest (plus a
short hash of the options when they differ from the file's own: other results from the same weights).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from senet_viz.data.labels import imagenet_class_names, imagenet_wnids
from senet_viz.models.loaded import LoadedModel, NoGatesError, no_gates_message, resolve_device
from senet_viz.models.loaders import ModelLoadError, load_and_discover
from senet_viz.models.outputs import detect_outputs
from senet_viz.models.preprocess import Preprocess
from senet_viz.models.registry import REGISTRY, TIMM_PREFIX, TORCHVISION_PREFIX
from senet_viz.models.weights import file_digest

#: File suffixes :func:`load_model` reads as model files (TorchScript, torch.export, ONNX).
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript", ".zip", ".pt2", ".onnx")
_ENTRY_POINT = re.compile(r"^(?P<target>.+?):(?P<attr>[A-Za-z_][\w.]*)$")


@dataclass(frozen=True)
class ModelFileOptions:
    """What a model file does not say about itself (CLI: ``--input-size``, ``--resize``, ``--classes``,
    ``--mean``, ``--std``, ``--allow-code``). None: the file's own (ONNX / .pt2 input shape, ONNX label metadata),
    else 3 x 224 x 224, a resize to crop / 0.875, ImageNet's class names for 1,000 outputs and ``class 0 .. N-1``
    otherwise, and ImageNet's mean and std (0.5 / 0.5 for a one-channel input). Frozen and hashable: a cache
    key.

    The loading policy is part of it: ``untrusted`` marks a stranger's file (the dashboard sets it for every
    browser user), which then loads only in formats that carry no code (ONNX, a plain ``.pt2``) unless
    ``allow_code`` (the server's ``SENET_VIZ_ALLOW_CODE=1``); the default is the local user (CLI, scripts), whose
    TorchScript and ``.pt2`` files load and whose Python entry points need ``allow_code``."""

    input_size: tuple[int, int, int] | None = None  # C x H x W
    resize: int | None = None  # short side before the center crop
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    allow_code: bool = False  # run a Python entry point (file.py:build): it runs that code
    untrusted: bool = False  # a stranger's file: without allow_code, no TorchScript and only a plain .pt2


def is_model_file(name: str | Path) -> bool:
    """Whether ``name`` names a model file or Python entry point rather than a zoo / timm / torchvision name: an
    existing file, a path (with a separator or a model-file suffix), or ``target:callable`` (the ``timm:`` and
    ``torchvision:`` prefixes excepted)."""
    text = str(name).strip()
    if not text or text in REGISTRY or text.startswith((TIMM_PREFIX, TORCHVISION_PREFIX)):
        return False
    if isinstance(name, Path) or _ENTRY_POINT.match(text) or "/" in text or os.sep in text:
        return True
    return Path(text).suffix.lower() in MODEL_FILE_SUFFIXES or Path(text).is_file()


def _state_digest(model: nn.Module) -> str:
    """A content digest of a module's parameters and buffers (an entry point built without a weights file)."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _output_count(model: nn.Module, size: tuple[int, int, int], device: torch.device) -> tuple[int, torch.Tensor]:
    with torch.inference_mode():
        out = model(torch.zeros((1, *size), device=device))
    if isinstance(out, tuple | list) and out:
        out = out[0]
    if isinstance(out, dict) and out:
        out = next(iter(out.values()))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model's output is {shape}, not N x classes scores: senet-viz reads a classifier")
    return int(out.shape[1]), out


def _file_preprocess(size: tuple[int, int, int], options: ModelFileOptions) -> Preprocess:
    c, h, w = size
    if h != w:
        raise ValueError(f"input size {c}x{h}x{w}: only square inputs are supported (center crop H = W)")
    if c not in (1, 3):
        raise ValueError(f"input size {c}x{h}x{w}: images are fed with 1 (grey) or 3 (RGB) channels")
    mean = options.mean or ((0.485, 0.456, 0.406) if c == 3 else (0.5,))
    std = options.std or ((0.229, 0.224, 0.225) if c == 3 else (0.5,))
    for label, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, c):
            raise ValueError(f"--{label} has {len(values)} values for a {c}-channel input")
    if c == 3:
        mean, std = tuple(mean) * (3 // len(mean)), tuple(std) * (3 // len(std))
    return Preprocess(crop=h, resize=options.resize or round(h / 0.875), interpolation="bilinear",
                      mean=tuple(mean), std=tuple(std), channels=c)


def load_model_file(arg: str, weights: str | Path | None, device: str, options: ModelFileOptions) -> LoadedModel:
    """Load the model file or entry point ``arg`` (see the module docstring); errors are
    :class:`~senet_viz.models.loaders.ModelLoadError`, :class:`~senet_viz.models.loaded.NoGatesError` or
    ``ValueError``."""
    try:
        model, found, info = load_and_discover(arg, weights=weights, allow_code=options.allow_code,
                                               untrusted=options.untrusted, input_size=options.input_size)
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - e.g. the user's network fails on the probe image
        size = "x".join(map(str, options.input_size or (3, 224, 224)))
        raise ModelLoadError(f"{arg} was loaded but does not run on a 1 x {size} image while looking for its gates "
                             f"({type(error).__name__}: {str(error)[:300]}); give its input size "
                             "(--input-size C,H,W)") from error
    size = tuple(options.input_size or info.input_size or (3, 224, 224))
    if not found.blocks:
        raise NoGatesError(no_gates_message(info.name, found.rejected))
    transform = _file_preprocess(size, options).transform()  # type: ignore[arg-type]
    dev = resolve_device(device)
    model.eval().to(dev)
    try:
        n, probe = _output_count(model, size, dev)  # type: ignore[arg-type]
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's network: say what to change
        raise ModelLoadError(f"{info.name} does not run on a 1 x {'x'.join(map(str, size))} image "
                             f"({type(error).__name__}: {str(error)[:300]}); give its input size "
                             "(--input-size C,H,W)") from error
    imagenet = not options.class_names and not info.labels and n == 1000  # ImageNet's classes, in their order
    own_names = tuple(info.labels or (imagenet_class_names() if imagenet else [f"class {i}" for i in range(n)]))
    names = list(options.class_names or own_names)
    if len(names) != n:
        given = "the class names given" if options.class_names else "the file's label metadata"
        raise ValueError(f"{given} list {len(names)} classes but {info.name} outputs {n} scores")
    if info.format == "entry-point":
        weights_id = file_digest(weights) if weights else _state_digest(model)
        source = str(weights) if weights else f"as built by {arg} (its own initialisation)"
    else:
        weights_id, source = file_digest(info.path), str(info.path)  # type: ignore[arg-type]
    described = ModelFileOptions(input_size=tuple(size), resize=options.resize,  # type: ignore[arg-type]
                                 class_names=tuple(names), mean=options.mean, std=options.std)
    own = ModelFileOptions(input_size=tuple(info.input_size or (3, 224, 224)),  # type: ignore[arg-type]
                           class_names=own_names)
    if described != own:
        # another input, preprocessing or class names than the file's own: other results from the same weights
        # (results are cached by name and weights_id); the file's digest stays first, as exports show it
        weights_id += "-" + hashlib.sha256(repr(described).encode()).hexdigest()[:8]
    outputs, how = detect_outputs(model, probe)
    return LoadedModel(name=info.name, model=model, transform=transform, class_names=names,
                       wnids=imagenet_wnids() if imagenet else None,
                       blocks=found.blocks, device=dev, weights_source=source, weights_id=weights_id, spec=None,
                       size=tuple(size), rejected=dict(found.rejected), file_info=info,  # type: ignore[arg-type]
                       outputs=outputs, outputs_found=how)
