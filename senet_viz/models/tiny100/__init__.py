"""``se_resnet50_tiny100``: the SE-ResNet-50 layout, narrowed, trained by the project on 100 Tiny ImageNet classes.

Why: no machine here can download SE-ResNet-50 weights, so this is the project's own SE-ResNet of the paper's shape
on real ImageNet photos (64 x 64), with the paper's 50 held-out images per class, to test the paper's Fig. 6/7
claims offline.

- :mod:`.data`: the shared zip (``../shared/data/tiny-imagenet-100``), the deterministic 50-per-class held-out
  split, the decoded cache, the held-out set as an image source, the shipped sample folder;
- :mod:`.model`: the network (:class:`~.model.SEResNet50Tiny`, bottlenecks 3-4-6-3, SE before the addition);
- :mod:`.train`: the seeded, checkpointed training run (``python -m senet_viz train --dataset tiny-imagenet-100``)
  and :mod:`.table13`, the paper's Table 13 in miniature (retrained variants and post-hoc removal);
- :mod:`.card`: the model card rendered from the metrics JSON.

Importing this package registers ``se_resnet50_tiny100`` and ``se_resnet50_tiny100_nose5`` (no SE in stage 5, its
retrained twin) in :mod:`senet_viz.models.registry`; :mod:`senet_viz.models.zoo` imports it. Weights:
``assets/<name>.safetensors``.
"""

from __future__ import annotations

from senet_viz.models.preprocess import Preprocess
from senet_viz.models.registry import HeldOutSet, RetrainedTwin, register_model
from senet_viz.models.tiny100.data import (
    CLASSES_TSV,
    IMAGE_SIZE,
    LABEL_SET,
    MEAN,
    SAMPLES_DIR,
    STD,
    held_out_available,
    held_out_source,
    read_classes,
)
from senet_viz.models.tiny100.model import ALL_SE_STAGES, MODEL_NAME, SEResNet50Tiny, build_model
from senet_viz.paths import PROJECT_ROOT

__all__ = ["MODEL_NAME", "NOSE5_NAME", "PREPROCESS", "se_resnet50_tiny100", "se_resnet50_tiny100_nose5"]

NOSE5_NAME = f"{MODEL_NAME}_nose5"
PAPER = ("Hu et al., Squeeze-and-Excitation Networks, CVPR 2018 / TPAMI 2019; narrow SE-ResNet-50 layout trained "
         "here on 100 classes of Tiny ImageNet (Stanford CS231n, from ImageNet)")
PREPROCESS = Preprocess(crop=IMAGE_SIZE, resize=IMAGE_SIZE, interpolation="bilinear", mean=MEAN, std=STD)
TEST_SET = HeldOutSet(name="Tiny ImageNet-100 held-out set (50 per class)", size=5000, available=held_out_available,
                      load=held_out_source)


def class_lists() -> tuple[list[str], list[str]]:
    """(wnids, names) from the shared classes.tsv, else from the metrics JSON shipped beside the weights."""
    if CLASSES_TSV.is_file():
        return read_classes(CLASSES_TSV)
    import json

    m = json.loads((PROJECT_ROOT / "assets" / f"{MODEL_NAME}.json").read_text())
    return list(m["classes"]["wnids"]), list(m["classes"]["names"])


_FACTS = {"family": "SE-ResNet", "arch": "SEResNet50Tiny", "paper": PAPER, "labels": LABEL_SET,
          "categories": lambda: class_lists()[1], "wnids": lambda: class_lists()[0], "supports_reduction": True,
          "preprocess_config": PREPROCESS, "samples": SAMPLES_DIR.relative_to(PROJECT_ROOT).as_posix(),
          "test_set": TEST_SET}


@register_model(paper_name="SE-ResNet-50 layout, base width 16 (narrow), Tiny ImageNet-100 64 px; trained here",
                retrained_twin=RetrainedTwin(name=NOSE5_NAME, without="stage:5", description="SE in stage 5"),
                **_FACTS)
def se_resnet50_tiny100(reduction: int = 16) -> SEResNet50Tiny:  # the function's name is the model's (MODEL_NAME)
    return build_model(ALL_SE_STAGES, reduction)


@register_model(paper_name="SE-ResNet-50 layout (narrow) without SE in stage 5, retrained (Tiny ImageNet-100)",
                **_FACTS)
def se_resnet50_tiny100_nose5(reduction: int = 16) -> SEResNet50Tiny:
    return build_model((2, 3, 4), reduction)
