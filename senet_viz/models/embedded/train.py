"""Training the embedded SE-ResNet on Fashion-MNIST (``python -m senet_viz train``).

Seeded and deterministic on the CPU for a given torch version and thread count, with a tqdm progress bar and the
test accuracy at the end; writes the weights, a metrics JSON and the model card beside them. The global torch
settings training needs (CPU threads, deterministic algorithms, seeded generators) hold only while it runs:
:func:`deterministic` puts them back afterwards, also when training fails.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from senet_viz.models.embedded.card import write_card
from senet_viz.models.embedded.data import (
    CLASS_NAMES,
    IMAGE_SIZE,
    MEAN,
    SAMPLES_DIR,
    STD,
    find_fashion_mnist,
    load_fashion_mnist,
    write_samples,
)
from senet_viz.models.embedded.model import ALL_SE_STAGES, build_model, model_name_for, transform
from senet_viz.models.loaded import LoadedModel, from_spec
from senet_viz.models.registry import REGISTRY, get_spec
from senet_viz.models.weights import file_digest, file_sha256, load_weights_into


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


# --------------------------------------------------------------------------------------------- global settings


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None: leave as is), then restore the previous count."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def deterministic(seed: int | None = None, threads: int | None = None) -> Iterator[None]:
    """Run the block with ``torch.use_deterministic_algorithms(True)``, ``threads`` CPU threads and the torch
    (CPU) and numpy global generators seeded with ``seed``; afterwards every one of these process-wide settings
    is as it was before, generator states included, whether the block returned or raised."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    np_state = np.random.get_state()
    with cpu_threads(threads), torch.random.fork_rng(devices=[]):
        try:
            if seed is not None:
                torch.manual_seed(seed)
                np.random.seed(seed)
            torch.use_deterministic_algorithms(True)
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
            np.random.set_state(np_state)


# --------------------------------------------------------------------------------------------- the loop


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
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500,
            normalise: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Logits (float32 N x classes) of uint8 images (default: N x 28 x 28, normalised as for training here; another
    data set passes its own ``normalise``), model in eval mode (restored afterwards)."""
    normalise = normalise or _normalise
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(images))
        return torch.cat([model(normalise(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]).numpy()
    finally:
        model.train(was_training)


class _Optimised(Protocol):
    """What :func:`sgd_one_cycle` reads of a recipe (this module's or another data set's)."""

    lr: float
    momentum: float
    weight_decay: float


def sgd_one_cycle(model: nn.Module, recipe: _Optimised, total_steps: int,
                  warm_up: float) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.OneCycleLR]:
    """The recipes' optimiser: SGD (Nesterov) with ``recipe.weight_decay`` on conv / linear weights only, and a
    OneCycle learning rate (peak ``recipe.lr``, a ``warm_up`` share of ``total_steps``, cosine)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total_steps,
                                                pct_start=warm_up, anneal_strategy="cos", div_factor=10,
                                                final_div_factor=100)
    return opt, sched


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
    opt, sched = sgd_one_cycle(model, recipe, recipe.epochs * steps, warm_up=0.25)
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


# --------------------------------------------------------------------------------------------- a full run


def load_trained(name: str, weights: Path) -> LoadedModel:
    """The registered network ``name`` with the weights file ``weights``, on the CPU, as the zoo loads it (this
    package is what the zoo imports to register it, so it builds the network itself)."""
    spec = get_spec(name)
    model = spec.build()
    load_weights_into(model, weights)
    return from_spec(spec, model, str(weights), file_digest(weights), device="cpu")


def _loaded(name: str, weights: Path, model: nn.Module | None = None) -> LoadedModel:
    """A LoadedModel of ``weights`` when ``name`` is registered, else wrapped from ``model``."""
    if name in REGISTRY:
        return load_trained(name, weights)
    assert model is not None
    return LoadedModel.from_module(model, name, list(CLASS_NAMES), transform=transform(),
                                   input_size=(1, IMAGE_SIZE, IMAGE_SIZE), device="cpu")


def sample_accuracy(loaded, samples: str | Path = SAMPLES_DIR) -> dict:
    """``senet_viz.analysis.ablation.evaluate`` of ``loaded`` on the embedded sample folder (as the CLI runs it)."""
    from senet_viz.analysis.ablation import evaluate
    from senet_viz.data.folders import folder_source

    images = folder_source(samples, class_names=loaded.class_names, wnids=loaded.wnids)
    return evaluate(loaded, images)


def train(out: str | Path, *, se_stages: Sequence[int] = ALL_SE_STAGES, recipe: Recipe = Recipe(), seed: int = 0,
          threads: int = 1, data_root: str | Path | None = None, download: bool = True,
          samples: str | Path = SAMPLES_DIR, command: str | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Train an SE-ResNet on Fashion-MNIST and write ``out`` (.safetensors), ``out``.json (metrics) and
    ``out``.md (model card). Seeded and deterministic for a given torch version and thread count; the torch
    thread count, deterministic-algorithms flag and global generators are restored when it returns."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, not {out.name}")
    with deterministic(seed=seed, threads=threads):
        return _train(out, tuple(sorted(se_stages)), recipe, seed, threads, data_root, download, Path(samples),
                      command, progress, log)


def _train(out: Path, se_stages: tuple[int, ...], recipe: Recipe, seed: int, threads: int,
           data_root: str | Path | None, download: bool, samples: Path, command: str | None, progress: bool,
           log: Callable[[str], None]) -> dict:
    from safetensors.torch import save_file

    from senet_viz.analysis.cost import count_macs

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
    if not samples.is_dir():
        write_samples(samples, root=folder)
    loaded = _loaded(name, out, model)
    sample = sample_accuracy(loaded, samples)
    macs, _ = count_macs(model, (1, IMAGE_SIZE, IMAGE_SIZE))
    se_params = sum(b.params for b in loaded.blocks)
    metrics = {
        "model": name,
        "weights": out.name,
        "weights_sha256": file_sha256(out),
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
