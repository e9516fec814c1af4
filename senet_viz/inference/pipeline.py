"""The input pipeline of a pass: images in, normalised batches on the model's device out.

Per image, on decode threads (:meth:`Pipeline.host`, run ahead of the network by :func:`prefetch`): JPEGs (grey
or RGB) are decoded by torchvision's libjpeg-turbo decoder (:func:`senet_viz.data.decode.decode_image_fast`, about
twice PIL's speed with the resize) and resized, cropped and normalised as tensors with the parameters of the
model's reference transform (:class:`senet_viz.models.preprocess.PreprocessTransform`): the decoded pixels are
PIL's exactly; the antialiased tensor resize differs from PIL's by at most 2/255 on about 0.2 % of the pixels.
Every other format, and any JPEG torchvision refuses (CMYK, truncated...), goes through
:func:`senet_viz.data.decode.decode_image` and the reference PIL transform. A file that cannot be read is reported
with its reason, never fatal to the batch.

On CUDA, JPEGs are decoded on the GPU in one batched call (nvjpeg) and resized there, by the decode threads on
their own CUDA streams so that decoding overlaps the forward pass; a batch nvjpeg refuses falls back image by image
to the CPU. Images go to the device as uint8 (a quarter of float32's bytes, pinned, copied without blocking) and
are normalised there (:meth:`Pipeline.device_batch`, on the thread that runs the network).

Workers are threads, not processes: decoding, resizing and Pillow release the GIL, a thread starts in
microseconds where a spawned worker process spends seconds importing torch (forking from Streamlit's script
threads is unsafe), and in-memory uploads need no pickling. See :func:`default_workers` for how many.

:class:`PixelCache` keeps model-ready pixels between passes over the same images when the caller passes one.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from senet_viz.data.decode import ImageDecodeError, JpegData, decode_image, decode_image_fast, orient_tensor, read_jpeg
from senet_viz.data.sources import ImageItem
from senet_viz.lru import LRU
from senet_viz.models.preprocess import MAX_ASPECT, PreprocessTransform
from senet_viz.paths import file_stamp
from senet_viz.settings import usable_cores


def default_workers(device: torch.device | str = "cpu") -> int:
    """Decode threads for ``num_workers=None``, from the cores this process may use.

    On CUDA the CPU only reads files and prepares images while the GPU computes: up to 8 threads, one core left to
    the main thread. On the CPU, decoding competes with the forward pass for the same cores, yet more than one
    thread helps: the threads also fill the moments a core of the forward pass waits (at the end of a parallel
    region whose other half was delayed by decoding, or for the GIL). Measured on 2 cores with MobileNetV3-Small
    (benchmarks/throughput.py, 5 interleaved rounds): 1 thread 183 img/s, 2 threads 210, 3: 218 (noise-level
    differences from 2 on), 0: 170. Hence one per core, at most 4.
    """
    cores = usable_cores()
    if torch.device(device).type == "cuda":
        return max(1, min(8, cores - 1))
    return max(1, min(4, cores))


@dataclass
class Batch:
    """A batch as the decode threads hand it over."""

    indices: list[int]  # the images of ``pixels``, in order
    pixels: torch.Tensor | None  # uint8 (N, C, H, W), to be normalised on the device; float from a custom transform
    failed: list[tuple[int, str]]  # image index, reason
    jpegs: list[tuple[int, JpegData]] = field(default_factory=list)  # to decode on the device
    decoded: list[torch.Tensor | None] | None = None  # ``jpegs`` decoded on the device by a decode thread
    ready: torch.cuda.Event | None = None  # recorded on that thread's stream once ``decoded`` is complete


def limit_aspect(pixels: torch.Tensor, max_ratio: float = MAX_ASPECT) -> torch.Tensor:
    """:class:`senet_viz.models.preprocess.LimitAspect` on a (C, H, W) tensor: the same crop box."""
    h, w = pixels.shape[-2:]
    short, long = min(w, h), max(w, h)
    if short <= 0 or long <= short * max_ratio:
        return pixels
    keep = int(short * max_ratio)
    start = (long - keep) // 2
    return pixels[..., start:start + keep] if w > h else pixels[..., start:start + keep, :]


class PixelCache(LRU[Hashable, torch.Tensor]):
    """Model-ready uint8 images (decoded, resized, cropped) of earlier passes, least recently used first out once
    over ``max_bytes``. The app's Remove page runs three passes (full, ablated, retrained twin) over the same
    images: with one of these passed to each, each image is decoded once. Thread-safe; :attr:`hits` and
    :attr:`misses` count the lookups."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        super().__init__(max_bytes=max_bytes, sizer=_tensor_bytes)


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _pixel_key(preprocess: Hashable, item: ImageItem) -> Hashable | None:
    """What identifies an image's model-ready pixels: the preprocessing and the content (an upload's key holds
    its content hash; a file is its absolute path, size and modification time). None: not cacheable."""
    if item.data is not None:
        return preprocess, "data", item.key
    if item.path is None:
        return None
    try:
        return preprocess, *file_stamp(item.path)
    except OSError:
        return None  # prepare() reports the unreadable file


class Pipeline:
    """Turns images into model input: per image on the decode threads, per batch on the device in the main thread."""

    def __init__(self, items: Sequence[ImageItem], transform: Callable, device: torch.device,
                 device_decode: bool | None = None, pixel_cache: PixelCache | None = None) -> None:
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
        self.pixels = pixel_cache if known else None
        if pp is not None:
            self.mean = torch.tensor(pp.mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
            self.std = torch.tensor(pp.std, dtype=torch.float32).view(1, -1, 1, 1).to(device)
            self.interpolation = InterpolationMode(pp.interpolation)

    def geometry(self, pixels: torch.Tensor) -> torch.Tensor:
        """The reference transform's aspect guard, resize and center crop on a uint8 (3, H, W) tensor."""
        pp = self.reference.preprocess
        pixels = limit_aspect(pixels)
        pixels = TF.resize(pixels, [pp.resize], interpolation=self.interpolation, antialias=True)
        return TF.center_crop(pixels, [pp.crop, pp.crop]).contiguous()

    def _pil(self, image) -> torch.Tensor:
        return TF.pil_to_tensor(self.reference.geometry(image))

    def prepare(self, item: ImageItem) -> torch.Tensor | JpegData:
        """One image: a uint8 (C, crop, crop) tensor, a float tensor from a custom transform, or a JPEG left for the
        device. Raises :class:`ImageDecodeError` for an unreadable image. With a pixel cache, a uint8 tensor an
        earlier pass made for the same image and preprocessing is reused."""
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

    def host(self, indices: list[int]) -> Batch:
        """Prepare the images ``indices`` (on a decode thread)."""
        ready: list[tuple[int, torch.Tensor]] = []
        batch = Batch([], None, [])
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

    def device_batch(self, batch: Batch) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
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


def prefetch(prepare: Callable[[list[int]], Batch], batches: list[list[int]], workers: int) -> Iterator[Batch]:
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
