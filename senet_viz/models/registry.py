"""The model registry: :class:`ModelSpec` (what the project knows about a network) and the table of names.

The registry knows no model (timm's pattern): it imports no network definition, and models are added with
:func:`register` or the :func:`register_model` decorator by the modules that define them. :mod:`senet_viz.models.zoo`
registers the curated timm / torchvision list and imports :mod:`senet_viz.models.embedded`, which registers the
project's own Fashion-MNIST networks, and :mod:`senet_viz.models.tiny100` (its Tiny ImageNet-100 SE-ResNet);
importing :mod:`senet_viz.models.zoo` therefore makes every model available.

A spec is built with keyword arguments only. Besides how to build and feed the network it carries the facts the
dashboard and the command line read instead of special-casing names: its ``categories`` (class names, a tuple
or a function that loads them lazily, torchvision's ``weights.meta["categories"]`` pattern), the ``wnids`` of
ImageNet models, a ``retrained_twin`` (the same network retrained without some SE blocks), whether the paper's
own reference numbers apply (``paper_reference``), a full ``test_set`` that can be offered as an image source,
and whether it is the dashboard's ``default`` or ``fallback`` model.

**Open names.** :func:`get_spec` also answers names that are not registered: any timm model (with or without its
pretrained tag, ``seresnext101_32x8d.ah_in1k``) and any torchvision classification model (optionally with a
weights member, ``regnet_y_16gf.IMAGENET1K_SWAG_E2E_V1``) becomes a spec built on the fly (:func:`open_spec`),
its preprocessing and class names read offline from timm's pretrained config and ImageNet label info or from
torchvision's weights enum. The rule: a registered name wins; ``timm:<name>`` and ``torchvision:<name>`` say which
library; a bare name is taken from the one library that has it, and a name both have (``resnet50``,
``efficientnet_b4``) is refused with the two prefixed spellings. Whether the network has channel gates is
checked when it is loaded (:func:`senet_viz.models.zoo.load_model`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from senet_viz.data.labels import imagenet_class_names, imagenet_wnids
from senet_viz.models.preprocess import Preprocess
from senet_viz.paths import PROJECT_ROOT

if TYPE_CHECKING:
    from senet_viz.data.sources import ImageSet

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
    weights_tag: str | None = None  # torchvision: the weights enum member (None: DEFAULT); timm tags live in arch
    curated: bool = True  # False for a spec made on the fly from an open timm / torchvision name

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

        if not self.curated and len(self.class_names) != 1000:  # weights with another label set
            kwargs["num_classes"] = len(self.class_names)
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


class UnknownModelError(KeyError):
    """A name that is neither registered nor a timm / torchvision model (or an ambiguous one)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


TIMM_PREFIX = "timm:"
TORCHVISION_PREFIX = "torchvision:"


def get_spec(name: str) -> ModelSpec:
    """The registered spec of ``name``, else the open spec of a timm / torchvision name (see the module docstring).
    Raises :class:`UnknownModelError` (a ``KeyError``) naming the choices."""
    spec = REGISTRY.get(name)
    if spec is not None:
        return spec
    return open_spec(str(name).strip())


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
    """torchvision's pretrained weights enum member of a torchvision spec (its ``weights_tag``, else DEFAULT)."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(spec.arch)
    return getattr(weights, spec.weights_tag) if spec.weights_tag else weights.DEFAULT


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
    # torchvision's own transform (ImageClassification): crop, resize, interpolation, mean and std of the weights
    t = tv_weights(spec).transforms()
    crop = _first(t.crop_size)
    return Preprocess(crop=crop, resize=_first(getattr(t, "resize_size", None) or int(crop / 0.875)),
                      interpolation=t.interpolation.value, mean=tuple(t.mean), std=tuple(t.std))


def _first(size: int | Sequence[int]) -> int:
    return int(size if isinstance(size, int) else size[0])


# ------------------------------------------------------------------------- open names: timm and torchvision


def _unknown(name: str, why: str) -> UnknownModelError:
    return UnknownModelError(
        f"unknown model '{name}': {why}. Use a zoo name ({', '.join(REGISTRY)}), any timm model "
        f"(`timm:<name>`, with its pretrained tag if you like: seresnext101_32x8d.ah_in1k), any torchvision "
        f"classification model (`torchvision:<name>`), or a model file; `python -m senet_viz models --all` lists the "
        f"architectures with channel gates")


@functools.cache
def _torchvision_names() -> frozenset[str]:
    import torchvision.models as tvm

    return frozenset(tvm.list_models(module=tvm))  # classification models only


def _timm_has(name: str) -> bool:
    import timm

    return bool(name) and timm.is_model(name)


@functools.lru_cache(maxsize=256)
def open_spec(name: str) -> ModelSpec:
    """A spec made on the fly for a timm or torchvision model name (the rule is in the module docstring)."""
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        if not _timm_has(arch):
            raise _unknown(name, f"timm has no model '{arch}'")
        return _timm_spec(name, arch)
    if name.startswith(TORCHVISION_PREFIX):
        arch = name[len(TORCHVISION_PREFIX):]
        if arch.partition(".")[0] not in _torchvision_names():
            raise _unknown(name, f"torchvision has no classification model '{arch.partition('.')[0]}'")
        return _torchvision_spec(name, arch)
    in_timm, in_tv = _timm_has(name), name.partition(".")[0] in _torchvision_names()
    base, dot, tag = name.partition(".")
    if dot and in_timm and in_tv:  # a tag: the library whose tag (timm) or weights member (torchvision) it is
        import timm
        import torchvision.models as tvm

        in_timm = name in timm.list_pretrained(f"{base}.*")
        in_tv = tag in tvm.get_model_weights(base).__members__
    if in_timm and in_tv:
        raise _unknown(name, f"both timm and torchvision have it: write timm:{name} or torchvision:{name}")
    if in_timm:
        return _timm_spec(name, name)
    if in_tv:
        return _torchvision_spec(name, name)
    raise _unknown(name, "not a zoo name, nor a timm or torchvision model")


def _timm_spec(name: str, arch: str) -> ModelSpec:
    import timm
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except RuntimeError:  # "Invalid pretrained tag (x) for <arch>"
        base = arch.partition(".")[0]
        tags = timm.list_pretrained(f"{base}.*")
        raise _unknown(name, f"timm's {base} has no pretrained tag '{arch.partition('.')[2]}' (its tags: "
                             f"{', '.join(t.partition('.')[2] for t in tags) or 'none'})") from None
    info = cfg.to_dict() if cfg is not None else {}
    labels, categories, wnids = _timm_labels(info)
    papers = info.get("paper_ids") or info.get("paper_name") or info.get("origin_url")
    tag = f" ({info['tag']})" if info.get("tag") else ""
    return ModelSpec(name=name, source="timm", family=str(info.get("architecture") or arch.partition(".")[0]),
                     paper_name=f"{arch}{tag if '.' not in arch else ''} (timm)", arch=arch,
                     paper=str(papers or "timm model (see its pretrained config)"), labels=labels,
                     categories=categories, wnids=wnids, curated=False)


def _generic_names(n: int) -> tuple[str, ...]:
    return tuple(f"class {i}" for i in range(n))


def _timm_labels(cfg: dict) -> tuple[str, Names, Names | None]:
    """(label set, class names, wnids) of a timm pretrained config, offline: ImageNet-1k from the project's table
    (short names, as the curated models); other ImageNet subsets from timm's ImageNetInfo; else the config's own
    label names, else ``class 0 .. N-1``."""
    n = int(cfg.get("num_classes") or 1000)
    if cfg.get("label_names"):
        names = tuple(cfg.get("label_descriptions") or cfg["label_names"])
        return "timm", names, None
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(cfg) if cfg else ("imagenet-1k" if n == 1000 else None)
    offset = int(cfg.get("label_offset") or 0)
    if subset == "imagenet-1k" and n == 1000 and not offset:
        return "imagenet", imagenet_class_names, imagenet_wnids
    if subset:
        info = ImageNetInfo(subset)
        descriptions = [d.split(",")[0].strip() for d in info.label_descriptions()]
        wnids = list(info.label_names())
        if len(wnids) + offset == n:
            return subset, tuple(["background"] * offset + descriptions), tuple(["background"] * offset + wnids)
    return "timm", _generic_names(n), None


def _torchvision_spec(name: str, arch: str) -> ModelSpec:
    import torchvision.models as tvm

    base, _, tag = arch.partition(".")
    enum = tvm.get_model_weights(base)
    if tag and tag not in enum.__members__:
        raise _unknown(name, f"torchvision's {base} has no weights '{tag}' (its weights: "
                             f"{', '.join(m for m in enum.__members__ if m != 'DEFAULT')})")
    weights = getattr(enum, tag) if tag else enum.DEFAULT
    categories = tuple(weights.meta.get("categories") or ())
    imagenet = len(categories) == 1000
    recipe = weights.meta.get("recipe") or "torchvision"
    return ModelSpec(name=name, source="torchvision", family=base, arch=base, weights_tag=tag or None,
                     paper_name=f"{base} ({weights.name}, torchvision)", paper=str(recipe),
                     labels="imagenet" if imagenet else "torchvision",
                     categories=categories or _generic_names(1000), wnids=imagenet_wnids if imagenet else None,
                     curated=False)
