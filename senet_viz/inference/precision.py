"""What the forward passes compute in: :func:`autocast_dtype` per device, :class:`PrecisionPolicy` (autocast with an
fp32 redo of batches that overflow) and :class:`ForwardCounter` (images sent through a network, counted per run).

TF32. cuDNN computes fp32 convolutions in TF32 by default on Ampere and later GPUs (MobileNetV3-Small's logits
move by up to 0.017 on an H100), and "fp32" here promises exact gates. PyTorch keeps the TF32 switches in one
process-wide context, read by every thread's kernels as they launch: switching them off around one forward and
back on after it (what this module did before) changes them under another thread's forward, and a lock could only
cover the forwards of this library, not those of the rest of the process. So they are set once, never flipped
back: the first :class:`PrecisionPolicy` made for a CUDA device turns TF32 off for the whole process
(:func:`use_full_fp32_on_cuda`), before any of its forwards. Every later fp32 forward, in any thread, sees the
same switches. bf16 and fp16 autocast (``auto`` on a GPU) never use TF32, so they run as before.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from senet_viz.gates.capture import GateRecorder

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: plain fp32).

    ``auto`` is bf16 on a GPU that computes it natively (Ampere and later), fp16 on an older GPU, fp32 on the CPU
    (where reduced precision is rarely faster and the gates should be exact)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return _DTYPES[precision]
    if device.type != "cuda":
        return None
    # Native support only: "emulated" bf16 on an older GPU is slower than fp16.
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


_full_fp32_lock = threading.Lock()
_full_fp32_set = False  # a one-way latch: the switches are set once and never restored (see the docstring)


def use_full_fp32_on_cuda() -> None:
    """Turn TF32 off for fp32 convolutions and matmuls on CUDA, once per process (later calls do nothing)."""
    global _full_fp32_set
    with _full_fp32_lock:
        if not _full_fp32_set:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            _full_fp32_set = True


class ForwardCounter:
    """Images sent through a network, added up over the runs it is passed to (``RunOptions.counter``), so a caller
    (the app, a test) can see whether a result was reused or computed. Thread-safe: runs of several threads may
    share one."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self, images: int) -> None:
        with self._lock:
            self._count += images

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


class PrecisionPolicy:
    """How the forwards of one pass run: under autocast to :func:`autocast_dtype`, with a safety net.

    Reduced precision overflows where fp32 does not: MobileNetV3-Small with every SE block removed reaches
    activations of ~1e6, past fp16's 65,504, and its logits become NaN. With ``fallback`` (the default) a batch
    whose logits or captured gates are not all finite is redone in fp32 and counted in :attr:`fallback_batches`;
    after two such batches in a row the rest of the pass runs in fp32 at once (also counted), so a configuration
    that always overflows costs one pass, not two. Give every pass that is compared with another (the calibration
    and the scored pass of a mean ablation, a sweep's configurations) the same ``precision``.

    :attr:`forwarded` counts the images this policy sent through the network (a redone batch twice), and
    ``counter`` (shared by several policies or runs) too. A policy belongs to one pass on one thread.
    """

    def __init__(self, precision: str = "auto", device: torch.device | str = "cpu", fallback: bool = True,
                 counter: ForwardCounter | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = autocast_dtype(precision, self.device)
        self.fallback = fallback
        self.fallback_batches = 0
        self.forwarded = 0
        self.counter = counter
        self._failed_in_a_row = 0
        if self.device.type == "cuda":
            use_full_fp32_on_cuda()

    def new_pass(self) -> None:
        """Try reduced precision again: the next forwards belong to another configuration (a sweep's)."""
        self._failed_in_a_row = 0

    @property
    def name(self) -> str:
        """What the forwards run in: fp32, bf16 or fp16 (before any fallback)."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def _count(self, images: int) -> None:
        self.forwarded += images
        if self.counter is not None:
            self.counter.add(images)

    def forward(self, model: nn.Module, x: torch.Tensor, recorder: GateRecorder | None = None) -> torch.Tensor:
        """float32 logits of ``model(x)``; ``recorder`` (per batch) loses the gates of a forward that is redone."""
        if self.dtype is not None and (self._failed_in_a_row < 2 or not self.fallback):
            with torch.autocast(self.device.type, dtype=self.dtype):
                logits = model(x).float()
            self._count(len(x))
            if not self.fallback:
                return logits
            finite = torch.isfinite(logits).all()
            if recorder is not None:
                finite = finite & recorder.pending_finite().to(finite.device)
            if bool(finite):
                self._failed_in_a_row = 0
                return logits
            self._failed_in_a_row += 1
            if recorder is not None:
                recorder.discard()
        if self.dtype is not None:
            self.fallback_batches += 1
        with torch.autocast(self.device.type, enabled=False):  # fp32 even inside a caller's autocast
            logits = model(x).float()
        self._count(len(x))
        return logits
