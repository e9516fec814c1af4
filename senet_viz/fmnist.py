"""The project's own embedded model: a paper-style SE-ResNet trained on Fashion-MNIST, its data and its training.

Why: ImageNet SE networks need downloaded weights and images; this one ships in ``assets/`` (a few MB) with a
small sample of the test set, so the dashboard shows real gates and a real ablation offline, at once.

- Data: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando Research, MIT licence), 28 x 28 grey garments
  (light garment on a black background), 60,000 training and 10,000 test images, 10 classes. Read with gzip +
  numpy from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), ``$SENET_VIZ_FMNIST_DIR``
  or a previous download; ``train`` downloads it through torchvision only when none of these exists.
- Model (:class:`SEResNetFMNIST`): a 3x3 stem at full 28 x 28 resolution, then four residual stages (paper
  stages 2..5 at 28, 14, 7 and 4 pixels) of basic blocks; in each block the SE module (timm ``SEModule``,
  r = 16) recalibrates the residual branch *before* the addition with the shortcut, as in the SENet paper's
  SE-ResNet module. ``se_stage_offset = 2`` makes :func:`senet_viz.blocks.find_se_blocks` name the blocks
  ``SE_2_1 .. SE_5_2``. ``se_stages`` leaves SE out of chosen stages (the paper's "retrained without" model).
- Zoo entries (registered by :func:`register_zoo_models`, called when :mod:`senet_viz.zoo` is imported):
  ``se_resnet_fmnist`` and ``se_resnet_fmnist_nose5`` (no SE in stage 5), weights in
  ``assets/<name>.safetensors``, a grey 28 x 28 transform (the pipeline hands the model RGB images).
- Training (:func:`train`, ``python -m senet_viz train``): seeded and deterministic on the CPU, a tqdm progress
  bar, test accuracy at the end, then the weights, a metrics JSON and a model card beside them.
- :func:`compare` measures post-hoc removal of the stage-5 SE blocks (gate = 1, or frozen to the mean gate)
  against the network retrained without them, on the full test set and the embedded sample.
"""

from __future__ import annotations

import datetime as _dt
import functools
import gzip
import hashlib
import json
import os
import platform
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageItem, ImageSet

CLASS_NAMES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                "Sneaker", "Bag", "Ankle boot")
LABEL_SET = "fashion-mnist"
#: Pixel mean and standard deviation of the 60,000 training images (pixels scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530
IMAGE_SIZE = 28

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "SENET_VIZ_FMNIST_DIR"
DOWNLOAD_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "senet_viz" / "fashion-mnist"
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = PROJECT_ROOT / "assets"
SAMPLES_DIR = ASSETS_DIR / "fmnist_samples"
SAMPLES_PER_CLASS = 30

MODEL_NAME = "se_resnet_fmnist"
NOSE5_NAME = "se_resnet_fmnist_nose5"
WIDTHS = (16, 32, 64, 128)
DEPTHS = (1, 1, 1, 2)
ALL_SE_STAGES = (2, 3, 4, 5)
PAPER = ("Hu et al., Squeeze-and-Excitation Networks, CVPR 2018 / TPAMI 2019; "
         "trained here on Fashion-MNIST (Xiao et al. 2017)")


def folder_name(class_name: str) -> str:
    """The sample folder of a class: ``T-shirt/top`` -> ``T-shirt_top``, ``Ankle boot`` -> ``Ankle_boot``.
    :func:`senet_viz.data.folder_source` maps it back (``_`` and ``/`` read as a space)."""
    return class_name.replace("/", "_").replace(" ", "_")


# --------------------------------------------------------------------------------------------- IDX data


_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; gzip-compressed if the name ends in ``.gz``) into a native-endian
    numpy array. Raises ``ValueError`` if the header or the size is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path.name}: not an IDX file (magic {raw[:4].hex() or 'missing'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path.name}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) != header + count * dtype.itemsize:
        raise ValueError(f"{path.name}: {len(raw) - header} data bytes, expected {count * dtype.itemsize} for "
                         f"shape {dims}")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _split_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    out = []
    for stem in _FILES[split]:
        found = next((folder / f"{stem}{ext}" for ext in (".gz", "") if (folder / f"{stem}{ext}").is_file()), None)
        if found is None:
            return None
        out.append(found)
    return out[0], out[1]


def dataset_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: $SENET_VIZ_FMNIST_DIR, Debian's package, the download cache."""
    env = [Path(d) for d in os.environ.get(DATA_DIR_ENV, "").split(os.pathsep) if d]
    return [*env, DEBIAN_DIR, DOWNLOAD_ROOT / "FashionMNIST" / "raw"]


def find_fashion_mnist(root: str | Path | None = None) -> Path | None:
    """The first folder (``root`` if given, else :func:`dataset_dirs`) that holds all four IDX files."""
    for folder in [Path(root)] if root is not None else dataset_dirs():
        if _split_files(folder, "train") and _split_files(folder, "test"):
            return folder
    return None


def fashion_mnist_available() -> bool:
    """True when the full dataset is on disk (so the full test set can be offered as an image source)."""
    return find_fashion_mnist() is not None


def _download() -> Path:
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(DOWNLOAD_ROOT), train=train, download=True)
    return DOWNLOAD_ROOT / "FashionMNIST" / "raw"


def load_fashion_mnist(split: str = "test", root: str | Path | None = None,
                       download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 N x 28 x 28, labels int64 N)`` of the ``"train"`` or ``"test"`` split.

    Looks in ``root`` or :func:`dataset_dirs`; with ``download=True`` and nothing found, fetches it through
    torchvision's downloader into ``~/.cache/senet_viz/fashion-mnist``. Raises ``FileNotFoundError`` otherwise.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    folder = find_fashion_mnist(root)
    if folder is None and download and root is None:
        folder = _download()
    if folder is None:
        where = str(root) if root is not None else ", ".join(str(d) for d in dataset_dirs())
        raise FileNotFoundError(f"Fashion-MNIST not found in {where}; install Debian's dataset-fashion-mnist, set "
                                f"${DATA_DIR_ENV}, or run `python -m senet_viz train` online to download it")
    files = _split_files(folder, split)
    assert files is not None  # find_fashion_mnist checked both splits
    images, labels = read_idx(files[0]), read_idx(files[1]).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise ValueError(f"{files[0]}: expected uint8 N x 28 x 28 images, got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"{files[1]}: expected {len(images)} labels in 0..9")
    return images, labels


def _png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@functools.lru_cache(maxsize=2)
def _test_items(folder: str, limit: int | None) -> tuple[ImageItem, ...]:
    images, labels = load_fashion_mnist("test", root=folder)
    n = len(images) if limit is None else min(limit, len(images))
    return tuple(ImageItem(f"fashion-mnist/test/{i:05d}.png", f"test_{i:05d}.png", int(labels[i]),
                           CLASS_NAMES[labels[i]], data=_png(images[i])) for i in range(n))


def fashion_mnist_test_source(limit: int | None = None, root: str | Path | None = None) -> ImageSet:
    """The Fashion-MNIST test set (10,000 images, or the first ``limit``) as an image source in the model's
    label space. Items carry PNG bytes (about 5 MB in all, encoded once per process in a few seconds).
    Raises ``FileNotFoundError`` when the dataset is not installed (see :func:`fashion_mnist_available`)."""
    folder = find_fashion_mnist(root)
    if folder is None:
        load_fashion_mnist("test", root=root)  # raises with the places looked in
    return ImageSet(list(_test_items(str(folder), limit)), [], list(CLASS_NAMES))


def write_samples(dest: str | Path = SAMPLES_DIR, per_class: int = SAMPLES_PER_CLASS,
                  root: str | Path | None = None) -> Path:
    """Write the first ``per_class`` test images of every class (test-set order) to
    ``dest/<class folder>/<test index>.png`` plus a README crediting the dataset. Deterministic."""
    images, labels = load_fashion_mnist("test", root=root)
    dest = Path(dest)
    for c, cname in enumerate(CLASS_NAMES):
        folder = dest / folder_name(cname)
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            (folder / f"{i:05d}.png").write_bytes(_png(images[i]))
    (dest / "README.md").write_text(SAMPLES_README.format(per_class=per_class, total=per_class * len(CLASS_NAMES)))
    return dest


SAMPLES_README = """\
# Fashion-MNIST test-set sample

{total} images of the Fashion-MNIST **test** set: the first {per_class} of each of the 10 classes in test-set order,
one folder per class (`T-shirt_top` is the class "T-shirt/top"), each file named by its index in the test set.
Written by `senet_viz.fmnist.write_samples()` from the IDX files; pixels unchanged (28 x 28 grey, light garment
on a black background, PNG). Used for class comparisons with no dataset installed; the models
`se_resnet_fmnist` and `se_resnet_fmnist_nose5` never saw these images in training.

Source: Fashion-MNIST, Zalando Research, https://github.com/zalandoresearch/fashion-mnist
Han Xiao, Kashif Rasul, Roland Vollgraf. *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms*. arXiv:1708.07747, 2017.

Licence: MIT. Copyright (c) 2017 Zalando SE. Permission is hereby granted, free of charge, to any person
obtaining a copy of this software and associated documentation files (the "Software"), to deal in the Software
without restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so,
subject to the following conditions: The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY
KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR
IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


# --------------------------------------------------------------------------------------------- model


class SEBasicBlock(nn.Module):
    """ResNet basic block; SE (timm ``SEModule``, r = ``reduction``) on the residual branch before the addition."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, se: bool = True, reduction: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if se:
            from timm.layers import SEModule

            self.se: nn.Module | None = SEModule(c_out, rd_ratio=1.0 / reduction, rd_divisor=1)
        else:
            self.se = None
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.act2(out + shortcut)


class SEResNetFMNIST(nn.Module):
    """SE-ResNet for 1 x 28 x 28 inputs: stem, ``layer1..layer4`` = paper stages 2..5 (28, 14, 7, 4 px), pool, fc.

    ``se_stages`` lists the paper stages whose blocks carry SE (default all four). A 3-channel input (e.g. a
    generic RGB probe) is averaged to one grey channel; the zoo transform already gives one channel.
    """

    se_stage_offset = 2  # stage 2 runs at full resolution: blocks read SE_2_x .. SE_5_x as in the paper

    def __init__(self, num_classes: int = len(CLASS_NAMES), widths: Sequence[int] = WIDTHS,
                 depths: Sequence[int] = DEPTHS, se_stages: Sequence[int] = ALL_SE_STAGES, reduction: int = 16,
                 in_chans: int = 1) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError("widths and depths need one entry per stage (4 stages)")
        if not set(se_stages) <= set(ALL_SE_STAGES):
            raise ValueError(f"se_stages must be among {ALL_SE_STAGES}, got {tuple(se_stages)}")
        self.in_chans = in_chans
        self.config = {"widths": list(widths), "depths": list(depths), "se_stages": sorted(se_stages),
                       "reduction": reduction, "num_classes": num_classes, "in_chans": in_chans}
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU()
        c_in = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            stage = i + 2
            blocks = []
            for j in range(depth):
                blocks.append(SEBasicBlock(c_in, width, 2 if (i > 0 and j == 0) else 1, stage in se_stages,
                                           reduction))
                c_in = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is None:  # the main path's convs (SE's 1x1 convs have biases)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3 and self.in_chans == 1:
            x = x.mean(dim=1, keepdim=True)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.global_pool(x), 1))


def build_model(se_stages: Sequence[int] = ALL_SE_STAGES, reduction: int = 16, widths: Sequence[int] = WIDTHS,
                depths: Sequence[int] = DEPTHS) -> SEResNetFMNIST:
    return SEResNetFMNIST(widths=widths, depths=depths, se_stages=se_stages, reduction=reduction)


def transform() -> Callable:
    """RGB (or any) PIL image -> normalised 1 x 28 x 28 tensor: grey, short side 28, centre crop 28."""
    from torchvision import transforms as T

    return T.Compose([T.Grayscale(1), T.Resize(IMAGE_SIZE), T.CenterCrop(IMAGE_SIZE), T.ToTensor(),
                      T.Normalize((MEAN,), (STD,))])


def model_name_for(se_stages: Sequence[int]) -> str:
    missing = [s for s in ALL_SE_STAGES if s not in set(se_stages)]
    return MODEL_NAME if not missing else f"{MODEL_NAME}_nose{''.join(map(str, missing))}"


def register_zoo_models() -> None:
    """Register ``se_resnet_fmnist`` / ``se_resnet_fmnist_nose5`` and the Fashion-MNIST class names in the zoo."""
    from . import zoo

    zoo.register_labels(LABEL_SET, lambda: list(CLASS_NAMES))
    pre = zoo.Preprocess(crop=IMAGE_SIZE, resize=IMAGE_SIZE, interpolation="bilinear", mean=(MEAN,), std=(STD,),
                         channels=1)
    for name, stages, paper_name in (
        (MODEL_NAME, ALL_SE_STAGES, "SE-ResNet (4 stages, Fashion-MNIST; embedded)"),
        (NOSE5_NAME, (2, 3, 4), "SE-ResNet without SE in stage 5, retrained (Fashion-MNIST; embedded)"),
    ):
        zoo.register(zoo.ModelSpec(
            name, "senet_viz", "SE-ResNet", paper_name, "SEResNetFMNIST", PAPER, labels=LABEL_SET,
            supports_reduction=True, builder=functools.partial(build_model, stages), preprocess_config=pre,
            samples="assets/fmnist_samples"))


# --------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Recipe:
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.2  # OneCycle peak
    momentum: float = 0.9
    weight_decay: float = 5e-4  # conv / linear weights only
    label_smoothing: float = 0.1
    pad: int = 2  # random crop 28 from the image zero-padded by ``pad``
    flip: float = 0.5  # horizontal flip probability

    def describe(self) -> str:
        return (f"SGD (momentum {self.momentum}, Nesterov), batch {self.batch_size}, {self.epochs} epochs, "
                f"OneCycle learning rate (peak {self.lr}, 25% warm-up, cosine), weight decay {self.weight_decay} on "
                f"conv/linear weights, label smoothing {self.label_smoothing}; augmentation: random 28 x 28 crop of "
                f"the image zero-padded by {self.pad} px, horizontal flip p = {self.flip}")


def _normalise(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 B x 28 x 28 -> float B x 1 x 28 x 28, exactly as ToTensor + Normalize((MEAN,), (STD,))."""
    x = batch_u8.unsqueeze(1).float().div(255)
    return x.sub_(MEAN).div_(STD)


def _augment(padded: torch.Tensor, idx: torch.Tensor, recipe: Recipe, gen: torch.Generator) -> torch.Tensor:
    b, size = len(idx), IMAGE_SIZE
    offsets = torch.randint(0, 2 * recipe.pad + 1, (2, b), generator=gen)
    rows = (offsets[0][:, None] + torch.arange(size))[:, :, None]
    cols = (offsets[1][:, None] + torch.arange(size))[:, None, :]
    crops = padded[idx[:, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < recipe.flip
    return torch.where(flip[:, None, None], crops.flip(-1), crops)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits (float32 N x 10) of uint8 N x 28 x 28 images, model in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(images))
        return torch.cat([model(_normalise(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]).numpy()
    finally:
        model.train(was_training)


def train_model(model: nn.Module, images: np.ndarray, labels: np.ndarray, recipe: Recipe, seed: int = 0,
                progress: bool = True, log: Callable[[str], None] = print,
                monitor: Callable[[nn.Module], float] | None = None) -> list[dict]:
    """Train ``model`` in place on uint8 N x 28 x 28 ``images``; returns one dict of statistics per epoch.
    ``monitor(model)`` (e.g. test accuracy) is logged after each epoch; it is never used to pick a model."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    x = F.pad(torch.from_numpy(np.ascontiguousarray(images)), (recipe.pad,) * 4)
    y = torch.from_numpy(labels)
    n = len(y)
    steps = (n + recipe.batch_size - 1) // recipe.batch_size
    decay = [p for name, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for name, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps,
                                                pct_start=0.25, anneal_strategy="cos", div_factor=10,
                                                final_div_factor=100)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    history = []
    start = time.perf_counter()
    model.train()
    tty = sys.stderr.isatty()
    for epoch in range(1, recipe.epochs + 1):
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{recipe.epochs}", disable=not progress, unit="batch",
                   mininterval=1 if tty else 60, file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            idx = perm[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            xb, yb = _normalise(_augment(x, idx, recipe, gen)), y[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.3f}", refresh=False)
        bar.close()
        stats = {"epoch": epoch, "train_loss": loss_sum / n, "train_acc": correct / n,
                 "elapsed_s": round(time.perf_counter() - start, 1)}
        extra = ""
        if monitor is not None:
            stats["monitor"] = monitor(model)
            extra = f", test accuracy (monitor only) {stats['monitor']:.4f}"
        history.append(stats)
        log(f"epoch {epoch}/{recipe.epochs}: train loss {stats['train_loss']:.4f}, train accuracy (augmented) "
            f"{stats['train_acc']:.4f}{extra}, {stats['elapsed_s']:.0f} s")
    model.eval()
    return history


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _loaded(name: str, weights: Path, model: nn.Module | None = None):
    """A LoadedModel of ``weights`` through the zoo when ``name`` is registered, else wrapped from ``model``."""
    from . import zoo

    if name in zoo.REGISTRY:
        return zoo.load_model(name, weights=weights, device="cpu")
    assert model is not None
    return zoo.LoadedModel.from_module(model, name, list(CLASS_NAMES), transform=transform(),
                                       input_size=(1, IMAGE_SIZE, IMAGE_SIZE), device="cpu")


def sample_accuracy(loaded, samples: str | Path = SAMPLES_DIR) -> dict:
    """``senet_viz.ablation.evaluate`` of ``loaded`` on the embedded sample folder (as the CLI runs it)."""
    from .ablation import evaluate
    from .data import folder_source

    images = folder_source(samples, class_names=loaded.class_names, wnids=loaded.wnids)
    return evaluate(loaded, images)


def train(out: str | Path, *, se_stages: Sequence[int] = ALL_SE_STAGES, recipe: Recipe = Recipe(), seed: int = 0,
          threads: int = 1, data_root: str | Path | None = None, download: bool = True,
          samples: str | Path = SAMPLES_DIR, command: str | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Train an SE-ResNet on Fashion-MNIST and write ``out`` (.safetensors), ``out``.json (metrics) and
    ``out``.md (model card). Seeded and deterministic for a given torch version and thread count."""
    from safetensors.torch import save_file

    from .cost import count_macs

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, not {out.name}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    se_stages = tuple(sorted(se_stages))
    name = model_name_for(se_stages)
    train_x, train_y = load_fashion_mnist("train", data_root, download=download)
    test_x, test_y = load_fashion_mnist("test", data_root, download=False)
    folder = find_fashion_mnist(data_root)
    model = build_model(se_stages)
    params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {params:,} parameters, SE in stages {list(se_stages)}; training on {len(train_y):,} images from "
        f"{folder}, {threads} thread(s), seed {seed}")
    t0 = time.perf_counter()
    def test_accuracy(m: nn.Module) -> float:
        return float((predict(m, test_x).argmax(1) == test_y).mean())

    history = train_model(model, train_x, train_y, recipe, seed=seed, progress=progress, log=log,
                          monitor=test_accuracy)
    train_s = time.perf_counter() - t0
    test_pred = predict(model, test_x).argmax(1)
    test_acc = float((test_pred == test_y).mean())
    log(f"test accuracy ({len(test_y):,} images): {test_acc:.4f}")

    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": name, "config": json.dumps(model.config), "seed": str(seed), "test_top1": f"{test_acc:.4f}",
            "dataset": "Fashion-MNIST", "torch": torch.__version__}
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out), metadata=meta)
    if not Path(samples).is_dir():
        write_samples(samples, root=folder)
    loaded = _loaded(name, out, model)
    sample = sample_accuracy(loaded, samples)
    macs, _ = count_macs(model, (1, IMAGE_SIZE, IMAGE_SIZE))
    se_params = sum(b.params for b in loaded.blocks)
    metrics = {
        "model": name,
        "weights": out.name,
        "weights_sha256": _sha256(out),
        "architecture": {**model.config, "params": params, "se_params": se_params, "macs": int(macs),
                         "se_blocks": [b.name for b in loaded.blocks]},
        "data": {"dataset": "Fashion-MNIST", "source": str(folder), "train_images": len(train_y),
                 "test_images": len(test_y), "mean": MEAN, "std": STD},
        "recipe": {**recipe.__dict__, "description": recipe.describe()},
        "command": command or f"python -m senet_viz train --out {out}",
        "seed": seed,
        "threads": threads,
        "test_top1": test_acc,
        "test_errors": int((test_pred != test_y).sum()),
        "sample_top1": sample["top1"],
        "sample_top5": sample["top5"],
        "sample_images": sample["n_images"],
        "history": history,
        "train_seconds": round(train_s, 1),
        "date": _dt.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU core(s)",
    }
    json_path = out.with_suffix(".json")
    old = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if "comparison" in old and old.get("weights_sha256") == metrics["weights_sha256"]:
        metrics["comparison"] = old["comparison"]
    json_path.write_text(json.dumps(metrics, indent=2) + "\n")
    write_card(json_path)
    log(f"sample accuracy ({sample['n_images']} embedded images): {sample['top1']:.4f}")
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), {json_path.name}, {out.with_suffix('.md').name}")
    return metrics


# --------------------------------------------------------------------------------------------- comparison


def compare(assets: str | Path = ASSETS_DIR, full_test: bool = True, threads: int | None = 1,
            log: Callable[[str], None] = print) -> dict:
    """Post-hoc removal of the stage-5 SE blocks vs the network retrained without them, in numbers.

    Evaluates on the embedded sample and (if installed and ``full_test``) the full test set, with
    :func:`senet_viz.ablation.evaluate`: ``se_resnet_fmnist`` as trained, with stage 5 removed (gate = 1,
    ``identity``) and frozen to its mean gate (``mean``: fitted on a 20% calibration split, scored on the other
    80%), and ``se_resnet_fmnist_nose5``. Stores the table under ``comparison`` in both models' JSON and
    re-renders both cards. Returns the comparison. ``threads`` (torch CPU threads during the run; None: leave as
    is): on a busy 2-core machine one thread is several times faster than two.
    """
    assets = Path(assets)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _compare(assets, full_test, log)
    finally:
        torch.set_num_threads(old_threads)


def _compare(assets: Path, full_test: bool, log: Callable[[str], None]) -> dict:
    from .ablation import evaluate
    from .blocks import select_blocks
    from .data import folder_source
    from .zoo import load_model

    se = load_model(MODEL_NAME, weights=assets / f"{MODEL_NAME}.safetensors", device="cpu")
    nose5 = load_model(NOSE5_NAME, weights=assets / f"{NOSE5_NAME}.safetensors", device="cpu")
    stage5 = select_blocks(se.blocks, "stage:5")
    sources = {"sample": folder_source(assets / "fmnist_samples", class_names=list(CLASS_NAMES))}
    if full_test and fashion_mnist_available():
        sources["test"] = fashion_mnist_test_source()
    keys = ("top1", "full_top1", "agreement", "kl", "params", "params_removed", "params_after", "n_images")
    rows: dict[str, dict] = {}
    for src, images in sources.items():
        for label, loaded, blocks, mode in (("se", se, [], "identity"), ("posthoc_identity", se, stage5, "identity"),
                                            ("posthoc_mean", se, stage5, "mean"), ("retrained_nose5", nose5, [],
                                                                                    "identity")):
            t = time.perf_counter()
            res = evaluate(loaded, images, blocks, mode=mode)  # the CLI's batch size: numbers match it exactly
            rows[f"{src}/{label}"] = {k: res[k] for k in keys}
            log(f"{src:6s} {label:17s} top-1 {res['top1']:.4f} (full network on the same images "
                f"{res['full_top1']:.4f}), n = {res['n_images']}, params {res['params_after']:,}, "
                f"{time.perf_counter() - t:.0f} s")
    comparison = {"date": _dt.date.today().isoformat(), "ablated": [b.name for b in stage5], "rows": rows}
    for name in (MODEL_NAME, NOSE5_NAME):
        path = assets / f"{name}.json"
        metrics = json.loads(path.read_text())
        metrics["comparison"] = comparison
        path.write_text(json.dumps(metrics, indent=2) + "\n")
        write_card(path)
    return comparison


# --------------------------------------------------------------------------------------------- model card


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def write_card(json_path: str | Path) -> Path:
    """Render ``<model>.md`` from ``<model>.json`` (the metrics written by :func:`train` / :func:`compare`)."""
    json_path = Path(json_path)
    m = json.loads(json_path.read_text())
    a, r = m["architecture"], m["recipe"]
    nose = [s for s in ALL_SE_STAGES if s not in a["se_stages"]]
    lines = [
        f"# {m['model']}: SE-ResNet on Fashion-MNIST" + (f" without SE in stage {nose[0]}" if nose else ""),
        "",
        "The project's embedded model, trained by the project itself so that the dashboard shows real SE gates "
        "offline" + (". It is the paper's *retrained without SE* counterpart of `se_resnet_fmnist`." if nose else "."),
        "",
        "## Model",
        "",
        f"- Paper-style SE-ResNet (Hu et al., SENet): 3x3 stem (1 -> {a['widths'][0]} channels) at 28 x 28, then four "
        f"residual stages of basic blocks, paper stages 2..5 at 28/14/7/4 px, widths {a['widths']}, blocks "
        f"{a['depths']}; global average pool, linear classifier (10 classes).",
        f"- SE (timm `SEModule`, r = {a['reduction']}) on the residual branch before the addition, in stages "
        f"{a['se_stages']}: blocks {', '.join(a['se_blocks']) or 'none'}.",
        f"- {a['params']:,} parameters ({a['se_params']:,} in SE blocks, {a['se_params'] / a['params']:.2%}); "
        f"{a['macs'] / 1e6:.1f} M multiply-accumulates per image.",
        f"- Input: 1 x 28 x 28 grey, pixels / 255 normalised with mean {m['data']['mean']} and std "
        f"{m['data']['std']} (of the training images); white-on-black as in the dataset.",
        f"- Weights: `assets/{m['weights']}` (safetensors, sha256 `{m['weights_sha256'][:16]}...`).",
        "",
        "## Data",
        "",
        f"Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando Research, MIT licence): {m['data']['train_images']:,} "
        f"training images (all used for training, no validation split), {m['data']['test_images']:,} test images "
        f"(used only for the final evaluation). Read from `{m['data']['source']}`.",
        "",
        "## Recipe",
        "",
        f"{r['description']}. Seed {m['seed']}, {m['threads']} CPU thread(s), "
        "`torch.use_deterministic_algorithms(True)`.",
        "",
        "```",
        m["command"],
        "```",
        "",
        "## Results",
        "",
        "| | top-1 |",
        "|---|---|",
        f"| full Fashion-MNIST test set ({m['data']['test_images']:,} images) | **{_pct(m['test_top1'])}** "
        f"({m['test_errors']} errors) |",
        f"| embedded sample `assets/fmnist_samples` ({m['sample_images']} images) | {_pct(m['sample_top1'])} |",
        "",
        f"The sample number is what `python -m senet_viz evaluate --model {m['model']} --images assets/fmnist_samples "
        f"--json` reports (`top1`); with 300 images its standard error is about "
        f"{100 * (m['test_top1'] * (1 - m['test_top1']) / max(m['sample_images'], 1)) ** 0.5:.1f} points.",
        "",
        "Training: " + "; ".join(f"epoch {h['epoch']} loss {h['train_loss']:.3f}"
                                 + (f" (test {_pct(h['monitor'])})" if "monitor" in h else "") for h in m["history"])
        + f". {m['train_seconds'] / 60:.1f} min of training on {m['machine']} (shared), {m['date']}, "
        f"torch {m['torch']}, Python {m['python']}. The per-epoch test accuracy is logged to watch the run, never "
        "used to choose anything: the weights are those after the last epoch.",
    ]
    comp = m.get("comparison")
    if comp:
        rows = comp["rows"]
        labels = {"se": "SE-ResNet as trained", "posthoc_identity": "post-hoc: stage-5 SE removed (gate = 1)",
                  "posthoc_mean": "post-hoc: stage-5 SE frozen to its mean gate",
                  "retrained_nose5": "retrained without SE in stage 5 (`se_resnet_fmnist_nose5`)"}
        srcs = [s for s in ("test", "sample") if f"{s}/se" in rows]
        header = " | ".join({"test": "test set top-1", "sample": "sample top-1"}[s] for s in srcs)
        lines += [
            "",
            "## Post-hoc removal vs retrained without (stage 5)",
            "",
            f"SE blocks {', '.join(comp['ablated'])} (the paper's last stage). Post-hoc: the trained SE-ResNet with "
            "those gates replaced at inference (no retraining). Retrained: the same recipe and seed with no SE in "
            f"stage 5. Measured {comp['date']} with `senet_viz.fmnist.compare()` (`senet_viz.ablation.evaluate`).",
            "",
            f"| network | {header} | agreement with full (test) | parameters |",
            "|---|" + "---|" * (len(srcs) + 2),
        ]
        for key, label in labels.items():
            cells = [_pct(rows[f"{s}/{key}"]["top1"]) for s in srcs]
            agree = rows.get(f"{srcs[0]}/{key}", {}).get("agreement") if key.startswith("posthoc") else None
            lines.append(f"| {label} | {' | '.join(cells)} | {_pct(agree) if agree is not None else '-'} | "
                         f"{rows[f'{srcs[0]}/{key}']['params_after']:,} |")
        if "test/posthoc_mean" in rows:
            pm = rows["test/posthoc_mean"]
            lines += ["", f"The mean-gate row is scored on the {pm['n_images']:,} images outside its calibration "
                          f"split; the full network scores {_pct(pm['full_top1'])} on those same images."]
        src = srcs[0]
        full, ident, mean, nose = (rows[f"{src}/{k}"] for k in ("se", "posthoc_identity", "posthoc_mean",
                                                                  "retrained_nose5"))
        saved = full["params"] - nose["params_after"]
        lines += [
            "",
            f"Reading ({'full test set' if src == 'test' else 'sample'}): removing the stage-5 gates after training "
            f"changes top-1 by {100 * (ident['top1'] - full['top1']):+.2f} points (the network was trained with "
            f"gates below 1 there), freezing them to their mean by {100 * (mean['top1'] - mean['full_top1']):+.2f} "
            f"points; the network retrained without them differs from the SE network by "
            f"{100 * (nose['top1'] - full['top1']):+.2f} points, from one training run (seed 0) each, so a gap of "
            f"a few tenths of a point is within run-to-run variation. Stage 5's SE blocks hold {saved:,} "
            f"parameters ({saved / full['params']:.2%} of the network; the paper's ~6% for ResNet-50 comes from its "
            f"2048-channel stage-5 SE blocks).",
            "",
            "Reproduce: `python -m senet_viz train --out assets/se_resnet_fmnist.safetensors --epochs 5 --seed 0 "
            "--threads 1`, the same with `--out assets/se_resnet_fmnist_nose5.safetensors --no-se-stage 5`, then "
            "`python -m senet_viz train --compare`.",
        ]
    lines.append("")
    card = json_path.with_suffix(".md")
    card.write_text("\n".join(lines))
    return card


# --------------------------------------------------------------------------------------------- command line


def add_train_arguments(p) -> None:
    """The ``train`` subcommand's options (shared by ``python -m senet_viz train``)."""
    d = Recipe()
    p.add_argument("--out", type=Path, default=ASSETS_DIR / f"{MODEL_NAME}.safetensors",
                   help="weights file (.safetensors); the metrics .json and the model card .md go beside it")
    p.add_argument("--no-se-stage", type=int, action="append", default=[], choices=ALL_SE_STAGES,
                   help="train without SE in this paper stage (repeatable), e.g. 5 for se_resnet_fmnist_nose5")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="OneCycle peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads; 1 is fastest on a busy shared machine, results depend on it")
    p.add_argument("--data", type=Path, help="folder with the four Fashion-MNIST IDX files (default: Debian's)")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.add_argument("--samples", type=Path, default=SAMPLES_DIR, help="embedded sample folder (written if missing)")
    p.add_argument("--write-samples", action="store_true", help="only (re)write the sample folder, then exit")
    p.add_argument("--compare", action="store_true",
                   help="only measure post-hoc stage-5 removal vs the retrained nose5 model (both in assets/)")


def run_train_command(args) -> dict:
    if args.write_samples:
        path = write_samples(args.samples, root=args.data)
        return {"samples": str(path)}
    if args.compare:
        return compare(ASSETS_DIR, threads=args.threads)
    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        raise ValueError("--epochs, --batch-size and --threads must be positive")
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    stages = tuple(s for s in ALL_SE_STAGES if s not in set(args.no_se_stage))
    command = "python -m senet_viz " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    if command is None:
        extra = "".join(f" --no-se-stage {s}" for s in args.no_se_stage)
        command = (f"python -m senet_viz train --out {args.out}{extra} --epochs {args.epochs} --seed {args.seed} "
                   f"--threads {args.threads}")
    progress = not getattr(args, "json", False) or sys.stderr.isatty()
    log = (lambda s: print(s, file=sys.stderr)) if getattr(args, "json", False) else print
    return train(args.out, se_stages=stages, recipe=recipe, seed=args.seed, threads=args.threads,
                 data_root=args.data, download=not args.no_download, samples=args.samples, command=command,
                 progress=progress, log=log)
