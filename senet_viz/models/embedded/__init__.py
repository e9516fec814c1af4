"""The project's own embedded model: a paper-style SE-ResNet trained on Fashion-MNIST, with its data and training.

Why: ImageNet SE networks need downloaded weights and images; this one ships in ``assets/`` (a few MB) with a
small sample of the test set, so the dashboard shows real gates and a real ablation offline, at once.

- :mod:`.data`: Fashion-MNIST (IDX reader, where it is found or downloaded, the test set as an image source, the
  shipped sample folder);
- :mod:`.model`: the network (:class:`~.model.SEResNetFMNIST`, SE on the residual branch before the addition);
- :mod:`.train`: the seeded, deterministic training run (``python -m senet_viz train``;
  :mod:`senet_viz.cli.train` holds its options) and :mod:`.comparison`, post-hoc removal of stage 5 vs the
  network retrained without it;
- :mod:`.card`: the model card, rendered from the metrics JSON with the templates in :mod:`.templates`.

Importing this package registers the two networks in :mod:`senet_viz.models.registry` (it imports the registry only,
never the zoo; :mod:`senet_viz.models.zoo` imports this package): ``se_resnet_fmnist`` (the dashboard's default model)
and ``se_resnet_fmnist_nose5`` (no SE in stage 5, its retrained twin), weights in ``assets/<name>.safetensors``,
a grey 28 x 28 preprocessing (the pipeline hands the model RGB images), the Fashion-MNIST class names as their
``categories`` and the full test set as their ``test_set`` when it is installed.
"""

from __future__ import annotations

from senet_viz.models.embedded.data import (
    CLASS_NAMES,
    IMAGE_SIZE,
    LABEL_SET,
    MEAN,
    SAMPLES_DIR,
    STD,
    TEST_SIZE,
    fashion_mnist_available,
    fashion_mnist_test_source,
)
from senet_viz.models.embedded.model import ALL_SE_STAGES, NOSE5_NAME, SEResNetFMNIST, build_model
from senet_viz.models.preprocess import Preprocess
from senet_viz.models.registry import HeldOutSet, RetrainedTwin, register_model
from senet_viz.paths import PROJECT_ROOT

__all__ = ["PAPER", "PREPROCESS", "TEST_SET", "se_resnet_fmnist", "se_resnet_fmnist_nose5"]

PAPER = ("Hu et al., Squeeze-and-Excitation Networks, CVPR 2018 / TPAMI 2019; "
         "trained here on Fashion-MNIST (Xiao et al. 2017)")
PREPROCESS = Preprocess(crop=IMAGE_SIZE, resize=IMAGE_SIZE, interpolation="bilinear", mean=(MEAN,), std=(STD,),
                        channels=1)
TEST_SET = HeldOutSet(name="Fashion-MNIST test set", size=TEST_SIZE, available=fashion_mnist_available,
                      load=fashion_mnist_test_source)
_FACTS = {"family": "SE-ResNet", "arch": "SEResNetFMNIST", "paper": PAPER, "labels": LABEL_SET,
          "categories": CLASS_NAMES, "wnids": None, "supports_reduction": True, "preprocess_config": PREPROCESS,
          "samples": SAMPLES_DIR.relative_to(PROJECT_ROOT).as_posix(), "test_set": TEST_SET}


@register_model(paper_name="SE-ResNet (4 stages, Fashion-MNIST; embedded)", default=True,
                retrained_twin=RetrainedTwin(name=NOSE5_NAME, without="stage:5", description="SE in stage 5"),
                **_FACTS)
def se_resnet_fmnist(reduction: int = 16) -> SEResNetFMNIST:  # the function's name is the model's (MODEL_NAME)
    return build_model(ALL_SE_STAGES, reduction)


@register_model(paper_name="SE-ResNet without SE in stage 5, retrained (Fashion-MNIST; embedded)", **_FACTS)
def se_resnet_fmnist_nose5(reduction: int = 16) -> SEResNetFMNIST:
    return build_model((2, 3, 4), reduction)

