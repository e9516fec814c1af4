"""Batched inference over an image set: gates captured, optional SE ablation, metrics.

``run_model(loaded, images)`` prepares images on background threads while the network runs (a file that cannot
be read is skipped with its reason, never fatal to the batch), runs the network on its device under the model's
lock at the precision of :class:`PrecisionPolicy`, records every SE gate (copied to the host once per batch),
and returns a :class:`Result` of plain arrays.

The input pipeline. JPEGs (grey or RGB) are decoded by torchvision's libjpeg-turbo decoder
(:func:`senet_viz.data.sources.decode_image_fast`, about twice PIL's speed with the resize) and resized, cropped and
normalised as tensors with the parameters of the model's reference transform
(:class:`senet_viz.models.zoo.PreprocessTransform`): the decoded pixels are PIL's exactly; the antialiased tensor resize
differs from PIL's by at most 2/255 on about 0.2 % of the pixels. Every other format, and any JPEG torchvision
refuses (CMYK, truncated...), goes through :func:`senet_viz.data.sources.decode_image` and the reference PIL transform.
On
CUDA, JPEGs are decoded on the GPU in one batched call (nvjpeg) and resized there, by the decode threads on their
own CUDA streams so that decoding overlaps the forward pass; a batch nvjpeg refuses falls back image by image to the
CPU. Images go to the device as uint8 (a quarter of float32's bytes, pinned, copied without
blocking) and are normalised there.

Workers are threads, not processes: decoding, resizing and Pillow release the GIL, a thread starts in
microseconds where a spawned worker process spends seconds importing torch (forking from Streamlit's script
threads is unsafe), and in-memory uploads need no pickling. See :func:`default_workers` for how many.

:func:`forward_count` is a process-wide count of the images sent through a network here and in
:mod:`senet_viz.analysis.ablation`, so callers and tests can see whether a result was reused or recomputed.

Size: the pass and its input pipeline (decode threads, device decode, precision policy, pixel reuse) share
one batch layout and one device/stream discipline, and change together.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from senet_viz.data.sources import (
    ImageDecodeError,
    ImageItem,
    ImageSet,
    JpegData,
    Skipped,
    decode_image,
    decode_image_fast,
    orient_tensor,
    read_jpeg,
)
from senet_viz.gates.blocks import SEBlock
from senet_viz.gates.capture import GateRecorder, ablate, capture
from senet_viz.models.zoo import MAX_ASPECT, LoadedModel, PreprocessTransform, resolve_device

ProgressFn = Callable[[int, int], None]  # (images done, images total)
BatchFn = Callable[[list[int], torch.Tensor, torch.Tensor], None]  # (image indices, input, logits) per batch

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
    precision: str = "fp32"  # what the forwards ran in: "fp32", "bf16" or "fp16" (see PrecisionPolicy)
    fp32_fallback_batches: int = 0  # batches computed in fp32 because reduced precision was not finite

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

    def predictions(self, class_names: Sequence[str]) -> pd.DataFrame:
        """One row per image: ``key``, ``name``, ``label`` (-1: unknown), ``label_name``, ``pred`` and ``pred_name``
        (``class_names``: the model's classes)."""
        return pd.DataFrame({"key": self.keys, "name": self.names, "label": self.labels,
                             "label_name": self.label_names, "pred": self.pred,
                             "pred_name": [class_names[p] for p in self.pred]})

    def labelled_by_prediction(self, images: ImageSet, class_names: Sequence[str]) -> ImageSet:
        """The images of this result (those it kept, in its order, taken from ``images``), each labelled with the
        network's top-1 class (``class_names``: the model's classes): a pass over them with streamed statistics
        groups the gates by prediction without keeping per-image gates."""
        by_key = {it.key: it for it in images.items}
        items = [replace(by_key[k], label=int(p), label_name=class_names[int(p)])
                 for k, p in zip(self.keys, self.pred, strict=True)]
        return replace(images, items=items, skipped=[], class_names=list(class_names))

    def top5_frame(self, key: str, class_names: Sequence[str]) -> pd.DataFrame:
        """The top-5 of image ``key``: ``rank`` (from 1), ``class`` and softmax ``probability``, best first."""
        row = self.keys.index(key)
        return pd.DataFrame({"rank": range(1, self.top5.shape[1] + 1),
                             "class": [class_names[c] for c in self.top5[row]],
                             "probability": self.top5_prob[row]})


# ---------------------------------------------------------------------------------------------- precision

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


class PrecisionPolicy:
    """How the forwards of one pass run: under autocast to :func:`autocast_dtype`, with a safety net.

    Reduced precision overflows where fp32 does not: MobileNetV3-Small with every SE block removed reaches
    activations of ~1e6, past fp16's 65,504, and its logits become NaN. With ``fallback`` (the default) a batch
    whose logits or captured gates are not all finite is redone in fp32 and counted in :attr:`fallback_batches`;
    after two such batches in a row the rest of the pass runs in fp32 at once (also counted), so a configuration
    that always overflows costs one pass, not two. Give every pass that is compared with another (the calibration
    and the scored pass of a mean ablation, a sweep's configurations) the same ``precision``.
    """

    def __init__(self, precision: str = "auto", device: torch.device | str = "cpu", fallback: bool = True) -> None:
        self.device = torch.device(device)
        self.dtype = autocast_dtype(precision, self.device)
        self.fallback = fallback
        self.fallback_batches = 0
        self._failed_in_a_row = 0

    def new_pass(self) -> None:
        """Try reduced precision again: the next forwards belong to another configuration (a sweep's)."""
        self._failed_in_a_row = 0

    @property
    def name(self) -> str:
        """What the forwards run in: fp32, bf16 or fp16 (before any fallback)."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def forward(self, model: nn.Module, x: torch.Tensor, recorder: GateRecorder | None = None) -> torch.Tensor:
        """float32 logits of ``model(x)``; ``recorder`` (per batch) loses the gates of a forward that is redone."""
        if self.dtype is not None and (self._failed_in_a_row < 2 or not self.fallback):
            with torch.autocast(self.device.type, dtype=self.dtype):
                logits = model(x).float()
            count_forward(len(x))
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
        # fp32 even inside a caller's autocast, and without TF32 (cuDNN's default for convolutions on Ampere and
        # later: logits off by ~1e-2 on an H100, measured with tests/test_cuda.py).
        with torch.autocast(self.device.type, enabled=False), _without_tf32(self.device):
            logits = model(x).float()
        count_forward(len(x))
        return logits


_tf32_lock = threading.Lock()
_tf32_users = 0
_tf32_saved: tuple[bool, bool] = (True, False)


@contextlib.contextmanager
def _without_tf32(device: torch.device) -> Iterator[None]:
    """Full-precision float32 convolutions and matmuls on CUDA while any fp32 forward runs (process-wide flags:
    the first entrant saves and clears them, the last one out restores them; bf16/fp16 forwards never use TF32)."""
    global _tf32_users, _tf32_saved
    if device.type != "cuda":
        yield
        return
    with _tf32_lock:
        if _tf32_users == 0:
            _tf32_saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        _tf32_users += 1
    try:
        yield
    finally:
        with _tf32_lock:
            _tf32_users -= 1
            if _tf32_users == 0:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = _tf32_saved


# ---------------------------------------------------------------------------------------------- input pipeline


def default_workers(device: torch.device | str = "cpu") -> int:
    """Decode threads for ``num_workers=None``, from the cores this process may use.

    On CUDA the CPU only reads files and prepares images while the GPU computes: up to 8 threads, one core left to
    the main thread. On the CPU, decoding competes with the forward pass for the same cores, yet more than one
    thread helps: the threads also fill the moments a core of the forward pass waits (at the end of a parallel
    region whose other half was delayed by decoding, or for the GIL). Measured on 2 cores with MobileNetV3-Small
    (benchmarks/throughput.py, 5 interleaved rounds): 1 thread 183 img/s, 2 threads 210, 3: 218 (noise-level
    differences from 2 on), 0: 170. Hence one per core, at most 4.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if torch.device(device).type == "cuda":
        return max(1, min(8, cores - 1))
    return max(1, min(4, cores))


@dataclass
class _Batch:
    """A batch as the decode threads hand it over."""

    indices: list[int]  # the images of ``pixels``, in order
    pixels: torch.Tensor | None  # uint8 (N, C, H, W), to be normalised on the device; float from a custom transform
    failed: list[tuple[int, str]]  # image index, reason
    jpegs: list[tuple[int, JpegData]] = field(default_factory=list)  # to decode on the device
    decoded: list[torch.Tensor | None] | None = None  # ``jpegs`` decoded on the device by a decode thread
    ready: torch.cuda.Event | None = None  # recorded on that thread's stream once ``decoded`` is complete


def _limit_aspect(pixels: torch.Tensor, max_ratio: float = MAX_ASPECT) -> torch.Tensor:
    """:class:`senet_viz.models.zoo.LimitAspect` on a (C, H, W) tensor: the same crop box."""
    h, w = pixels.shape[-2:]
    short, long = min(w, h), max(w, h)
    if short <= 0 or long <= short * max_ratio:
        return pixels
    keep = int(short * max_ratio)
    start = (long - keep) // 2
    return pixels[..., start:start + keep] if w > h else pixels[..., start:start + keep, :]


class PixelCache:
    """Model-ready uint8 images (decoded, resized, cropped) of earlier passes, least recently used first out once
    over ``max_bytes``. The app's Remove page runs three passes (full, ablated, retrained twin) over the same
    images: with one of these, each image is decoded once. Thread-safe."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            tensor = self._items.get(key)
            if tensor is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return tensor

    def put(self, key: Hashable, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.numel() * old.element_size()
            self._items[key] = tensor
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= dropped.numel() * dropped.element_size()


_pixel_cache: ContextVar[PixelCache | None] = ContextVar("senet_viz_pixel_cache", default=None)


@contextlib.contextmanager
def reuse_pixels(cache: PixelCache) -> Iterator[PixelCache]:
    """Let every :func:`run_model` in this block (this thread or task) reuse and fill ``cache``."""
    token = _pixel_cache.set(cache)
    try:
        yield cache
    finally:
        _pixel_cache.reset(token)


def _pixel_key(preprocess: Hashable, item: ImageItem) -> Hashable | None:
    """What identifies an image's model-ready pixels: the preprocessing and the content (an upload's key holds
    its content hash; a file is its absolute path, size and modification time). None: not cacheable."""
    if item.data is not None:
        return preprocess, "data", item.key
    if item.path is None:
        return None
    try:
        st = os.stat(item.path)
    except OSError:
        return None  # prepare() reports the unreadable file
    return preprocess, os.path.abspath(item.path), st.st_size, st.st_mtime_ns


class _Pipeline:
    """Turns images into model input: per image on the decode threads, per batch on the device in the main thread."""

    def __init__(self, items: Sequence[ImageItem], transform: Callable, device: torch.device,
                 device_decode: bool | None = None) -> None:
        self.items = items
        self.transform = transform
        self.device = device
        known = isinstance(transform, PreprocessTransform) and transform.preprocess is not None
        self.reference = transform if known else None
        pp = self.reference.preprocess if self.reference is not None else None
        self.fast = pp is not None and pp.channels == 3  # grey models keep the PIL path (Grayscale first)
        self.device_decode = self.fast and (device.type == "cuda" if device_decode is None else device_decode)
        self.pin = device.type == "cuda"
        self._streams = threading.local()
        self.pixels = _pixel_cache.get() if known else None  # read here: decode threads do not inherit context
        if pp is not None:
            self.mean = torch.tensor(pp.mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
            self.std = torch.tensor(pp.std, dtype=torch.float32).view(1, -1, 1, 1).to(device)
            self.interpolation = InterpolationMode(pp.interpolation)

    def geometry(self, pixels: torch.Tensor) -> torch.Tensor:
        """The reference transform's aspect guard, resize and center crop on a uint8 (3, H, W) tensor."""
        pp = self.reference.preprocess
        pixels = _limit_aspect(pixels)
        pixels = TF.resize(pixels, [pp.resize], interpolation=self.interpolation, antialias=True)
        return TF.center_crop(pixels, [pp.crop, pp.crop]).contiguous()

    def _pil(self, image) -> torch.Tensor:
        return TF.pil_to_tensor(self.reference.geometry(image))

    def prepare(self, item: ImageItem) -> torch.Tensor | JpegData:
        """One image: a uint8 (C, crop, crop) tensor, a float tensor from a custom transform, or a JPEG left for the
        device. Raises :class:`ImageDecodeError` for an unreadable image. Inside :func:`reuse_pixels`, a uint8
        tensor an earlier pass made for the same image and preprocessing is reused."""
        key = _pixel_key(self.reference.preprocess, item) if self.pixels is not None else None
        if key is not None:
            cached = self.pixels.get(key)
            if cached is not None:
                return cached
        out = self._prepare(item)
        if key is not None and isinstance(out, torch.Tensor) and out.dtype == torch.uint8:
            self.pixels.put(key, out)
        return out

    def _prepare(self, item: ImageItem) -> torch.Tensor | JpegData:
        if self.reference is None:
            return self.transform(item.load())
        source = item.data if item.data is not None else item.path
        if not self.fast or source is None:
            return self._pil(item.load())
        if self.device_decode:
            jpeg = read_jpeg(source)
            return jpeg if jpeg is not None else self._pil(decode_image(source))
        image = decode_image_fast(source)
        return self.geometry(image) if isinstance(image, torch.Tensor) else self._pil(image)

    def host(self, indices: list[int]) -> _Batch:
        """Prepare the images ``indices`` (on a decode thread)."""
        ready: list[tuple[int, torch.Tensor]] = []
        batch = _Batch([], None, [])
        for i in indices:
            try:
                out = self.prepare(self.items[i])
            except ImageDecodeError as exc:
                batch.failed.append((i, str(exc)))
                continue
            except Exception as exc:  # a transform failing on a valid image must not kill the batch either
                batch.failed.append((i, f"could not be prepared for the model: {exc.__class__.__name__}: {exc}"))
                continue
            if isinstance(out, JpegData):
                batch.jpegs.append((i, out))
            else:
                ready.append((i, out))
        if batch.jpegs and self.device.type == "cuda" and threading.current_thread() is not threading.main_thread():
            # Decode here, on this thread's own CUDA stream, so that nvjpeg and the resize overlap the network's
            # forward of the previous batch instead of queueing behind it on one stream (measured on an H100:
            # SE-ResNet-50 end to end 801 img/s with the decode on the forward's stream, forward alone 1,511).
            stream = self._side_stream()
            with torch.cuda.stream(stream):
                batch.decoded = self._decode_jpegs(batch.jpegs)
                batch.ready = torch.cuda.Event()
                batch.ready.record(stream)
        if ready:
            batch.indices = [i for i, _ in ready]
            batch.pixels = torch.stack([x for _, x in ready])
            if self.pin:
                batch.pixels = batch.pixels.pin_memory()
            elif self.device.type == "cpu" and batch.pixels.dtype == torch.uint8 and not batch.jpegs:
                batch.pixels = self.normalise(batch.pixels)  # here, off the thread that runs the network
        return batch

    def _side_stream(self) -> torch.cuda.Stream:
        """This decode thread's CUDA stream (one per thread, created on first use)."""
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(self.device)
        return stream

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 -> the reference's ToTensor then Normalize, with the same float operations (the same values)."""
        return pixels.float().div_(255).sub_(self.mean).div_(self.std)

    def _decode_jpegs(self, jpegs: list[tuple[int, JpegData]]) -> list[torch.Tensor | None]:
        """Decode on the device in one batched call; if the batch is refused, image by image (None: refused)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        raws = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for _, j in jpegs]
        try:
            images: list[torch.Tensor | None] = list(decode_jpeg(raws, mode=ImageReadMode.RGB, device=self.device))
        except Exception:  # nvjpeg refuses a batch as a whole (RuntimeError, or a CUDA error subclass of it)
            images = []
            for raw in raws:
                try:
                    images.append(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
                except Exception:
                    images.append(None)
        return [None if im is None else self.geometry(orient_tensor(im, j.orientation))
                for (_, j), im in zip(jpegs, images, strict=True)]

    def device_batch(self, batch: _Batch) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        """(image indices, normalised input on the device, failures) of a prepared batch (main thread)."""
        failed = list(batch.failed)
        indices = list(batch.indices)
        x = batch.pixels.to(self.device, non_blocking=True) if batch.pixels is not None else None
        if batch.jpegs:
            if batch.ready is not None:  # decoded on a decode thread's stream: this stream waits for it
                current = torch.cuda.current_stream(self.device)
                current.wait_event(batch.ready)
                for tensor in batch.decoded:
                    if tensor is not None:
                        tensor.record_stream(current)  # the allocator must not reuse it before this stream is done
                decoded_all = batch.decoded
            else:
                decoded_all = self._decode_jpegs(batch.jpegs)
            rows = list(x.unbind(0)) if x is not None else []
            for (i, jpeg), decoded in zip(batch.jpegs, decoded_all, strict=True):
                if decoded is None:  # on the CPU instead: PIL, with decode_image's reason when it fails too
                    try:
                        decoded = self._pil(decode_image(jpeg.data)).to(self.device)
                    except ImageDecodeError as exc:
                        failed.append((i, str(exc)))
                        continue
                    except Exception as exc:  # as in host(): one image never kills the batch
                        failed.append((i, f"could not be prepared for the model: {exc.__class__.__name__}: {exc}"))
                        continue
                indices.append(i)
                rows.append(decoded)
            order = np.argsort(indices, kind="stable")
            indices = [indices[k] for k in order]
            x = torch.stack([rows[k] for k in order]) if rows else None
            failed.sort()
        if x is None:
            return [], None, failed
        if x.dtype == torch.uint8:
            x = self.normalise(x)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return indices, x, failed


def _batches(prepare: Callable[[list[int]], _Batch], batches: list[list[int]], workers: int) -> Iterator[_Batch]:
    """``prepare(batch)`` for every batch, in order, on ``workers`` threads running up to 2 per thread ahead."""
    if workers <= 0:
        for indices in batches:
            yield prepare(indices)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="senet-viz-decode")
    try:
        todo = iter(batches)
        ahead = deque(pool.submit(prepare, b) for b in itertools.islice(todo, 2 * workers))
        while ahead:
            done = ahead.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:  # before yielding: the threads keep decoding while the network runs
                ahead.append(pool.submit(prepare, nxt))
            yield done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------- the pass


def run_model(loaded: LoadedModel, images: ImageSet, *, blocks: Sequence[SEBlock] | None = None,
              ablate_blocks: Sequence[SEBlock] = (), mode: str = "identity",
              means: dict[str, np.ndarray] | None = None, batch_size: int = 32, num_workers: int | None = None,
              device: str | None = None, progress: ProgressFn | None = None, keep_logits: bool = True,
              keep_gates: bool = True, on_gates: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
              precision: str = "auto", fp32_fallback: bool = True, device_decode: bool | None = None,
              on_batch: BatchFn | None = None) -> Result:
    """Run ``loaded`` over ``images``, capturing the gates of ``blocks`` (default: all SE blocks).

    ``ablate_blocks`` with ``mode`` ("identity" or "mean" with ``means``) replaces those gates during the pass.
    ``on_gates(block name, gates, label indices)`` is called per batch for streaming statistics.
    ``num_workers``: decode threads (None: :func:`default_workers`; 0: decode in this thread).
    ``precision``: "auto", "fp32", "bf16" or "fp16", with the fp32 redo of overflowing batches unless
    ``fp32_fallback=False`` (see :class:`PrecisionPolicy`). ``device_decode``: decode JPEGs on the model's device
    in batches (None: on CUDA).
    ``on_batch(indices, x, logits)`` is called after each batch's forward with the batch's image indices (into
    ``images.items``), its normalised input on the device and the network's float32 logits (on the device),
    inside the model's lock and the pass's inference mode: more forwards of the same model on the same decoded
    input (e.g. :func:`senet_viz.analysis.ablation.sweep`'s ablated configurations) run there without decoding again.
    """
    model = loaded.model
    dev = resolve_device(device) if device else loaded.device
    if dev != loaded.device:
        raise ValueError(f"the model lives on {loaded.device}; load it with device='{dev}' instead")
    policy = PrecisionPolicy(precision, dev, fallback=fp32_fallback)
    blocks = loaded.blocks if blocks is None else list(blocks)
    items = images.items
    workers = default_workers(dev) if num_workers is None else num_workers
    pipeline = _Pipeline(items, loaded.transform, dev, device_decode)
    batches = [list(range(s, min(s + batch_size, len(items)))) for s in range(0, len(items), batch_size)]
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
        recorder = stack.enter_context(capture(model, blocks, keep=keep_gates, on_gates=stream, per_batch=True))
        prepared = stack.enter_context(contextlib.closing(_batches(pipeline.host, batches, workers)))
        for batch in prepared:
            indices, x, failed = pipeline.device_batch(batch)
            skipped += [Skipped(file=items[i].origin, reason=why) for i, why in failed]
            if x is not None:
                batch_labels = all_labels[indices]
                logits = policy.forward(model, x, recorder)
                prob = logits.softmax(dim=1)
                p5, i5 = prob.topk(min(5, prob.shape[1]), dim=1)
                # Issue every device -> host copy, then wait once (the gates' copy in commit() waits for them).
                host = [t.to("cpu", non_blocking=True) for t in ((i5, p5, logits) if keep_logits else (i5, p5))]
                recorder.commit()
                if dev.type == "cuda":
                    torch.cuda.current_stream(dev).synchronize()
                top5s.append(host[0].numpy())
                preds.append(host[0][:, 0].numpy())
                probs5.append(host[1].numpy())
                if keep_logits:
                    logits_out.append(host[2].numpy())
                kept += indices
                if on_batch is not None:
                    on_batch(indices, x, logits)
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
        precision=policy.name,
        fp32_fallback_batches=policy.fallback_batches,
    )
