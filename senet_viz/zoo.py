"""The model zoo: SE networks by name, with their preprocessing, labels and weight sources.

``load_model(name, weights=None, device="auto")`` returns a :class:`LoadedModel`: the network in eval mode on
its device, its transform, its class names and ImageNet wnids, its SE blocks and its lock. Weights come from,
in this order:

1. ``weights=``: a local file (``.safetensors``, ``.pth``/``.pt`` with ``weights_only=True``, ``.tflite``), or
   ``"random"`` for an untrained network (block discovery and cost need no weights);
2. a file named after the model in ``$SENET_VIZ_WEIGHTS_DIR`` (``legacy_seresnet50.safetensors``, ...) or in the
   project's ``assets/`` folder;
3. the timm / torchvision hub, from the local cache when it is there, else downloaded when online. Offline, this
   fails within seconds with a message that names the file options.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from .blocks import SEBlock, find_se_blocks
from .capture import model_lock
from .weights import WEIGHT_SUFFIXES, WeightsError, file_digest, load_weights_into

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = PROJECT_ROOT / "assets"
WEIGHTS_DIR_ENV = "SENET_VIZ_WEIGHTS_DIR"
HUB_TIMEOUT_S = 3.0


class WeightsUnavailableError(WeightsError):
    """No local weights and the hub cannot be reached."""


MAX_ASPECT = 16  # long side / short side kept before resizing (see LimitAspect)


class LimitAspect:
    """Center-crop the long side of an image to at most ``max_ratio`` times its short side.

    Resizing the short side first (as every ImageNet preprocessing does) blows a 1 x 10,000 image up to
    256 x 2,560,000 pixels, several GB, before the center crop throws nearly all of it away. The crop that
    follows only ever keeps the central ``crop / resize`` part of the short side's length along the long side,
    so cutting the long side to ``max_ratio`` times the short side first keeps every pixel the model sees (up
    to the resampling grid) and bounds memory at ``resize^2 * max_ratio``. Images within the ratio pass as is.
    """

    def __init__(self, max_ratio: float = MAX_ASPECT) -> None:
        self.max_ratio = max_ratio

    def __call__(self, im: Image.Image) -> Image.Image:
        w, h = im.size
        short, long = min(w, h), max(w, h)
        if short <= 0 or long <= short * self.max_ratio:
            return im
        keep = int(short * self.max_ratio)
        start = (long - keep) // 2
        return im.crop((start, 0, start + keep, h) if w > h else (0, start, w, start + keep))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_ratio={self.max_ratio})"


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``resize``, center-crop ``crop``, scale to [0, 1], normalise (extreme aspect
    ratios are first cut to :data:`MAX_ASPECT`, see :class:`LimitAspect`)."""

    crop: int = 224
    resize: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channels: int = 3  # 1: the image is converted to grey first (e.g. the Fashion-MNIST models)

    def transform(self) -> PreprocessTransform:
        mode = T.InterpolationMode(self.interpolation)
        grey = [T.Grayscale(1)] if self.channels == 1 else []
        return PreprocessTransform([*grey, LimitAspect(), T.Resize(self.resize, interpolation=mode),
                                    T.CenterCrop(self.crop), T.ToTensor(), T.Normalize(self.mean, self.std)], self)


class PreprocessTransform(T.Compose):
    """A ``Compose`` that knows the :class:`Preprocess` it was built from (``Preprocess.transform()``).

    The runner applies the same steps to tensors decoded by a faster JPEG decoder (:mod:`senet_viz.run`);
    :meth:`geometry` is every step before ``ToTensor``. Built from a plain list, it is a plain ``Compose``.
    """

    def __init__(self, transforms: list[Callable], preprocess: Preprocess | None = None) -> None:
        super().__init__(transforms)
        self.preprocess = preprocess

    def geometry(self, im: Image.Image) -> Image.Image:
        """The image the model sees, before scaling to [0, 1] and normalising (grey, aspect guard, resize, crop)."""
        for step in self.transforms[:-2]:
            im = step(im)
        return im


@dataclass(frozen=True)
class ModelSpec:
    name: str  # zoo name, e.g. "legacy_seresnet50"
    source: str  # "timm", "torchvision" or "senet_viz" (built by ``builder``, weights only from a file)
    family: str  # "SE-ResNet", "SE-ResNeXt", "SENet", "MobileNetV3", "EfficientNet", "RegNetY"
    paper_name: str  # how the paper (or the family's paper) calls it
    arch: str  # the constructor's name in its library
    paper: str  # where the architecture comes from
    labels: str = "imagenet"
    supports_reduction: bool = False  # can be built with another SE reduction ratio r
    known_files: tuple[str, ...] = ()  # weights files looked for, relative to the project root
    builder: Callable[..., nn.Module] | None = None  # source "senet_viz": builder(reduction=r) -> network
    preprocess_config: Preprocess | None = None  # overrides the library's preprocessing config
    samples: str | None = None  # embedded sample images (class folders), relative to the project root

    @functools.cached_property
    def preprocess(self) -> Preprocess:
        return _preprocess_for(self)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of one transformed image."""
        return (self.preprocess.channels, self.preprocess.crop, self.preprocess.crop)

    @property
    def samples_dir(self) -> Path | None:
        """The model's embedded sample folder, if it has one and it exists."""
        path = PROJECT_ROOT / self.samples if self.samples else None
        return path if path is not None and path.is_dir() else None

    def build(self, reduction: int | None = None) -> nn.Module:
        """The network with random weights (optionally with SE reduction ratio ``reduction``)."""
        kwargs = {}
        if reduction is not None:
            if not self.supports_reduction:
                raise ValueError(f"{self.name} cannot be built with another SE reduction ratio; "
                                 "try a legacy_se* or seres* model")
            kwargs = _reduction_kwargs(self, reduction)
        if self.builder is not None:
            return self.builder(**kwargs)
        if self.source == "timm":
            import timm

            return timm.create_model(self.arch, pretrained=False, **kwargs)
        import torchvision.models as tvm

        return tvm.get_model(self.arch, weights=None, **kwargs)


SENET = "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018 / TPAMI 2019"
MNV3 = "Howard et al., Searching for MobileNetV3, ICCV 2019"
EFFNET = "Tan & Le, EfficientNet, ICML 2019"
REGNET = "Radosavovic et al., Designing Network Design Spaces, CVPR 2020"


def _specs() -> list[ModelSpec]:
    specs = []
    for depth in (18, 34, 50, 101, 152):
        specs.append(ModelSpec(f"legacy_seresnet{depth}", "timm", "SE-ResNet", f"SE-ResNet-{depth}",
                               f"legacy_seresnet{depth}", SENET, supports_reduction=True))
    for depth in (26, 50, 101):
        specs.append(ModelSpec(f"legacy_seresnext{depth}_32x4d", "timm", "SE-ResNeXt",
                               f"SE-ResNeXt-{depth} (32x4d)", f"legacy_seresnext{depth}_32x4d", SENET,
                               supports_reduction=True))
    specs += [
        ModelSpec("legacy_senet154", "timm", "SENet", "SENet-154", "legacy_senet154", SENET,
                  supports_reduction=True),
        ModelSpec("seresnet50", "timm", "SE-ResNet", "SE-ResNet-50 (timm ResNet with SE)", "seresnet50", SENET,
                  supports_reduction=True),
        ModelSpec("seresnext50_32x4d", "timm", "SE-ResNeXt", "SE-ResNeXt-50 (32x4d, timm ResNet with SE)",
                  "seresnext50_32x4d", SENET, supports_reduction=True),
        ModelSpec("mobilenetv3_small_100", "timm", "MobileNetV3", "MobileNetV3-Small 1.0", "mobilenetv3_small_100",
                  MNV3),
        ModelSpec("mobilenetv3_large_100", "timm", "MobileNetV3", "MobileNetV3-Large 1.0", "mobilenetv3_large_100",
                  MNV3),
        ModelSpec("tf_mobilenetv3_small_100", "timm", "MobileNetV3",
                  "MobileNetV3-Small 1.0 (TensorFlow port; loads Google's .tflite)", "tf_mobilenetv3_small_100", MNV3,
                  known_files=("../shared/models/mobilenet_v3_small_224_1.0_uint8.tflite",)),
        ModelSpec("tf_mobilenetv3_large_100", "timm", "MobileNetV3", "MobileNetV3-Large 1.0 (TensorFlow port)",
                  "tf_mobilenetv3_large_100", MNV3),
        ModelSpec("mobilenet_v3_small", "torchvision", "MobileNetV3", "MobileNetV3-Small", "mobilenet_v3_small", MNV3),
        ModelSpec("mobilenet_v3_large", "torchvision", "MobileNetV3", "MobileNetV3-Large", "mobilenet_v3_large", MNV3),
    ]
    for b in range(4):
        specs.append(ModelSpec(f"efficientnet_b{b}", "torchvision", "EfficientNet", f"EfficientNet-B{b}",
                               f"efficientnet_b{b}", EFFNET))
    for size in ("400mf", "800mf", "1_6gf"):
        specs.append(ModelSpec(f"regnet_y_{size}", "torchvision", "RegNetY",
                               f"RegNetY-{size.replace('_', '.').upper()}", f"regnet_y_{size}", REGNET))
    return specs


REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _specs()}
DEFAULT_MODEL = "se_resnet_fmnist"  # embedded weights + samples in assets/: works offline at once


def register(spec: ModelSpec) -> None:
    """Add a model to the zoo (e.g. the project's own embedded model)."""
    REGISTRY[spec.name] = spec


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; choose one of: {', '.join(REGISTRY)}") from None


def _reduction_kwargs(spec: ModelSpec, reduction: int) -> dict:
    if reduction < 1:
        raise ValueError(f"the SE reduction ratio must be >= 1, not {reduction}")
    if spec.builder is not None or spec.arch.startswith("legacy_"):
        return {"reduction": reduction}
    from timm.layers import SEModule

    return {"block_args": {"attn_layer": functools.partial(SEModule, rd_ratio=1.0 / reduction)}}


def _tv_weights(spec: ModelSpec):
    import torchvision.models as tvm

    return tvm.get_model_weights(spec.arch).DEFAULT


def _preprocess_for(spec: ModelSpec) -> Preprocess:
    if spec.preprocess_config is not None:
        return spec.preprocess_config
    if spec.source == "timm":
        import timm.models

        cfg = timm.models.get_pretrained_cfg(spec.arch)
        cfg = cfg.to_dict() if cfg is not None else {}
        crop = int(cfg.get("input_size", (3, 224, 224))[-1])
        crop_pct = float(cfg.get("crop_pct", 0.875))
        return Preprocess(crop=crop, resize=int(crop / crop_pct), interpolation=cfg.get("interpolation", "bicubic"),
                          mean=tuple(cfg.get("mean", Preprocess.mean)), std=tuple(cfg.get("std", Preprocess.std)))
    kw = _tv_weights(spec).transforms.keywords
    crop = kw["crop_size"]
    return Preprocess(crop=crop, resize=kw.get("resize_size", int(crop / 0.875)),
                      interpolation=kw.get("interpolation", T.InterpolationMode.BILINEAR).value)


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

    def __post_init__(self) -> None:
        if self.lock is None:
            self.lock = model_lock(self.model)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, int, int]:
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
                   device=dev, weights_source="in memory", weights_id=f"module-{id(model):x}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; asking for CUDA without one is an error."""
    if isinstance(device, torch.device):
        return device
    if device in ("auto", None, ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


@functools.cache
def imagenet_labels() -> tuple[list[str], list[str]]:
    """ImageNet-1k short class names and wnids in class-index order (offline, from timm's bundled info)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = [info.index_to_label_name(i) for i in range(1000)]
    names = [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]
    return names, wnids


def local_weights_file(name: str) -> Path | None:
    """A weights file named after the model in $SENET_VIZ_WEIGHTS_DIR or assets/, or one of the spec's known
    files (e.g. the shared .tflite of MobileNetV3-Small), if there is one."""
    dirs = [Path(d) for d in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if d] + [ASSETS_DIR,
                                                                                         download_dir()]
    for folder in dirs:
        for suffix in WEIGHT_SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    spec = REGISTRY.get(name)
    for known in spec.known_files if spec else ():
        candidate = (PROJECT_ROOT / known).resolve()
        if candidate.is_file():
            return candidate
    return None


def download_dir() -> Path:
    """Where :func:`download_weights` keeps files ($SENET_VIZ_CACHE, else ~/.cache/senet_viz/weights)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "senet_viz"
    return Path(os.environ.get("SENET_VIZ_CACHE") or cache) / "weights"


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


def download_weights(name: str, progress: Callable[[int, int], None] | None = None, url: str | None = None,
                     chunk: int = 1 << 20) -> Path:
    """Download a model's weights into :func:`download_dir` with ``progress(bytes done, bytes total)``.

    The file is written under a temporary name and renamed when complete, so an interrupted download never
    leaves a file that looks usable. Offline this fails within seconds with :class:`WeightsUnavailableError`.
    """
    import urllib.error
    import urllib.request

    url = url or weights_url(name)
    why = _hub_reachable(url)
    if why is not None:
        raise WeightsUnavailableError(f"cannot download the weights of {name}: {why}. Pass a local file instead "
                                      f"(--weights FILE or ${WEIGHTS_DIR_ENV}/{name}.safetensors).")
    suffix = Path(urlparse(url).path).suffix or ".safetensors"
    dest = download_dir() / f"{name}{suffix}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(chunk):
                out.write(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise WeightsUnavailableError(f"downloading the weights of {name} failed: {exc}") from exc
    partial.replace(dest)
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


def _from_hub(spec: ModelSpec, model: nn.Module) -> tuple[str, str]:
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
    cached = _hub_cached_file(spec)
    return "hub download", file_digest(cached) if cached else "hub"


def load_model(name: str, weights: str | Path | None = None, device: str = "auto",
               reduction: int | None = None) -> LoadedModel:
    """Build ``name`` from the zoo, load its weights and find its SE blocks (see the module docstring)."""
    spec = get_spec(name)
    model = spec.build(reduction=reduction)
    if weights == "random":
        source, weights_id = "random", "random"
    else:
        path = Path(weights) if weights else local_weights_file(name)
        if path is not None:
            load_weights_into(model, path)
            source, weights_id = str(path), file_digest(path)
        else:
            source, weights_id = _from_hub(spec, model)
    dev = resolve_device(device)
    model.eval().to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    class_names, wnids = imagenet_labels() if spec.labels == "imagenet" else (_labels_for(spec), None)
    blocks = find_se_blocks(model, spec.input_size)
    return LoadedModel(name=name, model=model, transform=spec.preprocess.transform(), class_names=class_names,
                       wnids=wnids, blocks=blocks, device=dev, weights_source=source, weights_id=weights_id,
                       spec=spec)


_LABEL_PROVIDERS: dict[str, Callable[[], list[str]]] = {}


def register_labels(key: str, provider: Callable[[], list[str]]) -> None:
    _LABEL_PROVIDERS[key] = provider


def _labels_for(spec: ModelSpec) -> list[str]:
    if spec.labels not in _LABEL_PROVIDERS:
        raise KeyError(f"no class names registered for label set '{spec.labels}'")
    return _LABEL_PROVIDERS[spec.labels]()


def weights_status(name: str) -> str:
    """Where the weights of ``name`` would come from right now: 'file', 'hub cache' or 'hub (online only)'."""
    if local_weights_file(name):
        return "file"
    if get_spec(name).source == "senet_viz":
        return "missing"
    return "hub cache" if _hub_cached_file(get_spec(name)) else "hub (online only)"


# The project's own Fashion-MNIST SE-ResNets (imported last: fmnist uses this module's classes lazily).
from .fmnist import register_zoo_models as _register_fmnist  # noqa: E402

_register_fmnist()
