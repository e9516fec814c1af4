"""Training ``se_resnet50_tiny100`` on the shared Tiny ImageNet-100 split (``python -m senet_viz train --dataset
tiny-imagenet-100``).

Seeded and deterministic on the CPU for a given torch version and thread count (the embedded model's
:func:`~senet_viz.models.embedded.train.deterministic` holds the global settings only while it runs), a progress
line every ``log_every`` steps, a checkpoint after every epoch (``<out>.ckpt.pt`` beside the weights) and
``resume``: a run resumed from an epoch's checkpoint continues with the same generator, optimiser and schedule
state, so it ends with the same weights as an uninterrupted run. The held-out 50 images per class are evaluated
after each epoch (logged, never used to pick a model) and at the end; the weights, the metrics JSON and the model
card are written beside ``out``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from senet_viz.models.embedded import train as embedded_train
from senet_viz.models.embedded.train import deterministic
from senet_viz.models.tiny100.data import (
    HELD_OUT_PER_CLASS,
    IMAGE_SIZE,
    MEAN,
    STD,
    ZIP_PATH,
    load_split,
    read_classes,
)
from senet_viz.models.tiny100.model import ALL_SE_STAGES, BASE_WIDTH, STEM_STRIDE, build_model, model_name_for


@dataclass(frozen=True)
class Recipe:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.2  # OneCycle peak
    momentum: float = 0.9
    weight_decay: float = 5e-4  # conv / linear weights only
    label_smoothing: float = 0.1
    pad: int = 4  # random crop 64 from the image zero-padded by ``pad``
    flip: float = 0.5
    zero_init_last: bool = False  # start each block's last BN scale at 0 (see the model's note on SE inputs)

    def describe(self) -> str:
        return (f"SGD (momentum {self.momentum}, Nesterov), batch {self.batch_size}, {self.epochs} epochs, "
                f"OneCycle learning rate (peak {self.lr}, 20% warm-up, cosine), weight decay {self.weight_decay} on "
                f"conv/linear weights, label smoothing {self.label_smoothing}; augmentation: random 64 x 64 crop of "
                f"the image zero-padded by {self.pad} px, horizontal flip p = {self.flip}; float32 on the CPU; "
                f"last BN scale of each block initialised to {0 if self.zero_init_last else 1}")


_MEAN_T = torch.tensor(MEAN).view(1, 3, 1, 1)
_STD_T = torch.tensor(STD).view(1, 3, 1, 1)


def normalise(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 B x H x W x 3 -> float B x 3 x H x W, exactly as ToTensor + Normalize(MEAN, STD)."""
    x = batch_u8.permute(0, 3, 1, 2).float().div(255)
    return x.sub_(_MEAN_T).div_(_STD_T)


def augment(images: torch.Tensor, recipe: Recipe, gen: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded uint8 B x 64 x 64 x 3 batch, then a random horizontal flip."""
    b, size, pad = images.shape[0], images.shape[1], recipe.pad
    padded = F.pad(images, (0, 0, pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    rows = (offsets[0][:, None] + torch.arange(size))[:, :, None]
    cols = (offsets[1][:, None] + torch.arange(size))[:, None, :]
    crops = padded[torch.arange(b)[:, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < recipe.flip
    return torch.where(flip[:, None, None, None], crops.flip(2), crops)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Logits (float32 N x classes) of uint8 N x 64 x 64 x 3 images, model in eval mode (restored afterwards)."""
    return embedded_train.predict(model, images, batch_size, normalise=normalise)


def topk(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-logits, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def _optimizer(model: nn.Module, recipe: Recipe, steps: int) -> tuple[torch.optim.Optimizer, object]:
    return embedded_train.sgd_one_cycle(model, recipe, recipe.epochs * steps, warm_up=0.2)


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.stem + ".ckpt.pt")


def train_model(model: nn.Module, images: np.ndarray, labels: np.ndarray, recipe: Recipe, *, seed: int = 0,
                ckpt: Path | None = None, resume: bool = False, max_steps: int | None = None,
                log: Callable[[str], None] = print, log_every: int = 50,
                monitor: Callable[[nn.Module], dict] | None = None) -> list[dict]:
    """Train ``model`` in place on uint8 N x 64 x 64 x 3 ``images``; one statistics dict per epoch.

    ``ckpt``: written after every epoch (model, optimiser, schedule, generator, history); with ``resume`` the run
    continues from it. ``max_steps`` stops each epoch early (tests). ``monitor(model)`` is logged after each epoch.
    """
    gen = torch.Generator().manual_seed(seed)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n = len(y_all)
    steps = (n + recipe.batch_size - 1) // recipe.batch_size
    if max_steps is not None:
        steps = min(steps, max_steps)
    opt, sched = _optimizer(model, recipe, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    history: list[dict] = []
    start_epoch, elapsed0 = 1, 0.0
    if resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        history = json.loads(state["history"])
        start_epoch = int(state["epoch"]) + 1
        elapsed0 = history[-1]["elapsed_s"] if history else 0.0
        log(f"resumed from {ckpt} after epoch {start_epoch - 1}")
    start = time.perf_counter() - elapsed0
    model.train()
    for epoch in range(start_epoch, recipe.epochs + 1):
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct, seen, t_epoch = 0.0, 0, 0, time.perf_counter()
        for step in range(steps):
            idx = perm[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            rows = np.sort(idx.numpy())  # read in memory order; the order within a batch does not matter
            batch = torch.from_numpy(np.ascontiguousarray(images[rows]))
            yb = y_all[rows]
            xb = normalise(augment(batch, recipe, gen))
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
            if log_every and (step + 1) % log_every == 0:
                rate = seen / (time.perf_counter() - t_epoch)
                log(f"epoch {epoch}/{recipe.epochs} step {step + 1}/{steps}: loss {loss_sum / seen:.3f}, "
                    f"lr {sched.get_last_lr()[0]:.4f}, {rate:.0f} img/s, eta epoch "
                    f"{(steps - step - 1) * recipe.batch_size / rate / 60:.1f} min")
        stats = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                 "elapsed_s": round(time.perf_counter() - start, 1)}
        if monitor is not None:
            stats.update(monitor(model))
        history.append(stats)
        if ckpt is not None:  # before the log line: a run stopped at the line resumes after this epoch
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "generator": gen.get_state(), "epoch": epoch,
                        "history": json.dumps(history)}, tmp)
            tmp.replace(ckpt)
        log(f"epoch {epoch}/{recipe.epochs} done: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items() if k != "epoch"))
    model.eval()
    return history


def train(out: str | Path, *, se_stages: Sequence[int] = ALL_SE_STAGES, recipe: Recipe = Recipe(), seed: int = 0,
          threads: int = 1, base_width: int = BASE_WIDTH, stem_stride: int = STEM_STRIDE,
          zip_path: str | Path = ZIP_PATH, max_per_class: int | None = None,
          held_out_per_class: int = HELD_OUT_PER_CLASS, max_steps: int | None = None, resume: bool = False,
          cache: str | Path | None = None, command: str | None = None, card: bool = True,
          samples: str | Path | None = None, log: Callable[[str], None] = print, log_every: int = 50) -> dict:
    """Train on the split's training part and write ``out`` (.safetensors), ``out``.json (metrics) and ``out``.md
    (model card; with the top-1 on ``samples``, default ``assets/tiny100_samples``, when that folder exists); the
    checkpoint ``<out stem>.ckpt.pt`` stays beside them (remove it once done)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, not {out.name}")
    with deterministic(seed=seed, threads=threads):
        return _train(out, tuple(sorted(se_stages)), recipe, seed, threads, base_width, stem_stride, Path(zip_path),
                      max_per_class, held_out_per_class, max_steps, resume, cache, command, card, samples, log,
                      log_every)


def _train(out: Path, se_stages: tuple[int, ...], recipe: Recipe, seed: int, threads: int, base_width: int,
           stem_stride: int, zip_path: Path, max_per_class: int | None, held_out_per_class: int,
           max_steps: int | None, resume: bool, cache, command: str | None, card: bool,
           samples: str | Path | None, log: Callable[[str], None], log_every: int) -> dict:
    from safetensors.torch import save_file

    from senet_viz.analysis.cost import count_macs

    name = model_name_for(se_stages)
    wnids, class_names = read_classes(zip_path.parent / "classes.tsv")
    split = load_split(zip_path, max_per_class=max_per_class, held_out_per_class=held_out_per_class, cache=cache,
                       log=log)
    train_x, train_y = split.part(test=False)
    test_x, test_y = split.part(test=True)
    if not len(train_y) or not len(test_y):
        raise ValueError(f"{len(train_y)} training and {len(test_y)} held-out images: need some of each")
    model = build_model(se_stages, base_width=base_width, stem_stride=stem_stride, num_classes=len(wnids),
                        zero_init_last=recipe.zero_init_last)
    params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {params:,} parameters, base width {base_width}, stem stride {stem_stride}, SE in stages "
        f"{list(se_stages)}; {len(train_y):,} training / {len(test_y):,} held-out images, {threads} thread(s), "
        f"seed {seed}")

    def held_out(m: nn.Module) -> dict:
        logits = predict(m, test_x)
        return {"test_top1": topk(logits, test_y, 1), "test_top5": topk(logits, test_y, 5)}

    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    history = train_model(model, train_x, train_y, recipe, seed=seed, ckpt=checkpoint_path(out), resume=resume,
                          max_steps=max_steps, log=log, log_every=log_every, monitor=held_out)
    train_s = history[-1]["elapsed_s"] if history else round(time.perf_counter() - t0, 1)
    final = held_out(model)
    log(f"held-out ({len(test_y):,} images): top-1 {final['test_top1']:.4f}, top-5 {final['test_top5']:.4f}")

    meta = {"model": name, "config": json.dumps(model.config), "seed": str(seed),
            "test_top1": f"{final['test_top1']:.4f}", "dataset": "Tiny ImageNet-100", "torch": torch.__version__}
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out), metadata=meta)
    from senet_viz.models.weights import file_sha256

    macs, _ = count_macs(model, (3, IMAGE_SIZE, IMAGE_SIZE))
    from senet_viz.gates.blocks import find_se_blocks

    blocks = find_se_blocks(model, (3, IMAGE_SIZE, IMAGE_SIZE))
    metrics = {
        "model": name,
        "weights": out.name,
        "weights_sha256": file_sha256(out),
        "architecture": {**model.config, "params": params, "se_params": sum(b.params for b in blocks),
                         "macs": int(macs), "se_blocks": [b.name for b in blocks]},
        "data": {"dataset": "Tiny ImageNet-100 (Tiny ImageNet training split, 100 classes)",
                 "source": _shown_path(zip_path),
                 "train_images": len(train_y), "test_images": len(test_y),
                 "held_out": f"{held_out_per_class} per class, smallest sha1 of the file name",
                 "image_size": IMAGE_SIZE, "mean": list(MEAN), "std": list(STD)},
        "recipe": {**asdict(recipe), "description": recipe.describe()},
        "command": command or f"python -m senet_viz train --dataset tiny-imagenet-100 --out {out}",
        "seed": seed,
        "threads": threads,
        "test_top1": final["test_top1"],
        "test_top5": final["test_top5"],
        "classes": {"wnids": wnids, "names": class_names},
        "history": history,
        "train_seconds": train_s,
        "date": _dt.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{_cpu_name()}, {os.cpu_count()} CPU core(s) ({platform.machine()})",
    }
    json_path = out.with_suffix(".json")
    old = json.loads(json_path.read_text()) if json_path.is_file() else {}
    for key in ("table13", "findings", "budget"):
        if key in old and old.get("weights_sha256") == metrics["weights_sha256"]:
            metrics[key] = old[key]
    json_path.write_text(json.dumps(metrics, indent=2) + "\n")
    if card:
        try:
            metrics = finalize(json_path, samples=samples, model=model, log=log)
        except Exception as exc:  # noqa: BLE001 - the weights and metrics are written; the card can be redone
            log(f"sample accuracy / model card not written: {exc!r}")
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), {json_path.name}")
    return metrics


def _cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _shown_path(path: Path) -> str:
    """``../shared/...`` for the shared data (the same on every checkout), else the path as given."""
    from senet_viz.paths import SHARED_DIR

    try:
        return "../shared/" + path.resolve().relative_to(SHARED_DIR.resolve()).as_posix()
    except ValueError:
        return str(path)


def load_trained(name: str, weights: Path, se_stages: Sequence[int] | None = None, model: nn.Module | None = None,
                 classes: dict | None = None):
    """The network ``name`` with the weights file ``weights`` as the zoo loads it (its registered spec), or
    wrapped from ``model`` / ``build_model(se_stages)`` (with ``classes``: {"wnids", "names"}, default the shared
    list) when ``model`` is given or the name is not registered (Table 13 variants)."""
    from senet_viz.models.loaded import LoadedModel, from_spec
    from senet_viz.models.registry import REGISTRY
    from senet_viz.models.weights import file_digest, load_weights_into

    if name in REGISTRY and model is None:
        spec = REGISTRY[name]
        net = spec.build()
        load_weights_into(net, weights)
        return from_spec(spec, net, str(weights), file_digest(weights), device="cpu")
    from senet_viz.models.tiny100 import PREPROCESS, class_lists

    net = model if model is not None else build_model(tuple(se_stages or ALL_SE_STAGES))
    load_weights_into(net, weights)
    wnids, names = (classes["wnids"], classes["names"]) if classes else class_lists()
    return LoadedModel.from_module(net, name, list(names), transform=PREPROCESS.transform(),
                                   input_size=(3, IMAGE_SIZE, IMAGE_SIZE), device="cpu", wnids=wnids)


def sample_accuracy(loaded, samples: str | Path | None = None) -> dict:
    """``senet_viz.analysis.ablation.evaluate`` of ``loaded`` on the shipped sample folder (as the CLI runs it)."""
    from senet_viz.analysis.ablation import evaluate
    from senet_viz.data.folders import folder_source
    from senet_viz.models.tiny100.data import SAMPLES_DIR

    images = folder_source(samples or SAMPLES_DIR, class_names=loaded.class_names, wnids=loaded.wnids)
    res = evaluate(loaded, images)
    return {"top1": res.top1, "top5": res.top5, "n_images": res.n_images}


def finalize(json_path: str | Path, samples: str | Path | None = None, model: nn.Module | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Add the shipped sample's top-1 / top-5 to the metrics JSON (when the sample folder exists) and render the
    model card beside it; returns the metrics."""
    from senet_viz.models.tiny100.card import write_card
    from senet_viz.models.tiny100.data import SAMPLES_DIR

    json_path = Path(json_path)
    metrics = json.loads(json_path.read_text())
    folder = Path(samples) if samples else SAMPLES_DIR
    if folder.is_dir():
        loaded = load_trained(metrics["model"], json_path.with_name(metrics["weights"]),
                              metrics["architecture"]["se_stages"], model, metrics.get("classes"))
        sample = sample_accuracy(loaded, folder)
        metrics.update(sample_top1=sample["top1"], sample_top5=sample["top5"], sample_images=sample["n_images"])
        json_path.write_text(json.dumps(metrics, indent=2) + "\n")
        log(f"shipped sample ({sample['n_images']} images): top-1 {sample['top1']:.4f}, top-5 {sample['top5']:.4f}")
    write_card(json_path)
    return metrics
