"""The model zoo: SE networks by name, with their preprocessing, labels and weight sources.

``load_model(name, weights=None, device="auto")`` returns a :class:`LoadedModel`: the network in eval mode on
its device, its transform, its class names and ImageNet wnids, its SE blocks and its lock. Weights come from,
in this order:

1. ``weights=``: a local file (``.safetensors``, ``.pth``/``.pt`` with ``weights_only=True``, ``.tflite``), or
   ``"random"`` for an untrained network (block discovery and cost need no weights);
2. a file named after the model in ``$SENET_VIZ_WEIGHTS_DIR`` (``legacy_seresnet50.safetensors``, ...), the
   project's ``assets/`` folder or the download folder;
3. the timm / torchvision hub, from the local cache when it is there, else downloaded when online and
   ``download=True`` (the default; the dashboard passes False and downloads only on a button press, see
   :func:`download_weights`). Offline, this fails within seconds with a message that names the file options.

A typed timm / torchvision name is first checked without weights or memory (:func:`check_architecture`: built on
the ``meta`` device): a network without channel gates, or one over ``max_param_bytes``, is refused before it is
built for real or any weights are read.

The models themselves are :class:`~senet_viz.models.registry.ModelSpec` entries of :mod:`senet_viz.models.registry`:
this
module registers the curated timm / torchvision list below, and importing it imports :mod:`senet_viz.models.embedded`,
which registers the project's own Fashion-MNIST networks.

**Open zoo.** Besides the curated names, ``name`` may be any timm or torchvision classification model
(``seresnext101_32x8d.ah_in1k``, ``timm:ecaresnet50t``, ``torchvision:regnet_y_16gf``; the naming rule is in
:mod:`senet_viz.models.registry`): its spec is made on the fly, with the preprocessing and class names of its pretrained
config / weights enum, and its weights come from the same places. It loads only if the network has channel gates
(:class:`NoGatesError` says what was found and rejected otherwise).

**Model files.** ``name`` may also be a user's own network (see :func:`is_model_file`): a TorchScript archive,
a ``torch.export`` ``.pt2`` program, an ``.onnx`` file, or Python code ``file.py:build`` /
``package.module:build`` (only with ``ModelFileOptions(allow_code=True)``: it runs that code). They load through
:mod:`senet_viz.models.loaders` (:mod:`senet_viz.models.model_files`); :class:`ModelFileOptions` gives the input size,
class
names and normalisation the file does not carry.

Size: the curated list, the loaded-model type, and the weight sources (files, hub cache, hub download) with the
status the dashboard asks on every rerun belong together; model files live in model_files.py.
"""

from __future__ import annotations

import enum
import functools
import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from PIL import Image
from torch import nn

from senet_viz.gates.blocks import SEBlock, discover, find_se_blocks
from senet_viz.gates.capture import model_lock
from senet_viz.gates.census import build_on_meta, looked_alike, may_have_gates, tensor_bytes
from senet_viz.models import embedded  # noqa: F401  (registers the embedded models; it imports the registry, never this module)
from senet_viz.models.model_files import MODEL_FILE_SUFFIXES, ModelFileOptions, is_model_file
from senet_viz.models.preprocess import MAX_ASPECT, LimitAspect, Preprocess, PreprocessTransform
from senet_viz.models.registry import (
    REGISTRY,
    HeldOutSet,
    ModelSpec,
    RetrainedTwin,
    UnknownModelError,
    get_spec,
    list_models,
    register,
)
from senet_viz.models.registry import tv_weights as _tv_weights
from senet_viz.models.weights import WEIGHT_SUFFIXES, WeightsError, file_digest, load_weights_into
from senet_viz.paths import ASSETS_DIR, PROJECT_ROOT, cache_dir

__all__ = [
    "ASSETS_DIR", "DEFAULT_MODEL", "MAX_ASPECT", "MODEL_FILE_SUFFIXES", "PROJECT_ROOT", "REGISTRY",
    "WEIGHTS_DIR_ENV", "ArchitectureCheck", "DownloadBudgetError", "DownloadNeededError", "HeldOutSet",
    "LimitAspect", "LoadedModel", "ModelFileOptions", "ModelSpec", "ModelTooLargeError", "NoGatesError",
    "Preprocess", "PreprocessTransform", "RetrainedTwin", "UnknownModelError", "WeightsStatus",
    "WeightsUnavailableError", "check_architecture", "default_model", "download_dir", "download_dir_bytes",
    "download_size", "download_weights", "forget_weights_status", "get_spec", "is_model_file", "list_models",
    "load_model", "local_weights_file", "register", "resolve_device", "weights_status", "weights_url",
]

WEIGHTS_DIR_ENV = "SENET_VIZ_WEIGHTS_DIR"
HUB_TIMEOUT_S = 3.0


class WeightsUnavailableError(WeightsError):
    """No local weights and the hub cannot be reached."""


class DownloadNeededError(WeightsUnavailableError):
    """The weights are on the hub only and this load may not download them (``load_model(download=False)``)."""


class DownloadBudgetError(WeightsUnavailableError):
    """A download that would take the download folder over its disk budget (``download_weights(max_bytes=)``)."""


class NoGatesError(ValueError):
    """The network loads but has no channel gate to look at (what was considered is in the message)."""


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


# ------------------------------------------------------------------------------------- a loaded model


@dataclass
class LoadedModel:
    """A network ready for inference, with everything needed to feed it and read it."""

    name: str
    model: nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    class_names: list[str]
    wnids: list[str] | None
    blocks: list[SEBlock]
    device: torch.device
    weights_source: str  # human-readable: file path, "hub cache", "random"
    weights_id: str  # cache key: content digest of the weights, or "random"
    spec: ModelSpec | None = None
    lock: threading.RLock = field(default=None)  # type: ignore[assignment]
    size: tuple[int, int, int] | None = None  # C x H x W of one input when there is no spec (a model file)
    rejected: dict[str, str] = field(default_factory=dict)  # modules considered as gates and why they are not
    file_info: object | None = None  # a model file's senet_viz.models.loaders.LoadInfo (format, path, notes)

    def __post_init__(self) -> None:
        if self.lock is None:
            self.lock = model_lock(self.model)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, int, int]:
        if self.size is not None:
            return self.size
        return self.spec.input_size if self.spec else (3, 224, 224)

    @classmethod
    def from_module(cls, model: nn.Module, name: str, class_names: list[str],
                    transform: Callable[[Image.Image], torch.Tensor] | None = None,
                    input_size: tuple[int, int, int] = (3, 224, 224), device: str = "cpu",
                    wnids: list[str] | None = None) -> LoadedModel:
        """Wrap a user's own network (SE blocks found structurally if not of a known kind)."""
        dev = resolve_device(device)
        model = model.eval().to(dev)
        # resize keeps the crop's 0.875 ratio (Preprocess's default resize of 256 suits only 224 crops)
        default = Preprocess(crop=input_size[-1], resize=round(input_size[-1] / 0.875))
        return cls(name=name, model=model, transform=transform or default.transform(),
                   class_names=list(class_names), wnids=wnids, blocks=find_se_blocks(model, input_size),
                   device=dev, weights_source="in memory", weights_id=f"module-{id(model):x}",
                   size=tuple(input_size))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; asking for CUDA without one is an error."""
    if isinstance(device, torch.device):
        return device
    if device in ("auto", None, ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


# ------------------------------------------------------------------------------------- where weights come from


def _weights_dirs() -> list[Path]:
    env = [Path(d) for d in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if d]
    return [*env, ASSETS_DIR, download_dir()]


def local_weights_file(name: str) -> Path | None:
    """A weights file named after the model in $SENET_VIZ_WEIGHTS_DIR, assets/ or the download folder, or one of
    the spec's known files (e.g. the shared .tflite of MobileNetV3-Small), if there is one."""
    for folder in _weights_dirs():
        for suffix in WEIGHT_SUFFIXES:
            candidate = folder / f"{file_stem(name)}{suffix}"
            if candidate.is_file():
                return candidate
    spec = REGISTRY.get(name)
    for known in spec.known_files if spec else ():
        candidate = (PROJECT_ROOT / known).resolve()
        if candidate.is_file():
            return candidate
    return None


def file_stem(name: str) -> str:
    """The stem of a model's weights file: its name, with the ``:`` of ``timm:`` / ``torchvision:`` names (and
    path separators) written ``_`` (``torchvision:regnet_y_16gf`` -> ``torchvision_regnet_y_16gf.safetensors``)."""
    return re.sub(r"[:/\\]", "_", name)


def download_dir() -> Path:
    """Where :func:`download_weights` keeps files: ``<cache>/weights`` (see :func:`senet_viz.paths.cache_dir`)."""
    return cache_dir() / "weights"


def weights_url(name: str) -> str:
    """The download address of a zoo model's pretrained weights (torchvision's URL, or the timm hub file)."""
    spec = get_spec(name)
    if spec.source == "torchvision":
        return _tv_weights(spec).url
    if spec.source != "timm":
        raise WeightsUnavailableError(f"{name} has no hub weights; it ships in assets/ or trains with `train`")
    import timm.models
    from huggingface_hub import hf_hub_url

    cfg = timm.models.get_pretrained_cfg(spec.arch)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        return hf_hub_url(hub_id, "model.safetensors")
    if getattr(cfg, "url", None):  # older timm weights (e.g. the legacy SENets) are a .pth release file
        return cfg.url
    raise WeightsUnavailableError(f"timm has no hub weights for {spec.arch}")


def download_dir_bytes() -> int:
    """Bytes the files in :func:`download_dir` take (0 when it does not exist)."""
    try:
        return sum(e.stat().st_size for e in os.scandir(download_dir()) if e.is_file(follow_symlinks=False))
    except OSError:
        return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def _budget_error(name: str, size: int, used: int, max_bytes: int) -> DownloadBudgetError:
    return DownloadBudgetError(
        f"not downloading the weights of {name} ({_mib(size)}): the download folder {download_dir()} holds "
        f"{_mib(used)} and may hold {_mib(max_bytes)} (SENET_VIZ_DOWNLOAD_MB on a served app). Remove files from it, "
        "raise the budget, or give a weights file instead.")


_SIZES: dict[str, tuple[float, int | None]] = {}  # url -> (when asked, size): the app asks on every rerun
_SIZE_TTL_S = 60.0


def download_size(name: str, url: str | None = None, timeout: float = HUB_TIMEOUT_S) -> int | None:
    """The size in bytes of ``name``'s weights file on the hub (a HEAD request, redirects followed; the hub's
    ``X-Linked-Size`` when it says it), or None when the hub does not say or cannot be reached. Remembered for a
    minute per address."""
    import time
    import urllib.error
    import urllib.request

    url = url or weights_url(name)
    known = _SIZES.get(url)
    if known is not None and time.monotonic() - known[0] < _SIZE_TTL_S:
        return known[1]

    class KeepHead(urllib.request.HTTPRedirectHandler):  # urllib turns a redirected HEAD into a GET
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            return None if new is None else urllib.request.Request(new.full_url, headers=dict(new.header_items()),
                                                                   method="HEAD")

    size: int | None = None
    if _hub_reachable(url, timeout) is None:
        try:
            opener = urllib.request.build_opener(KeepHead)
            with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
                raw = response.headers.get("X-Linked-Size") or response.headers.get("Content-Length")
                size = int(raw) if raw and raw.isdigit() else None
        except (urllib.error.URLError, OSError, ValueError):
            size = None
    _SIZES[url] = (time.monotonic(), size)
    return size


def download_weights(name: str, progress: Callable[[int, int], None] | None = None, url: str | None = None,
                     chunk: int = 1 << 20, max_bytes: int | None = None) -> Path:
    """Download a model's weights into :func:`download_dir` with ``progress(bytes done, bytes total)``.

    The file is written under a temporary name and renamed when complete, so an interrupted download never
    leaves a file that looks usable. Offline this fails within seconds with :class:`WeightsUnavailableError`.
    ``max_bytes``: the download folder's disk budget (the app's ``SENET_VIZ_DOWNLOAD_MB``; None for the CLI): a
    file that would take the folder over it is refused (:class:`DownloadBudgetError`) before its first byte when
    the server says its length, else as soon as it passes the budget (the partial file is removed).
    """
    import urllib.error
    import urllib.request

    url = url or weights_url(name)
    why = _hub_reachable(url)
    if why is not None:
        raise WeightsUnavailableError(f"cannot download the weights of {name}: {why}. Pass a local file instead "
                                      f"(--weights FILE or ${WEIGHTS_DIR_ENV}/{name}.safetensors).")
    suffix = Path(urlparse(url).path).suffix or ".safetensors"
    dest = download_dir() / f"{file_stem(name)}{suffix}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(dest.suffix + ".part")
    used = download_dir_bytes() - (dest.stat().st_size if dest.is_file() else 0)  # dest is replaced
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0)
            if max_bytes is not None and used + total > max_bytes:
                raise _budget_error(name, total, used, max_bytes)
            with open(partial, "wb") as out:
                done = 0
                while block := response.read(chunk):
                    done += len(block)
                    if max_bytes is not None and used + done > max_bytes:  # no length, or a wrong one
                        raise _budget_error(name, done, used, max_bytes)
                    out.write(block)
                    if progress is not None:
                        progress(done, total)
    except DownloadBudgetError:
        partial.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise WeightsUnavailableError(f"downloading the weights of {name} failed: {exc}") from exc
    partial.replace(dest)
    forget_weights_status()
    return dest


def _hub_url(spec: ModelSpec) -> str:
    if spec.source == "torchvision":
        return _tv_weights(spec).url
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_cached_file(spec: ModelSpec) -> Path | None:
    if spec.source == "senet_viz":
        return None
    if spec.source == "torchvision":
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(_tv_weights(spec).url).path).name
        return path if path.is_file() else None
    import timm.models
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(spec.arch)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_reachable(url: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """None if a TCP connection to the URL's host opens within ``timeout`` s, else the reason it did not."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parsed.hostname}:{port} unreachable ({exc.__class__.__name__}: {exc})"


def _from_hub(spec: ModelSpec, model: nn.Module, download: bool = True) -> tuple[str, str]:
    if spec.source == "senet_viz":
        raise WeightsUnavailableError(
            f"no weights for '{spec.name}': the project's own model ships as assets/{spec.name}.safetensors, which "
            f"is missing. Restore it (git checkout assets/), pass --weights FILE, or retrain it with "
            f"`python -m senet_viz train` (see assets/{spec.name}.md).")
    cached = _hub_cached_file(spec)
    if cached is not None:
        if spec.source == "timm":
            # timm's own loader applies the model's key filter; the file is local, so nothing is fetched.
            import timm

            hub_model = timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
            model.load_state_dict(hub_model.state_dict())
        else:
            load_weights_into(model, cached)
        return f"hub cache ({cached})", file_digest(cached)
    if not download:  # load_model checks this before building; kept here so no path fetches by itself
        raise DownloadNeededError(f"the weights of {spec.name} are on the hub only; this load may not download them")
    why = _hub_reachable(_hub_url(spec))
    if why is not None:
        raise WeightsUnavailableError(
            f"no weights for '{spec.name}': none given, none in ${WEIGHTS_DIR_ENV} or assets/, not in the hub cache, "
            f"and the model hub cannot be reached ({why}). Pass a local file with --weights FILE "
            f"(.safetensors/.pth/.tflite), or put it at ${WEIGHTS_DIR_ENV}/{spec.name}.safetensors."
        )
    if spec.source == "timm":
        import timm

        hub_model = timm.create_model(spec.arch, pretrained=True)
        model.load_state_dict(hub_model.state_dict())
    else:
        model.load_state_dict(_tv_weights(spec).get_state_dict(progress=True, weights_only=True))
    forget_weights_status()
    cached = _hub_cached_file(spec)
    return "hub download", file_digest(cached) if cached else "hub"


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


def check_architecture(name: str, reduction: int | None = None, max_bytes: int | None = None) -> ArchitectureCheck:
    """Check a zoo / timm / torchvision name without weights, network downloads or real memory: built on the
    ``meta`` device (shapes only), its parameter bytes counted and its channel gates looked for by structure and
    in its ``torch.fx`` graph (:func:`senet_viz.gates.census.may_have_gates`). Remembered per name and process.

    Raises :class:`UnknownModelError`, :class:`NoGatesError` for a network that surely has no gate, and
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
    return (f"{name} has {_mib(size)} of parameters and buffers, more than the {_mib(max_bytes)} a model may take "
            "here (SENET_VIZ_MODELS_MB on a served app): pick a smaller model, or raise the budget")


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

    Raises :class:`UnknownModelError` (a ``KeyError``) for a name nobody knows, :class:`NoGatesError` for a
    network without channel gates, :class:`~senet_viz.models.weights.WeightsError` for weights, and
    :class:`~senet_viz.models.loaders.ModelLoadError` (a ``ValueError``) for a model file that cannot be loaded."""
    if is_model_file(name):
        if reduction is not None:
            raise ValueError("--reduction rebuilds a zoo network; a model file is loaded as it is")
        from senet_viz.models.model_files import load_model_file

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
        if path is None and not download and spec.source != "senet_viz" and _hub_cached_file(spec) is None:
            raise DownloadNeededError(
                f"the weights of {spec.name} are on the hub only and are downloaded only when asked: press "
                "'Download from the hub' (its size is shown), or give a weights file.")
    model = spec.build(reduction=reduction)
    if weights == "random":
        source, weights_id = "random", "random"
    elif path is not None:
        load_weights_into(model, path)
        source, weights_id = str(path), file_digest(path)
    else:
        source, weights_id = _from_hub(spec, model, download)
    dev = resolve_device(device)
    model.eval().to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    # SE modules by class and structure; a network without any is traced with torch.fx for inline gates
    model, found = discover(model, spec.input_size)
    if not found.blocks:
        raise NoGatesError(no_gates_message(spec.name, found.rejected))
    return LoadedModel(name=spec.name, model=model, transform=spec.preprocess.transform(),
                       class_names=spec.class_names, wnids=spec.class_wnids, blocks=found.blocks, device=dev,
                       weights_source=source, weights_id=weights_id, spec=spec, rejected=dict(found.rejected))


def no_gates_message(name: str, rejected: dict[str, str], limit: int = 6) -> str:
    """Why ``name`` is refused: no gate found, and what was considered and rejected (the first ``limit``)."""
    text = (f"{name} has no channel gate to look at: no SE / ESE / ECA / GatherExcite / GlobalContext gate module "
            "and no inline x * sigmoid(pool(x)) gate was found")
    if rejected:
        shown = "; ".join(f"{path or '<model>'}: {why}" for path, why in list(rejected.items())[:limit])
        more = f" (and {len(rejected) - limit} more)" if len(rejected) > limit else ""
        text += f". Considered and rejected: {shown}{more}"
    else:
        text += " (nothing gate-like was considered)"
    return text + ". `python -m senet_viz models --all` lists the timm / torchvision architectures with gates."


class WeightsStatus(enum.StrEnum):
    """Where the weights of a model would come from right now (:func:`weights_status`).

    A ``StrEnum``: a member equals its value (``WeightsStatus.FILE == "file"``) and prints and serialises to JSON
    as it, so the command line's ``models`` listing is unchanged; :attr:`label` is the wording for people.
    """

    FILE = "file"  # a file here: $SENET_VIZ_WEIGHTS_DIR, assets/, the download folder or a known file
    HUB_CACHE = "hub cache"  # the timm / torchvision hub cache: loads offline
    HUB_ONLINE = "hub (online only)"  # to be downloaded from the hub: needs the internet (or a file)
    MISSING = "missing"  # the project's own model without its file: restore assets/ or retrain it

    @property
    def label(self) -> str:
        return {"file": "weights file on disk", "hub cache": "in the hub cache (loads offline)",
                "hub (online only)": "to download from the hub (online only)",
                "missing": "file missing: restore assets/ or retrain it"}[self.value]

    @property
    def ready(self) -> bool:
        """The model loads without the internet and without a file from the user."""
        return self in (WeightsStatus.FILE, WeightsStatus.HUB_CACHE)


_STATUS_CACHE: dict[str, tuple[tuple, WeightsStatus]] = {}


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _watched_dirs(spec: ModelSpec) -> list[Path]:
    """The folders whose listing decides the status of ``spec``: adding or removing a file in one changes the
    folder's modification time."""
    dirs = _weights_dirs() + [(PROJECT_ROOT / known).resolve().parent for known in spec.known_files]
    if spec.source == "torchvision":
        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    elif spec.source == "timm":
        from huggingface_hub import constants

        dirs.append(Path(constants.HF_HUB_CACHE))
        snapshots = _hf_snapshots_dir(spec.arch, constants.HF_HUB_CACHE)
        if snapshots is not None:
            dirs.append(snapshots)
            try:
                dirs += sorted(Path(e.path) for e in os.scandir(snapshots) if e.is_dir())
            except OSError:
                pass
    return dirs


@functools.lru_cache(maxsize=256)
def _hf_snapshots_dir(arch: str, hub_cache: str) -> Path | None:
    import timm.models

    hub_id = getattr(timm.models.get_pretrained_cfg(arch), "hf_hub_id", None)
    return Path(hub_cache) / f"models--{hub_id.replace('/', '--')}" / "snapshots" if hub_id else None


def weights_status(name: str) -> WeightsStatus:
    """Where the weights of ``name`` would come from right now (see :class:`WeightsStatus`).

    Computed once per model and process, and again only when a folder it depends on (the weights folders, the
    hub caches) gained or lost a file, which a few ``stat`` calls tell: the dashboard asks on every rerun.
    :func:`forget_weights_status` drops what is known (downloads through this module call it).
    """
    spec = get_spec(name)
    signature = tuple((str(d), _mtime_ns(d)) for d in _watched_dirs(spec))
    known = _STATUS_CACHE.get(name)
    if known is not None and known[0] == signature:
        return known[1]
    if local_weights_file(name):
        status = WeightsStatus.FILE
    elif spec.source == "senet_viz":
        status = WeightsStatus.MISSING
    else:
        status = WeightsStatus.HUB_CACHE if _hub_cached_file(spec) else WeightsStatus.HUB_ONLINE
    _STATUS_CACHE[name] = (signature, status)
    return status


def forget_weights_status() -> None:
    """Drop the statuses :func:`weights_status` remembers (after this process fetched weights)."""
    _STATUS_CACHE.clear()
