"""Image preprocessing of the zoo's models: resize, center-crop, scale, normalise (a torchvision pipeline).

:class:`Preprocess` is a model's preprocessing as data (a field of its :class:`~senet_viz.models.registry.ModelSpec`);
:meth:`Preprocess.transform` builds the PIL pipeline, a :class:`PreprocessTransform` that the runner
(:mod:`senet_viz.inference.run`) can also replay on tensors decoded by a faster JPEG decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from torchvision import transforms as T

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

    The runner applies the same steps to tensors decoded by a faster JPEG decoder (:mod:`senet_viz.inference.run`);
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


def parse_numbers(text: str | None, label: str, kind: type = float) -> tuple | None:
    """A typed list of numbers as a tuple of ``kind``: comma-separated (``0.485,0.456,0.406``; a size also as
    ``3x224x224``); None when ``text`` is None or blank. A ValueError names ``label`` (a flag or a field)."""
    if text is None or not text.strip():
        return None
    try:
        values = tuple(kind(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise ValueError(f"{label} takes comma-separated numbers, got {text!r}")
    return values
