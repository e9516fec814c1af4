"""The model registry: :class:`ModelSpec` (what the project knows about a network) and the table of names.

The registry knows no model (timm's pattern): it imports no network definition, and models are added with
:func:`register` or the :func:`register_model` decorator by the modules that define them. :mod:`senet_viz.zoo`
registers the curated timm / torchvision list and imports :mod:`senet_viz.embedded`, which registers the
project's own Fashion-MNIST networks; importing :mod:`senet_viz.zoo` therefore makes every model available.

A spec is built with keyword arguments only. Besides how to build and feed the network it carries the facts the
dashboard and the command line read instead of special-casing names: its ``categories`` (class names, a tuple
or a function that loads them lazily, torchvision's ``weights.meta["categories"]`` pattern), the ``wnids`` of
ImageNet models, a ``retrained_twin`` (the same network retrained without some SE blocks), whether the paper's
own reference numbers apply (``paper_reference``), a full ``test_set`` that can be offered as an image source,
and whether it is the dashboard's ``default`` or ``fallback`` model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from .data import imagenet_class_names, imagenet_wnids
from .paths import PROJECT_ROOT
from .preprocess import Preprocess

if TYPE_CHECKING:
    from .data import ImageSet

#: Class names or WordNet ids: a tuple, or a function returning them (called once, when first needed).
Names = tuple[str, ...] | Callable[[], Sequence[str]]


@dataclass(frozen=True, kw_only=True)
class RetrainedTwin:
    """The same network trained again, with the same recipe and seed, without some SE blocks: the paper's
    "retrained without" counterpart of removing those blocks from the trained network after the fact."""

    name: str  # the twin's zoo name, e.g. "se_resnet_fmnist_nose5"
    without: str  # the SE blocks it lacks, as a block selection of the original (e.g. "stage:5")
    description: str  # for people: "SE in stage 5"


@dataclass(frozen=True, kw_only=True)
class HeldOutSet:
    """A model's full test set, offered as an image source when it is installed (e.g. Fashion-MNIST's 10,000)."""

    name: str  # shown as the image source, e.g. "Fashion-MNIST test set"
    size: int  # images in the full set
    available: Callable[[], bool]  # cheap: is it on disk?
    load: Callable[..., ImageSet]  # load(limit=None): the first ``limit`` images, labelled in the model's classes


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A network of the zoo. Build it with keywords only: ``ModelSpec(name=..., source=..., ...)``."""

    name: str  # zoo name, e.g. "legacy_seresnet50"
    source: str  # "timm", "torchvision" or "senet_viz" (built by ``builder``, weights only from a file)
    family: str  # "SE-ResNet", "SE-ResNeXt", "SENet", "MobileNetV3", "EfficientNet", "RegNetY"
    paper_name: str  # how the paper (or the family's paper) calls it
    arch: str  # the constructor's name in its library
    paper: str  # where the architecture comes from
    labels: str = "imagenet"  # the label set's name: "imagenet", "fashion-mnist"
    categories: Names = imagenet_class_names  # class names in output-index order
    wnids: Names | None = imagenet_wnids  # ImageNet WordNet ids in output-index order (None: not ImageNet)
    supports_reduction: bool = False  # can be built with another SE reduction ratio r
    known_files: tuple[str, ...] = ()  # weights files looked for, relative to the project root
    builder: Callable[..., nn.Module] | None = None  # source "senet_viz": builder(reduction=r) -> network
    preprocess_config: Preprocess | None = None  # overrides the library's preprocessing config
    samples: str | None = None  # embedded sample images (class folders), relative to the project root
    retrained_twin: RetrainedTwin | None = None  # the same network retrained without some SE blocks
    paper_reference: bool = False  # the network the paper measured (SE-ResNet-50): its numbers are shown beside ours
    test_set: HeldOutSet | None = None  # the full test set, when the dashboard can offer it
    default: bool = False  # the dashboard opens with this model when its weights are on disk ...
    fallback: bool = False  # ... and with this one otherwise

    @functools.cached_property
    def preprocess(self) -> Preprocess:
        return _preprocess_for(self)

    @functools.cached_property
    def _names(self) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        names = tuple(self.categories if isinstance(self.categories, tuple) else self.categories())
        wnids = None
        if self.wnids is not None:
            wnids = tuple(self.wnids if isinstance(self.wnids, tuple) else self.wnids())
            if len(wnids) != len(names):
                raise ValueError(f"{self.name}: {len(wnids)} wnids for {len(names)} categories")
        return names, wnids

    @property
    def class_names(self) -> list[str]:
        """The categories, resolved (a new list each time: callers may keep or change it)."""
        return list(self._names[0])

    @property
    def class_wnids(self) -> list[str] | None:
        """The wnids, resolved, or None for a model outside ImageNet's label space."""
        wnids = self._names[1]
        return None if wnids is None else list(wnids)

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


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model (a later spec of the same name replaces the earlier one). Returns the spec."""
    REGISTRY[spec.name] = spec
    return spec


def register_model(**fields) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register the decorated function as the ``builder`` of a ``source="senet_viz"`` model named
    after it (or ``name=``); ``fields`` are the other :class:`ModelSpec` fields. Returns the function unchanged.

    >>> @register_model(family="SE-ResNet", paper_name="...", arch="MyNet", paper="...")  # doctest: +SKIP
    ... def my_se_net(reduction: int = 16) -> nn.Module: ...
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        spec_fields = {"name": fn.__name__, "source": "senet_viz", **fields}
        register(ModelSpec(builder=fn, **spec_fields))
        return fn

    return wrap


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; choose one of: {', '.join(REGISTRY)}") from None


def list_models() -> list[str]:
    """Registered names, in registration order."""
    return list(REGISTRY)


# ------------------------------------------------------------------------- how a spec builds and feeds itself


def _reduction_kwargs(spec: ModelSpec, reduction: int) -> dict:
    if reduction < 1:
        raise ValueError(f"the SE reduction ratio must be >= 1, not {reduction}")
    if spec.builder is not None or spec.arch.startswith("legacy_"):
        return {"reduction": reduction}
    from timm.layers import SEModule

    return {"block_args": {"attn_layer": functools.partial(SEModule, rd_ratio=1.0 / reduction)}}


def tv_weights(spec: ModelSpec):
    """torchvision's default pretrained weights enum member of a torchvision spec."""
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
    from torchvision import transforms as T

    kw = tv_weights(spec).transforms.keywords
    crop = kw["crop_size"]
    return Preprocess(crop=crop, resize=kw.get("resize_size", int(crop / 0.875)),
                      interpolation=kw.get("interpolation", T.InterpolationMode.BILINEAR).value)
