"""The model zoo: SE networks by name, with their preprocessing, labels and weight sources.

``load_model(name, weights=None, device="auto")`` returns a :class:`~senet_viz.models.loaded.LoadedModel`: the
network in eval mode on its device, its transform, its class names and ImageNet wnids, its SE blocks and its lock.
Weights come from, in this order:

1. ``weights=``: a local file (``.safetensors``, ``.pth``/``.pt`` with ``weights_only=True``, ``.tflite``), or
   ``"random"`` for an untrained network (block discovery and cost need no weights);
2. a file named after the model in ``$SENET_VIZ_WEIGHTS_DIR`` (``legacy_seresnet50.safetensors``, ...), the
   project's ``assets/`` folder or the download folder;
3. the timm / torchvision hub, from the local cache when it is there, else downloaded when online and
   ``download=True`` (the default; the dashboard passes False and downloads only on a button press). Offline, this
   fails within seconds with a message that names the file options. The sources are :mod:`senet_viz.models.download`.

A typed timm / torchvision name is first checked without weights or memory (:func:`check_architecture`: built on
the ``meta`` device): a network without channel gates, or one over ``max_param_bytes``, is refused before it is
built for real or any weights are read.

The models themselves are :class:`~senet_viz.models.registry.ModelSpec` entries of :mod:`senet_viz.models.registry`:
this module registers the curated timm / torchvision list below, and importing it imports
:mod:`senet_viz.models.embedded`, which registers the project's own Fashion-MNIST networks, and
:mod:`senet_viz.models.tiny100` (its SE-ResNet-50-layout network trained on 100 Tiny ImageNet classes).

**Open zoo.** Besides the curated names, ``name`` may be any timm or torchvision classification model
(``seresnext101_32x8d.ah_in1k``, ``timm:ecaresnet50t``, ``torchvision:regnet_y_16gf``; the naming rule is in
:mod:`senet_viz.models.registry`): its spec is made on the fly, with the preprocessing and class names of its
pretrained config / weights enum, and its weights come from the same places. It loads only if the network has
channel gates (:class:`~senet_viz.models.loaded.NoGatesError` says what was found and rejected otherwise).

**Model files.** ``name`` may also be a user's own network (see
:func:`~senet_viz.models.model_files.is_model_file`): a TorchScript archive, a ``torch.export`` ``.pt2`` program,
an ``.onnx`` file, or Python code ``file.py:build`` / ``package.module:build`` (only with
``ModelFileOptions(allow_code=True)``: it runs that code). They load through :mod:`senet_viz.models.model_files`;
:class:`~senet_viz.models.model_files.ModelFileOptions` gives the input size, class names and normalisation the
file does not carry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from senet_viz.gates.census import build_on_meta, looked_alike, may_have_gates, tensor_bytes
from senet_viz.models import (
    embedded,  # noqa: F401  (registers the embedded models; it never imports this module)
    tiny100,  # noqa: F401  (registers se_resnet50_tiny100 and its retrained twin)
)
from senet_viz.models.download import (
    DownloadNeededError,
    WeightsStatus,
    hub_cached_file,
    load_from_hub,
    local_weights_file,
    mib_text,
    weights_status,
)
from senet_viz.models.loaded import LoadedModel, NoGatesError, from_spec, no_gates_message
from senet_viz.models.model_files import ModelFileOptions, is_model_file, load_model_file
from senet_viz.models.registry import REGISTRY, ModelSpec, get_spec, register
from senet_viz.models.slim_file import apply_slim_sidecar
from senet_viz.models.weights import WeightsError, file_digest, load_weights_into


class ModelTooLargeError(ValueError):
    """A network whose parameters and buffers exceed the byte budget it is loaded under."""


# ------------------------------------------------------------------------------------- the curated models

SENET = "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018 / TPAMI 2019"
MNV3 = "Howard et al., Searching for MobileNetV3, ICCV 2019"
EFFNET = "Tan & Le, EfficientNet, ICML 2019"
REGNET = "Radosavovic et al., Designing Network Design Spaces, CVPR 2020"


def _curated() -> list[ModelSpec]:
    specs = []
    for depth in (18, 34, 50, 101, 152):
        specs.append(ModelSpec(name=f"legacy_seresnet{depth}", source="timm", family="SE-ResNet",
                               paper_name=f"SE-ResNet-{depth}", arch=f"legacy_seresnet{depth}", paper=SENET,
                               supports_reduction=True, paper_reference=depth == 50))
    for depth in (26, 50, 101):
        specs.append(ModelSpec(name=f"legacy_seresnext{depth}_32x4d", source="timm", family="SE-ResNeXt",
                               paper_name=f"SE-ResNeXt-{depth} (32x4d)", arch=f"legacy_seresnext{depth}_32x4d",
                               paper=SENET, supports_reduction=True))
    specs += [
        ModelSpec(name="legacy_senet154", source="timm", family="SENet", paper_name="SENet-154",
                  arch="legacy_senet154", paper=SENET, supports_reduction=True),
        ModelSpec(name="seresnet50", source="timm", family="SE-ResNet",
                  paper_name="SE-ResNet-50 (timm ResNet with SE)", arch="seresnet50", paper=SENET,
                  supports_reduction=True),
        ModelSpec(name="seresnext50_32x4d", source="timm", family="SE-ResNeXt",
                  paper_name="SE-ResNeXt-50 (32x4d, timm ResNet with SE)", arch="seresnext50_32x4d", paper=SENET,
                  supports_reduction=True),
        ModelSpec(name="mobilenetv3_small_100", source="timm", family="MobileNetV3",
                  paper_name="MobileNetV3-Small 1.0", arch="mobilenetv3_small_100", paper=MNV3),
        ModelSpec(name="mobilenetv3_large_100", source="timm", family="MobileNetV3",
                  paper_name="MobileNetV3-Large 1.0", arch="mobilenetv3_large_100", paper=MNV3),
        # the dashboard's fallback: its weights (Google's .tflite) are in ../shared, so it works offline too
        ModelSpec(name="tf_mobilenetv3_small_100", source="timm", family="MobileNetV3",
                  paper_name="MobileNetV3-Small 1.0 (TensorFlow port; loads Google's .tflite)",
                  arch="tf_mobilenetv3_small_100", paper=MNV3, fallback=True,
                  known_files=("../shared/models/mobilenet_v3_small_224_1.0_uint8.tflite",)),
        ModelSpec(name="tf_mobilenetv3_large_100", source="timm", family="MobileNetV3",
                  paper_name="MobileNetV3-Large 1.0 (TensorFlow port)", arch="tf_mobilenetv3_large_100", paper=MNV3),
        ModelSpec(name="mobilenet_v3_small", source="torchvision", family="MobileNetV3",
                  paper_name="MobileNetV3-Small", arch="mobilenet_v3_small", paper=MNV3),
        ModelSpec(name="mobilenet_v3_large", source="torchvision", family="MobileNetV3",
                  paper_name="MobileNetV3-Large", arch="mobilenet_v3_large", paper=MNV3),
    ]
    for b in range(4):
        specs.append(ModelSpec(name=f"efficientnet_b{b}", source="torchvision", family="EfficientNet",
                               paper_name=f"EfficientNet-B{b}", arch=f"efficientnet_b{b}", paper=EFFNET))
    for size in ("400mf", "800mf", "1_6gf"):
        specs.append(ModelSpec(name=f"regnet_y_{size}", source="torchvision", family="RegNetY",
                               paper_name=f"RegNetY-{size.replace('_', '.').upper()}", arch=f"regnet_y_{size}",
                               paper=REGNET))
    return specs


for _spec in _curated():
    register(_spec)
del _spec

#: The model marked ``default`` (the embedded SE-ResNet: weights and samples in assets/, works offline at once).
DEFAULT_MODEL = next(s.name for s in REGISTRY.values() if s.default)


def default_model() -> str:
    """The model to open with: the one marked ``default`` when its weights are a file here, else the one marked
    ``fallback`` (else the first registered)."""
    specs = list(REGISTRY.values())
    for flag in ("default", "fallback"):
        for spec in specs:
            if getattr(spec, flag) and (flag == "fallback" or weights_status(spec.name) is WeightsStatus.FILE):
                return spec.name
    return specs[0].name


@dataclass(frozen=True)
class ArchitectureCheck:
    """What :func:`check_architecture` found without weights or memory."""

    name: str
    param_bytes: int | None  # parameters and buffers once built; None: it could not be built on ``meta``
    may_have_gates: bool
    how: str  # how that was told, for people
    looked_alike: tuple[tuple[str, str], ...] = ()  # (path, why it is not a gate) of gate look-alikes


@functools.lru_cache(maxsize=256)
def _weightless(name: str, reduction: int | None) -> ArchitectureCheck:
    spec = get_spec(name)
    try:
        model = build_on_meta(lambda: spec.build(reduction=reduction))
        gates, how = may_have_gates(model, spec.input_size)
        alike = tuple(looked_alike(model).items())
    except Exception as exc:  # noqa: BLE001 - not told this way: the real build decides (and reports)
        return ArchitectureCheck(name, None, True, f"not checked without weights ({type(exc).__name__})")
    return ArchitectureCheck(name, tensor_bytes(model), gates, how, alike)


def forget_architecture_checks() -> None:
    """Drop what :func:`check_architecture` remembers (a test that changes what a name builds)."""
    _weightless.cache_clear()


def check_architecture(name: str, reduction: int | None = None, max_bytes: int | None = None) -> ArchitectureCheck:
    """Check a zoo / timm / torchvision name without weights, network downloads or real memory: built on the
    ``meta`` device (shapes only), its parameter bytes counted and its channel gates looked for by structure and
    in its ``torch.fx`` graph (:func:`senet_viz.gates.census.may_have_gates`). Remembered per name and process.

    Raises :class:`~senet_viz.models.registry.UnknownModelError`, :class:`NoGatesError` for a network that surely
    has no gate, and
    :class:`ModelTooLargeError` when its parameters and buffers exceed ``max_bytes``. A network that cannot be
    built on ``meta`` passes unchecked (``param_bytes`` None): loading it finds out."""
    spec = get_spec(name)
    check = _weightless(spec.name, reduction)
    if not check.may_have_gates:
        rejected = {**dict(check.looked_alike), "<model>": f"found without building it: {check.how}"}
        raise NoGatesError(no_gates_message(spec.name, rejected))
    if max_bytes is not None and check.param_bytes is not None and check.param_bytes > max_bytes:
        raise ModelTooLargeError(too_large_message(spec.name, check.param_bytes, max_bytes))
    return check


def too_large_message(name: str, size: int, max_bytes: int) -> str:
    return (f"{name} has {mib_text(size)} of parameters and buffers, more than the {mib_text(max_bytes)} a model "
            "may take here (SENET_VIZ_MODELS_MB on a served app): pick a smaller model, or raise the budget")


def load_model(name: str, weights: str | Path | None = None, device: str = "auto",
               reduction: int | None = None, *, options: ModelFileOptions | None = None, download: bool = True,
               max_param_bytes: int | None = None) -> LoadedModel:
    """Build ``name`` (a zoo name, a timm / torchvision name or a model file, see the module docstring), load its
    weights and find its channel gates.

    ``download=False``: weights only on the hub are not fetched (:class:`DownloadNeededError`, raised before the
    network is built). ``max_param_bytes``: a network whose parameters and buffers exceed it is refused
    (:class:`ModelTooLargeError`; a zoo name before it is built, a model file after). A typed timm / torchvision
    name (or any name under ``max_param_bytes``) is checked on the ``meta`` device first
    (:func:`check_architecture`).

    Raises :class:`~senet_viz.models.registry.UnknownModelError` (a ``KeyError``) for a name nobody knows,
    :class:`NoGatesError` for a network without channel gates, :class:`~senet_viz.models.weights.WeightsError`
    for weights, and :class:`~senet_viz.models.loaders.ModelLoadError` (a ``ValueError``) for a model file that
    cannot be loaded."""
    if is_model_file(name):
        if reduction is not None:
            raise ValueError("--reduction rebuilds a zoo network; a model file is loaded as it is")
        loaded = load_model_file(str(name), weights, device, options or ModelFileOptions())
        size = tensor_bytes(loaded.model)
        if max_param_bytes is not None and size > max_param_bytes:
            raise ModelTooLargeError(too_large_message(loaded.name, size, max_param_bytes))
        return loaded
    if options is not None and options != ModelFileOptions(allow_code=options.allow_code,
                                                           untrusted=options.untrusted):  # the policy only
        raise ValueError(f"input size, class names, mean and std describe a model file; '{name}' takes them from "
                         "its own configuration")
    spec = get_spec(name)
    if not spec.curated or max_param_bytes is not None:
        check_architecture(spec.name, reduction, max_param_bytes)  # before any real memory or weights
    path = None
    if weights != "random":
        path = Path(weights) if weights else local_weights_file(spec.name)
        if path is not None and not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        if path is None and not download and spec.source != "senet_viz" and hub_cached_file(spec) is None:
            raise DownloadNeededError(
                f"the weights of {spec.name} are on the hub only and are downloaded only when asked: press "
                "'Download from the hub' (its size is shown), or give a weights file.")
    model = spec.build(reduction=reduction)
    if weights == "random":
        source, weights_id = "random", "random"
    elif path is not None:
        model = apply_slim_sidecar(model, path, spec.name, spec.input_size)  # a slim export: its JSON beside it
        load_weights_into(model, path)
        source, weights_id = str(path), file_digest(path)
    else:
        source, weights_id = load_from_hub(spec, model, download)
    return from_spec(spec, model, source, weights_id, device)
