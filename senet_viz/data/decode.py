"""Decode one image safely: :func:`decode_image` (Pillow, every allowed format, RGB out) and the fast JPEG path
(:func:`read_jpeg`, :func:`decode_jpeg_tensor`, :func:`decode_image_fast`: torchvision's libjpeg-turbo decoder with
the same pixels). The only documented exception is :class:`ImageDecodeError` (a ``ValueError``) whose message says
what is wrong and what to do. Image sets: :mod:`senet_viz.data.sources`; folders, uploads and labels each have a
module beside it.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

# torchvision 0.29 warns on every process's first decode that its decoders move to TorchCodec; the pinned version
# has them (decode_jpeg_tensor), and the warning is nothing a user of this library can act on.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)

#: Default limit on the declared pixel count (width x height) of one image; $SENET_VIZ_MAX_PIXELS overrides.
MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "SENET_VIZ_MAX_PIXELS"
#: Default limit on the memory one decode may take at its peak (:func:`decode_bytes`), in MiB;
#: $SENET_VIZ_MAX_DECODE_MB overrides. A 40-Mpx 8-bit RGB photo is counted at 320 MB and decodes; a 40-Mpx 16-bit
#: image (680 MB: its 16-bit planes, then the float64 scaling to 8 bits) or a 40-Mpx RGBA one (960 MB) is refused.
MAX_DECODE_MB = 512
MAX_DECODE_ENV = "SENET_VIZ_MAX_DECODE_MB"

# Decoders we allow. Pillow also knows formats such as EPS (which shells out to Ghostscript) and a long tail
# of rarely used, weakly identified formats; a dashboard fed by uploads has no use for them.
_ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM", "TGA", "ICO", "AVIF")
#: What to tell a user whose file is no image.
FORMATS_HINT = "upload JPEG, PNG, GIF, BMP, WEBP or TIFF"


class ImageDecodeError(ValueError):
    """An input could not be turned into an RGB image; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------------------------- decoding


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """Return the pixel limit to apply: ``max_pixels`` if given, else ``$SENET_VIZ_MAX_PIXELS``, else
    :data:`MAX_PIXELS`. Raises ``ValueError`` for a limit that is not a positive integer (a configuration
    error, not a data error)."""
    if max_pixels is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return MAX_PIXELS
        try:
            max_pixels = int(float(raw)) if any(c in raw for c in ".eE") else int(raw)
        except ValueError:
            raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} is not a number of pixels (e.g. 40000000)") from None
    if max_pixels <= 0:
        raise ValueError(f"the pixel limit must be positive, got {max_pixels}")
    return int(max_pixels)


def _mpx(pixels: int) -> str:
    text = f"{pixels / 1e6:,.1f}".rstrip("0").rstrip(".")
    return f"{text} Mpx"


def max_decode_bytes_limit(max_bytes: int | None = None) -> int:
    """Return the per-image decode memory limit in bytes: ``max_bytes`` if given, else ``$SENET_VIZ_MAX_DECODE_MB``
    (MiB), else :data:`MAX_DECODE_MB`. Raises ``ValueError`` for a limit that is not a positive number (a
    configuration error, not a data error)."""
    if max_bytes is None:
        raw = os.environ.get(MAX_DECODE_ENV, "").strip()
        if not raw:
            return MAX_DECODE_MB << 20
        try:
            max_bytes = int(float(raw) * (1 << 20))
        except ValueError:
            raise ValueError(f"{MAX_DECODE_ENV}={raw!r} is not a number of MiB (e.g. {MAX_DECODE_MB})") from None
    if max_bytes <= 0:
        raise ValueError(f"the decode memory limit must be positive, got {max_bytes}")
    return int(max_bytes)


# Bytes per pixel Pillow stores for a mode (its image memory: 3-band modes take 4 bytes, "1" one byte);
# modes not listed are counted at 4.
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_HIGH_DEPTH_ITEMSIZE = {"I": 4, "F": 4}  # and 2 for every I;16 variant
_MODE_WORDS = {"I;16": "16-bit grey", "I;16L": "16-bit grey", "I;16B": "16-bit grey", "I;16N": "16-bit grey",
               "I": "32-bit grey", "F": "32-bit float grey", "RGBA": "RGBA", "LA": "grey + alpha", "P": "palette",
               "CMYK": "CMYK", "L": "grey", "RGB": "8-bit RGB", "1": "1-bit"}
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def decode_bytes(mode: str, width: int, height: int, alpha: bool = False) -> int:
    """The peak memory :func:`decode_image` takes for an image of ``mode`` and size, as its header declares them
    (``alpha``: palette or colour-key transparency besides the alpha modes): the decoded frame and its upright
    copy, then the conversion to RGB: for 16-bit / 32-bit / float grey a numpy copy, a float64 work array and
    the 8-bit result (measured: 17 bytes per pixel for 16-bit grey, 21 for float); for transparency the RGBA
    copy, a white background, the composite and the RGB result; for other modes one RGB image (4 bytes per
    pixel in Pillow). Checked before any pixel is decoded."""
    pixels = width * height
    peak = 2 * pixels * _STORED_BYTES.get(mode, 4)
    if mode.startswith("I;16") or mode in _HIGH_DEPTH_ITEMSIZE:
        peak += pixels * (2 * _HIGH_DEPTH_ITEMSIZE.get(mode, 2) + 8 + 1)  # numpy's copy goes through tobytes()
    elif alpha or mode in _ALPHA_MODES:
        peak += pixels * 4 * 4
    elif mode != "RGB":
        peak += pixels * 4
    return peak


def _has_alpha(im: Image.Image) -> bool:
    """What :func:`_to_rgb` composites on white (from the header: the mode and any transparency chunk)."""
    return im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB", "1") and im.has_transparency_data)


def _check_decode_bytes(im: Image.Image, limit: int) -> None:
    width, height = im.size
    need = decode_bytes(im.mode, width, height, _has_alpha(im))
    if need > limit:
        kind = _MODE_WORDS.get(im.mode, im.mode)
        raise ImageDecodeError(
            f"image is {width}x{height} {kind} ({im.mode}): decoding it would take about {need / 2**20:,.0f} MiB, "
            f"over the {limit / 2**20:,.0f} MiB limit for one image; resize it or save it with 8 bits per "
            f"channel, or raise {MAX_DECODE_ENV}"
        )


def _to_uint8(arr: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Map a single-channel numeric array to uint8. ``full_scale`` is the value that maps to 255 (None:
    stretch min..max, for data whose range is unknown)."""
    # One float64 work array, changed in place (decode_bytes counts it once); the same operations in the same order
    # as out-of-place arithmetic, so the same pixels.
    arr = np.nan_to_num(arr.astype(np.float64), copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if full_scale is None:
        lo, hi = float(arr.min()), float(arr.max())
        if hi > lo:
            arr -= lo
            arr /= hi - lo
            arr *= 255.0
        else:
            arr[...] = 0.0
    else:
        arr *= 255.0 / full_scale
    np.rint(arr, out=arr)
    np.clip(arr, 0, 255, out=arr)
    return arr.astype(np.uint8)


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit integer / float grey images to 8 bits.

    Pillow's own ``convert("L")`` clips these (every 16-bit value above 255 becomes white), so scale instead:
    ``I;16*`` by 65535 -> 255; ``I`` by its evident range (<= 255: as is, <= 65535: 16-bit, else min..max);
    ``F`` as 0..1 if it lies there, 0..255 if it lies there, else min..max.
    """
    arr = np.asarray(im)
    if arr.size == 0:
        return Image.new("L", im.size)
    if im.mode.startswith("I;16"):
        scale: float | None = 65535.0
    else:
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        del finite  # a copy for float images: not kept alive beside _to_uint8's work array
        if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scale = 1.0
        elif lo >= 0.0 and hi <= 255.0:
            scale = 255.0
        elif im.mode != "F" and lo >= 0.0 and hi <= 65535.0:
            scale = 65535.0
        else:
            scale = None
    return Image.fromarray(_to_uint8(arr, scale), mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (``im`` itself if already RGB); transparency is composited on white, since a
    model sees no alpha and black-under-transparent would invent dark objects."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_l(im).convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB", "1") and im.has_transparency_data
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im
    return im.convert("RGB")


def _open_source(source: bytes | bytearray | memoryview | str | Path) -> IO[bytes]:
    """Return a binary file object for ``source`` (bytes, or a path that is read lazily)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageDecodeError("file is empty (0 bytes); upload a JPEG/PNG image")
        return io.BytesIO(data)
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if path.is_dir():
                raise ImageDecodeError(f"{path.name!r} is a folder, not an image file")
            if path.stat().st_size == 0:
                raise ImageDecodeError(f"file is empty (0 bytes): {path.name}")
            return path.open("rb")
        except ImageDecodeError:
            raise
        except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in the path
            raise ImageDecodeError(f"cannot read {path.name!r}: {getattr(exc, 'strerror', None) or exc}") from exc
    raise TypeError(f"decode_image expects bytes, str or Path, got {type(source).__name__}")


def decode_image(source: bytes | str | Path, max_pixels: int | None = None, *,
                 max_bytes: int | None = None) -> Image.Image:
    """Decode ``source`` (image bytes or a file path) into a fully loaded RGB image.

    - the declared size is checked against ``max_pixels`` (see :func:`max_pixels_limit`) *before* any pixel is
      decoded, and Pillow's own decompression-bomb error/warning is reported the same way;
    - so is the memory the decode and its conversions would take (:func:`decode_bytes`, from the header's mode and
      size) against ``max_bytes`` (see :func:`max_decode_bytes_limit`): a small file of 16-bit or float pixels
      is refused before it costs a gigabyte;
    - EXIF orientation is applied (a portrait photo stored sideways comes out upright);
    - animated or multi-page images give their first frame;
    - any mode becomes RGB: alpha and palette transparency are composited on white, 16-bit and float images
      are scaled (not clipped) to 8 bits, CMYK / 1-bit / grey are converted;
    - pixels are loaded here, so truncated or corrupt data fails here and not later in a batch.

    Raises :class:`ImageDecodeError` for every problem with the input (and only that, for any bytes);
    ``TypeError`` for an argument that is neither bytes nor a path.
    """
    limit = max_pixels_limit(max_pixels)
    byte_limit = max_decode_bytes_limit(max_bytes)
    fp = _open_source(source)
    try:
        with fp:
            try:
                im = Image.open(fp, formats=_ALLOWED_FORMATS)
            except UnidentifiedImageError:
                raise ImageDecodeError(f"not an image (cannot identify format); {FORMATS_HINT}") from None
            with im:
                width, height = im.size
                if width <= 0 or height <= 0:
                    raise ImageDecodeError(f"image has no pixels ({width}x{height})")
                if width * height > limit:
                    raise ImageDecodeError(
                        f"image is {width}x{height} = {_mpx(width * height)}, over the {_mpx(limit)} limit; "
                        f"resize it or raise {MAX_PIXELS_ENV}"
                    )
                _check_decode_bytes(im, byte_limit)
                # Image.open leaves an animated/multi-page file on its first frame; asking for n_frames
                # would scan every frame, so don't.
                im.load()
                try:
                    upright = ImageOps.exif_transpose(im)  # a new image (a copy when there is no orientation)
                except Exception:  # a broken EXIF block should not make readable pixels unusable
                    upright = None
                if upright is None:
                    upright = im.copy()  # `im` is closed when this block ends
                return _to_rgb(upright)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check in Image.open (over 2x Image.MAX_IMAGE_PIXELS; over 1x it warns, and the
        # warning only arrives here as an exception when warnings are errors; else our limit applies).
        raise ImageDecodeError(f"image refused as a possible decompression bomb ({exc}); resize it") from None
    except MemoryError:
        raise ImageDecodeError("image is too large to decode in the available memory; resize it") from None
    except Exception as exc:  # the decoders raise OSError, ValueError, SyntaxError, struct.error, ...
        msg = f"truncated or corrupt image data: {str(exc) or type(exc).__name__}; re-export or re-upload it"
        raise ImageDecodeError(msg) from None


# --------------------------------------------------------------------------------------------- fast JPEG path

# EXIF orientation -> what ImageOps.exif_transpose does, on a (..., H, W) tensor. PIL's ROTATE_90 is
# counter-clockwise; TRANSPOSE swaps the axes; TRANSVERSE is TRANSPOSE then ROTATE_180.
_ORIENT: dict[int, Callable] = {
    2: lambda t: t.flip(-1),  # FLIP_LEFT_RIGHT
    3: lambda t: t.flip(-2, -1),  # ROTATE_180
    4: lambda t: t.flip(-2),  # FLIP_TOP_BOTTOM
    5: lambda t: t.transpose(-2, -1),  # TRANSPOSE
    6: lambda t: t.transpose(-2, -1).flip(-1),  # ROTATE_270
    7: lambda t: t.transpose(-2, -1).flip(-2, -1),  # TRANSVERSE
    8: lambda t: t.transpose(-2, -1).flip(-2),  # ROTATE_90
}


_JPEG_SOI = b"\xff\xd8\xff"


@dataclass(frozen=True)
class JpegData:
    """A JPEG that torchvision's decoder turns into the pixels :func:`decode_image` gives (see :func:`read_jpeg`)."""

    data: bytes = field(repr=False)
    width: int  # as stored, before the EXIF orientation
    height: int
    orientation: int  # EXIF orientation 1..8 (1: as stored)


def read_jpeg(source: bytes | str | Path, max_pixels: int | None = None) -> JpegData | None:
    """The bytes of ``source`` if it is a JPEG that :func:`decode_jpeg_tensor` can decode like :func:`decode_image`.

    Reads the header only (no pixel is decoded). None for anything else, so that :func:`decode_image` decides and
    words the reason: another format, a mode other than grey or RGB (CMYK, ...), no pixels, more pixels than the
    limit (checked here *before* decoding, as decode_image does), an unreadable file. Never raises for bad input.
    """
    limit = max_pixels_limit(max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            with _open_source(source) as fp:  # one read of the whole file: the header parse below is in memory
                head = fp.read(len(_JPEG_SOI))
                data = head + fp.read() if head == _JPEG_SOI else b""
        except (ImageDecodeError, OSError):
            return None
    if not data.startswith(_JPEG_SOI):  # what Pillow's JPEG plugin checks too
        return None
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            width, height = im.size
            if im.format != "JPEG" or im.mode not in ("L", "RGB") or width <= 0 or height <= 0:
                return None
            if width * height > limit or decode_bytes(im.mode, width, height) > max_decode_bytes_limit():
                return None
            try:  # as decode_image: a broken EXIF block leaves the image as stored
                orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
                orientation = orientation if orientation in _ORIENT else 1
            except Exception:
                orientation = 1
    except Exception:  # a broken header, a bomb warning turned error: decode_image says why
        return None
    return JpegData(data, width, height, int(orientation))


def decode_jpeg_tensor(jpeg: JpegData) -> torch.Tensor:
    """Decode ``jpeg`` with torchvision (libjpeg-turbo, about twice PIL's speed with the resize that follows) into
    a uint8 (3, H, W) RGB tensor, upright: the same pixels as ``decode_image`` (grey is repeated on the three
    channels). Raises ``RuntimeError`` where torchvision refuses the data (truncated, corrupt)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = torch.frombuffer(bytearray(jpeg.data), dtype=torch.uint8)  # a writable copy: bytes are read-only
    return orient_tensor(decode_jpeg(raw, mode=ImageReadMode.RGB), jpeg.orientation)


def orient_tensor(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (..., H, W) tensor as ``ImageOps.exif_transpose`` does to an image."""
    turn = _ORIENT.get(orientation)
    return pixels if turn is None else turn(pixels).contiguous()


def decode_image_fast(source: bytes | str | Path, max_pixels: int | None = None) -> torch.Tensor | Image.Image:
    """:func:`decode_image`, faster for JPEG.

    A grey or RGB JPEG comes back as a uint8 (3, H, W) tensor from :func:`decode_jpeg_tensor`, with the pixels
    ``decode_image`` would give; anything else, and any JPEG torchvision refuses, comes back from ``decode_image``
    as an RGB PIL image, with its checks and its :class:`ImageDecodeError` reasons.
    """
    jpeg = read_jpeg(source, max_pixels)
    if jpeg is not None:
        try:
            return decode_jpeg_tensor(jpeg)
        except RuntimeError:
            source = jpeg.data  # decode_image words the reason (truncated, corrupt) without reading the file again
    return decode_image(source, max_pixels)
