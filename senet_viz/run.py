"""Batched inference over an image set: gates captured, optional SE ablation, metrics.

``run_model(loaded, images)`` decodes images in a DataLoader (a file that cannot be read is skipped with its
reason, never fatal to the batch), runs the network on its device (CUDA with fp16 autocast and channels_last
when present) under the model's lock, records every SE gate, and returns a :class:`Result` of plain arrays.

:func:`forward_count` is a process-wide count of the images sent through a network here and in
:mod:`senet_viz.ablation`, so callers and tests can see whether a result was reused or recomputed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .blocks import SEBlock
from .capture import ablate, capture
from .data import ImageDecodeError, ImageItem, ImageSet, Skipped
from .zoo import LoadedModel, resolve_device

ProgressFn = Callable[[int, int], None]  # (images done, images total)

_forwarded = 0
_forwarded_lock = threading.Lock()  # sessions forward from several threads at once


def count_forward(images: int) -> None:
    """Add ``images`` to :func:`forward_count` (call once per forward pass, with its batch size)."""
    global _forwarded
    with _forwarded_lock:
        _forwarded += images


def forward_count() -> int:
    """Images forwarded through any network by :func:`run_model` and the ablation sweeps since import."""
    with _forwarded_lock:
        return _forwarded


@dataclass
class Result:
    """What one pass over an image set produced. Row i of every array is image ``keys[i]``."""

    model: str
    keys: list[str]
    names: list[str]
    labels: np.ndarray  # int64 class index per image, -1 where unknown
    label_names: list[str | None]
    pred: np.ndarray  # int64 top-1 class index
    top5: np.ndarray  # int64 (N, 5) class indices, best first
    top5_prob: np.ndarray  # float32 (N, 5) softmax probabilities
    gates: dict[str, np.ndarray]  # block name -> float16 (N, C)
    skipped: list[Skipped] = field(default_factory=list)
    logits: np.ndarray | None = None  # float32 (N, classes) when kept

    @property
    def n(self) -> int:
        return len(self.keys)

    def accuracy(self, k: int = 1) -> float | None:
        """Top-k accuracy over the images with a known label (None when no image has one)."""
        known = self.labels >= 0
        if not known.any():
            return None
        hits = (self.top5[known, :k] == self.labels[known, None]).any(axis=1)
        return float(hits.mean())


class _ImageDataset(Dataset):
    def __init__(self, items: Sequence[ImageItem], transform: Callable) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(self.items[i].load()), None
        except ImageDecodeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # a transform failing on a valid image must not kill the batch either
            return i, None, f"could not be prepared for the model: {exc.__class__.__name__}: {exc}"


def _collate(batch):
    ok = [(i, x) for i, x, _ in batch if x is not None]
    failed = [(i, why) for i, x, why in batch if x is None]
    tensor = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], tensor, failed


def run_model(loaded: LoadedModel, images: ImageSet, *, blocks: Sequence[SEBlock] | None = None,
              ablate_blocks: Sequence[SEBlock] = (), mode: str = "identity",
              means: dict[str, np.ndarray] | None = None, batch_size: int = 32, num_workers: int = 0,
              device: str | None = None, progress: ProgressFn | None = None, keep_logits: bool = True,
              keep_gates: bool = True, on_gates: Callable[[str, np.ndarray, np.ndarray], None] | None = None
              ) -> Result:
    """Run ``loaded`` over ``images``, capturing the gates of ``blocks`` (default: all SE blocks).

    ``ablate_blocks`` with ``mode`` ("identity" or "mean" with ``means``) replaces those gates during the pass.
    ``on_gates(block name, gates, label indices)`` is called per batch for streaming statistics.
    """
    model = loaded.model
    dev = resolve_device(device) if device else loaded.device
    if dev != loaded.device:
        raise ValueError(f"the model lives on {loaded.device}; load it with device='{dev}' instead")
    blocks = loaded.blocks if blocks is None else list(blocks)
    items = images.items
    loader = DataLoader(_ImageDataset(items, loaded.transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, shuffle=False)
    use_amp = dev.type == "cuda"
    all_labels = np.array([it.label if it.label is not None else -1 for it in items], dtype=np.int64)

    kept: list[int] = []
    preds, top5s, probs5, logits_out = [], [], [], []
    skipped = list(images.skipped)
    batch_labels: np.ndarray = np.zeros(0, np.int64)

    def stream(name: str, gates: np.ndarray) -> None:
        if on_gates is not None:
            on_gates(name, gates, batch_labels)

    done = 0
    with contextlib.ExitStack() as stack:
        # Ablation hooks first, so the recorder sees the gates the network actually used.
        if ablate_blocks:
            stack.enter_context(ablate(model, ablate_blocks, mode=mode, means=means))
        recorder = stack.enter_context(capture(model, blocks, keep=keep_gates, on_gates=stream))
        for indices, batch, failed in loader:
            skipped += [Skipped(file=items[i].origin, reason=why) for i, why in failed]
            if batch is not None:
                batch_labels = all_labels[indices]
                batch = batch.to(dev, non_blocking=True)
                if use_amp:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                    logits = model(batch).float()
                count_forward(len(indices))
                prob = logits.softmax(dim=1)
                p5, i5 = prob.topk(min(5, prob.shape[1]), dim=1)
                preds.append(i5[:, 0].cpu().numpy())
                top5s.append(i5.cpu().numpy())
                probs5.append(p5.cpu().numpy())
                if keep_logits:
                    logits_out.append(logits.cpu().numpy())
                kept += indices
            done += len(indices) + len(failed)
            if progress is not None:
                progress(done, len(items))
        gates = recorder.gates if keep_gates else {}

    k = min(5, loaded.num_classes)
    return Result(
        model=loaded.name,
        keys=[items[i].key for i in kept],
        names=[items[i].name for i in kept],
        labels=all_labels[kept] if kept else np.zeros(0, np.int64),
        label_names=[items[i].label_name for i in kept],
        pred=np.concatenate(preds) if preds else np.zeros(0, np.int64),
        top5=np.concatenate(top5s) if top5s else np.zeros((0, k), np.int64),
        top5_prob=np.concatenate(probs5) if probs5 else np.zeros((0, k), np.float32),
        gates=gates,
        skipped=skipped,
        logits=np.concatenate(logits_out) if logits_out else None,
    )
