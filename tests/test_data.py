"""Tests for senet_viz.data (decode, sources, folders, uploads, labels): decoding of hostile/odd images, folder
and upload sources, labels, zip guards.

Every bad input is generated here (no binary fixtures). The real ImageNet samples in ../shared are used where
present and the tests that need them are skipped otherwise.
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from senet_viz.data.decode import MAX_PIXELS, ImageDecodeError, decode_image, max_pixels_limit
from senet_viz.data.folders import folder_source
from senet_viz.data.labels import imagenet_class_names, imagenet_wnids
from senet_viz.data.sources import ImageItem, ImageSet, Skipped, validate
from senet_viz.data.uploads import uploads_source

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-samples"

# --------------------------------------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def solid(color=(255, 0, 0), size=(8, 8), fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB", size, color), fmt)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` RGB pixels but which carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def px(im: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    return im.getpixel(xy)


def close(a, b, tol: int) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


@pytest.fixture
def no_pixel_loads(monkeypatch):
    """Record every ImageFile.load call (the point where Pillow allocates and decodes pixels)."""
    calls: list[str] = []
    original = ImageFile.ImageFile.load

    def spy(self):
        calls.append(f"{self.format} {self.size}")
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


# --------------------------------------------------------------------------------------------- decode: errors


def test_empty_bytes_are_refused_with_a_clear_message():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_empty_file_is_refused(tmp_path):
    f = tmp_path / "empty.jpg"
    f.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(f)


def test_text_renamed_jpg_is_not_an_image(tmp_path):
    f = tmp_path / "notes.jpg"
    f.write_text("these are my notes, not a photo\n" * 20)
    with pytest.raises(ImageDecodeError, match="not an image") as err:
        decode_image(str(f))
    assert "JPEG" in str(err.value)  # tells the user what to upload instead


def test_truncated_jpeg_fails_at_decode_time():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_missing_path_and_folder_raise_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageDecodeError, match="folder"):
        decode_image(tmp_path)


def test_zero_size_image_is_refused():
    with pytest.raises(ImageDecodeError):
        decode_image(png_header_only(0, 5))


def test_nul_in_path_is_a_decode_error():
    with pytest.raises(ImageDecodeError, match="cannot read"):
        decode_image("bad\0name.png")


def test_wrong_argument_type_is_a_type_error():
    with pytest.raises(TypeError):
        decode_image(12345)  # type: ignore[arg-type]


def test_disallowed_format_is_not_decoded():
    # EPS would make Pillow run Ghostscript; it is not on the list of accepted formats.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(eps)


# --------------------------------------------------------------------------------------------- decode: bombs


def test_huge_declared_png_is_refused_without_decoding(no_pixel_loads):
    data = png_header_only(100_000, 100_000)  # 10 Gpx, 30 GB as RGB, in a file of ~100 bytes
    assert len(data) < 200
    with pytest.raises(ImageDecodeError, match="bomb|limit"):
        decode_image(data)
    assert no_pixel_loads == []


def test_own_limit_applies_below_pillows_and_names_the_setting(no_pixel_loads):
    data = png_header_only(8_000, 8_000)  # 64 Mpx: under Pillow's warning threshold, over our 40 Mpx default
    assert 8_000 * 8_000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data)
    msg = str(err.value)
    assert "8000x8000" in msg and "64 Mpx" in msg and "40 Mpx" in msg and "SENET_VIZ_MAX_PIXELS" in msg
    assert no_pixel_loads == []


def test_pixel_limit_argument_and_environment(monkeypatch):
    data = solid(size=(100, 100))
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    monkeypatch.setenv("SENET_VIZ_MAX_PIXELS", "5000")
    assert max_pixels_limit() == 5000
    with pytest.raises(ImageDecodeError, match="SENET_VIZ_MAX_PIXELS"):
        decode_image(data)
    monkeypatch.setenv("SENET_VIZ_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="SENET_VIZ_MAX_PIXELS"):
        max_pixels_limit()
    monkeypatch.delenv("SENET_VIZ_MAX_PIXELS")
    assert max_pixels_limit() == MAX_PIXELS


def test_pillow_bomb_warning_and_error_become_decode_errors(no_pixel_loads):
    # 10000 x 10000 = 100 Mpx: Pillow warns (> MAX_IMAGE_PIXELS); with warnings as errors, it is ours.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageDecodeError, match="bomb"):
            decode_image(png_header_only(10_000, 10_000), max_pixels=10**9)
    # Over twice Pillow's limit Pillow raises, even when our own limit would allow it.
    with pytest.raises(ImageDecodeError, match="bomb"):
        decode_image(png_header_only(100_000, 100_000), max_pixels=10**12)
    assert no_pixel_loads == []


# --------------------------------------------------------------------------------------------- decode: modes


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    im = decode_image(data)
    assert im.mode == "RGB" and im.size == (16, 16)
    assert close(px(im, (8, 8)), (255, 0, 0), 12)


def test_16bit_png_is_scaled_not_clipped():
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    src = Image.fromarray(values)
    assert src.mode == "I;16"
    data = encode(src, "PNG")
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.mode.startswith("I")  # really stored 16-bit
    im = decode_image(data)
    assert im.mode == "RGB"
    grey = [px(im, (x, 0))[0] for x in range(4)]
    assert grey[0] == 0 and grey[3] == 255
    assert 126 <= grey[2] <= 129  # mid-grey stays mid-grey (Pillow's convert("L") would give 255)
    assert grey[1] <= 5  # a dark value stays dark
    assert all(px(im, (x, 0))[0] == px(im, (x, 0))[1] == px(im, (x, 0))[2] for x in range(4))


def test_float_tiff_in_unit_range_is_scaled():
    src = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    im = decode_image(encode(src, "TIFF"))
    assert [px(im, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_palette_png_with_transparency_is_composited_on_white():
    src = Image.new("P", (2, 1))
    src.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    src.putpixel((0, 0), 0)  # red, opaque
    src.putpixel((1, 0), 1)  # blue, made transparent
    im = decode_image(encode(src, "PNG", transparency=1))
    assert im.mode == "RGB"
    assert px(im, (0, 0)) == (255, 0, 0)
    assert px(im, (1, 0)) == (255, 255, 255)


def test_rgba_is_composited_on_white():
    src = Image.new("RGBA", (3, 1))
    src.putpixel((0, 0), (255, 0, 0, 255))
    src.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black -> white, not black
    src.putpixel((2, 0), (255, 0, 0, 128))  # half-transparent red -> pink
    im = decode_image(encode(src, "PNG"))
    assert im.mode == "RGB"
    assert px(im, (0, 0)) == (255, 0, 0)
    assert px(im, (1, 0)) == (255, 255, 255)
    assert close(px(im, (2, 0)), (255, 127, 127), 2)


@pytest.mark.parametrize(
    ("mode", "fmt", "colour"),
    [("L", "PNG", 77), ("LA", "PNG", (77, 255)), ("1", "PNG", 1), ("1", "BMP", 1), ("L", "JPEG", 77),
     ("RGB", "WEBP", (10, 200, 30)), ("RGB", "BMP", (10, 200, 30)), ("RGB", "TIFF", (10, 200, 30)),
     ("I", "TIFF", 200), ("RGB", "GIF", (10, 200, 30))],
)
def test_other_modes_become_rgb(mode, fmt, colour):
    src = Image.new(mode, (5, 3), colour)
    im = decode_image(encode(src, fmt))
    assert im.mode == "RGB" and im.size == (5, 3)
    expected = src.convert("RGB").getpixel((2, 1)) if mode != "I" else (200, 200, 200)
    assert close(px(im, (2, 1)), expected, 8 if fmt in ("JPEG", "WEBP", "GIF") else 0)


@pytest.mark.parametrize("size", [(1, 1), (1, 10_000), (10_000, 1)])
def test_tiny_and_extreme_aspect_images(size):
    im = decode_image(solid((0, 128, 0), size))
    assert im.size == size and im.mode == "RGB"
    assert px(im) == (0, 128, 0)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.n_frames == 3
    im = decode_image(data)
    assert im.mode == "RGB" and close(px(im), (255, 0, 0), 4)


def test_exif_orientation_is_applied():
    src = Image.new("RGB", (40, 20), (255, 0, 0))
    src.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = src.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im = decode_image(encode(src, "JPEG", exif=exif.tobytes(), quality=95))
    assert im.size == (20, 40)  # width and height swapped
    assert close(px(im, (10, 5)), (255, 0, 0), 40)  # the left edge is now on top
    assert close(px(im, (10, 35)), (0, 0, 255), 40)


def test_path_source_str_and_path_with_odd_name(tmp_path):
    f = tmp_path / "it's a \"cat\" ñ 猫 .png"
    f.write_bytes(solid((1, 2, 3)))
    assert px(decode_image(f)) == (1, 2, 3)
    assert px(decode_image(str(f))) == (1, 2, 3)


def test_decoded_image_is_independent_of_the_file(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(solid((9, 9, 9)))
    im = decode_image(f)
    f.unlink()  # no open handle, no lazy access afterwards
    assert px(im) == (9, 9, 9)
    assert np.asarray(im).shape == (8, 8, 3)


# --------------------------------------------------------------------------------------------- decode: fuzz

_MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
          b"II*\x00", b"MM\x00*", b"P6\n", b"\x00\x00\x01\x00"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF / truncated reads
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_MAGIC), st.binary(max_size=512))
def test_fuzz_random_bytes_only_raise_decode_error(magic, tail):
    try:
        im = decode_image(magic + tail)
    except ImageDecodeError as exc:
        assert str(exc)
    else:
        assert im.mode == "RGB"


_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "LA", "PA", "I", "I;16", "F", "YCbCr"]
_FORMATS = ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF / truncated reads
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(_MODES),
    fmt=st.sampled_from(_FORMATS),
    width=st.integers(1, 24),
    height=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
    damage=st.sampled_from(["none", "truncate", "flip"]),
    where=st.floats(0.0, 1.0),
)
def test_fuzz_generated_images(mode, fmt, width, height, seed, damage, where):
    rng = np.random.default_rng(seed)
    n = len(Image.new(mode, (width, height)).tobytes())
    src = Image.frombytes(mode, (width, height), rng.bytes(n))
    try:
        data = encode(src, fmt)
    except (OSError, ValueError, KeyError, TypeError):  # this format cannot store this mode
        data = encode(src.convert("RGB"), fmt)
    if damage == "truncate":
        data = data[: int(len(data) * where)]
    elif damage == "flip":
        pos = min(int(len(data) * where), len(data) - 1)
        data = data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]
    try:
        im = decode_image(data)
    except ImageDecodeError as exc:
        assert damage != "none", f"an intact {mode} {fmt} image was refused: {exc}"
    else:
        assert im.mode == "RGB"
        if damage == "none":
            assert im.size == (width, height)
            assert np.asarray(im).shape == (height, width, 3)


# ------------------------------------------------------------------------------------------- ImageNet labels


def test_imagenet_labels_are_the_standard_1000_in_order():
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert len(wnids) == len(names) == 1000
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert wnids[0] == "n01440764" and names[0] == "tench"
    assert wnids[1] == "n01443537" and names[1] == "goldfish"
    assert wnids[999] == "n15075141" and names[999] == "toilet tissue"
    assert all("," not in n for n in names)
    wnids.append("x")  # callers get copies
    assert len(imagenet_wnids()) == 1000


# --------------------------------------------------------------------------------------------- real samples


@pytest.fixture(scope="module")
def samples() -> ImageSet:
    require(SAMPLES.is_dir(), f"the shared ImageNet samples at {SAMPLES}")
    return folder_source(SAMPLES)


def test_samples_folder_labels_come_from_wnids(samples):
    assert len(samples) == 900 and samples.skipped == []
    labels = samples.labels()
    assert None not in labels and len(set(labels)) == 900
    assert samples.classes_present() == sorted(labels)
    assert samples.class_names == imagenet_class_names()
    by_name = {it.name: it for it in samples}
    assert by_name["n01443537_goldfish.JPEG"].label == 1
    assert by_name["n01443537_goldfish.JPEG"].label_name == "goldfish"
    last = by_name["n15075141_toilet_tissue.JPEG"]
    assert last.label == 999  # the true index, although it is only the 900th file
    assert [it.key for it in samples].index(last.key) == 899
    # 100 classes are absent, so file position and label disagree for most files
    assert sum(i != it.label for i, it in enumerate(samples)) > 800
    # every label agrees with the class name spelled in the file name
    for it in samples:
        assert it.name.split("_", 1)[1].rsplit(".", 1)[0].replace("_", " ") == it.label_name
    assert any("'" in it.name for it in samples)


def test_samples_decode_including_grey_and_rotated(samples):
    part = samples.shard(0, 15)
    names = {"n02676566_acoustic_guitar.JPEG", "n02951585_can_opener.JPEG", "n03992509_potter's_wheel.JPEG"}
    extra = [it for it in samples if it.name in names]
    checked = validate(ImageSet(part.items + extra, [], samples.class_names))
    assert checked.skipped == [] and len(checked) == len(part) + 3
    guitar = next(it for it in extra if "guitar" in it.name)
    with Image.open(guitar.path) as raw:
        assert raw.mode == "L"
    assert guitar.load().mode == "RGB"
    opener = next(it for it in extra if "can_opener" in it.name)
    with Image.open(opener.path) as raw:
        assert raw.getexif().get(0x0112) == 6  # stored sideways
        stored = raw.size
    assert opener.load().size == stored[::-1]


def test_shards_partition_the_set(samples):
    n = 7
    shards = [samples.shard(i, n) for i in range(n)]
    keys = [it.key for s in shards for it in s]
    assert len(keys) == len(set(keys)) == len(samples)
    assert set(keys) == {it.key for it in samples}
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [it.key for it in samples.shard(3, n)] == [it.key for it in shards[3]]  # deterministic
    assert all(s.class_names == samples.class_names for s in shards)
    with pytest.raises(ValueError):
        samples.shard(7, 7)
    with pytest.raises(ValueError):
        samples.shard(0, 0)


def test_subset_by_label_and_name(samples):
    sub = samples.subset([1, "toilet tissue", "TENCH"])
    assert sorted(sub.labels()) == [0, 1, 999]
    assert sub.class_names == samples.class_names
    with pytest.raises(ValueError, match="unknown class"):
        samples.subset(["no such class"])


# --------------------------------------------------------------------------------------------- folders


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_class_subfolders_with_own_names(tmp_path):
    write(tmp_path / "cat" / "a.png", solid((1, 1, 1)))
    write(tmp_path / "cat" / "deeper" / "b.png", solid((2, 2, 2)))
    write(tmp_path / "dog" / "it's \"c\" ü.jpg", solid((3, 3, 3), fmt="JPEG"))
    write(tmp_path / "dog" / "notes.txt", b"ignored")
    write(tmp_path / "dog" / ".hidden.png", solid())
    write(tmp_path / ".git" / "x.png", solid())
    write(tmp_path / "dog" / "photo.heic", b"not supported")
    write(tmp_path / "stray.png", solid())
    s = folder_source(tmp_path)
    assert s.class_names == ["cat", "dog"]
    assert [(it.key, it.label, it.label_name) for it in s] == [
        ("cat/a.png", 0, "cat"), ("cat/deeper/b.png", 0, "cat"), ("dog/it's \"c\" ü.jpg", 1, "dog")]
    assert s.items[2].name == "it's \"c\" ü.jpg"
    skipped = {k.file: k.reason for k in s.skipped}
    assert set(skipped) == {"1 non-image file(s)", "stray.png"}  # a non-image file is counted, not named
    assert ".heic x1" in skipped["1 non-image file(s)"] and "photo" not in skipped["1 non-image file(s)"]
    assert px(s.items[2].load(), (4, 4)) == pytest.approx((3, 3, 3), abs=3)


def test_class_subfolders_named_by_wnid(tmp_path):
    write(tmp_path / "n15075141" / "x.png", solid())
    write(tmp_path / "n01443537" / "y.png", solid())
    s = folder_source(tmp_path)
    assert {it.key: it.label for it in s} == {"n01443537/y.png": 1, "n15075141/x.png": 999}
    assert len(s.class_names) == 1000 and s.items[1].label_name == "toilet tissue"


def test_class_subfolders_matching_class_names(tmp_path):
    write(tmp_path / "Goldfish" / "a.png", solid())
    write(tmp_path / "great_white_shark" / "b.png", solid())
    s = folder_source(tmp_path, class_names=imagenet_class_names())
    assert {it.label for it in s} == {1, 2}
    assert len(s.class_names) == 1000
    # one folder that does not match: the user's own classes, sorted
    write(tmp_path / "my pets" / "c.png", solid())
    s = folder_source(tmp_path, class_names=imagenet_class_names())
    assert s.class_names == ["Goldfish", "great_white_shark", "my pets"]
    assert [it.label for it in s] == [0, 1, 2]


def test_flat_folder_with_mixed_names(tmp_path):
    write(tmp_path / "n01443537_goldfish.png", solid())
    write(tmp_path / "holiday.png", solid())
    write(tmp_path / "n99999999_unknown.png", solid())
    s = folder_source(tmp_path)
    assert {it.name: it.label for it in s} == {"n01443537_goldfish.png": 1, "holiday.png": None,
                                               "n99999999_unknown.png": None}
    assert s.classes_present() == [1]


def test_flat_folder_with_custom_wnid_list(tmp_path):
    # e.g. a 1001-output model whose index 0 is "background"
    write(tmp_path / "n01443537_goldfish.png", solid())
    wnids = ["background", *imagenet_wnids()]
    s = folder_source(tmp_path, wnids=wnids)
    assert s.items[0].label == 2 and s.class_names[0] == "background" and s.class_names[2] == "goldfish"


def test_wnid_labels_need_class_names_of_the_same_length(tmp_path):
    write(tmp_path / "n01443537_goldfish.png", solid())
    with pytest.raises(ValueError, match="differ in length"):
        folder_source(tmp_path, class_names=["a", "b"])
    s = folder_source(tmp_path, class_names=[f"c{i}" for i in range(1000)])
    assert s.items[0].label == 1 and s.items[0].label_name == "c1"


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        folder_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        folder_source(tmp_path)
    write(tmp_path / "readme.txt", b"x")
    write(tmp_path / "raw.cr2", b"x")
    with pytest.raises(ValueError, match=r"no images.*1 non-image file\(s\).*\.cr2 x1"):
        folder_source(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        folder_source(tmp_path / "readme.txt")


def test_validate_moves_broken_files_to_skipped(tmp_path):
    write(tmp_path / "a" / "good.png", solid())
    write(tmp_path / "a" / "bad.jpg", b"just text")
    write(tmp_path / "b" / "empty.png", b"")
    s = folder_source(tmp_path)
    assert len(s) == 3  # listing does not decode
    calls = []
    v = validate(s, progress=lambda done, total: calls.append((done, total)))
    assert [it.key for it in v] == ["a/good.png"]
    reasons = {k.file: k.reason for k in v.skipped}
    assert "not an image" in reasons["a/bad.jpg"] and "empty" in reasons["b/empty.png"]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert len(s) == 3 and v.class_names == s.class_names


def test_image_item_without_source_fails_cleanly():
    with pytest.raises(ImageDecodeError):
        ImageItem("k", "n", None, None).load()


# --------------------------------------------------------------------------------------------- uploads


def test_uploads_with_odd_names_use_the_base_name():
    s = uploads_source([
        ("C:\\Users\\me\\it's \"x\" é 猫.png", solid((5, 5, 5)), "Cat's"),
        ("../../etc/dir/ spaced name .png", solid((6, 6, 6)), None),
    ])
    assert [it.name for it in s] == ["it's \"x\" é 猫.png", "spaced name .png"]
    assert s.class_names == ["Cat's"]
    assert s.labels() == [0, None]
    assert px(s.items[0].load()) == (5, 5, 5)
    assert all("/" not in it.name and "\\" not in it.name for it in s)
    assert len({it.key for it in s}) == 2


def test_upload_labels_index_class_names_only_if_all_match():
    names = imagenet_class_names()
    s = uploads_source([("a.png", solid((1, 0, 0)), "Goldfish"), ("b.png", solid((2, 0, 0)), "tench")], names)
    assert s.labels() == [1, 0] and s.class_names == names and s.items[0].label_name == "goldfish"
    s = uploads_source([("a.png", solid((1, 0, 0)), "goldfish"), ("b.png", solid((2, 0, 0)), "my cat"),
                        ("c.png", solid((3, 0, 0)), "goldfish")], names)
    assert s.class_names == ["goldfish", "my cat"] and s.labels() == [0, 1, 0]


def test_uploads_skip_empty_duplicate_and_text():
    png = solid()
    s = uploads_source([("a.png", png, "x"), ("a.png", png, "x"), ("b.png", png, "x"), ("e.png", b"", None),
                        ("notes.txt", b"hello", None)])
    assert [it.name for it in s] == ["a.png", "b.png"]  # same bytes, other name: a different item
    reasons = {k.file: k.reason for k in s.skipped}
    assert "duplicate" in reasons["a.png"] and "empty" in reasons["e.png"]
    assert "not an image" in reasons["notes.txt"]


def make_zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
    return buf.getvalue()


def test_zip_upload_with_class_folders_and_bad_members():
    data = make_zip({
        "photos/": b"",
        "photos/cats/": b"",
        "photos/cats/a.png": solid((10, 0, 0)),
        "photos/cats/b b's.png": solid((20, 0, 0)),
        "photos/dogs/c.jpg": solid((0, 0, 200), fmt="JPEG"),
        "photos/dogs/broken.jpg": b"this is not a jpeg",
        "photos/dogs/readme.txt": b"ignored",
        "__MACOSX/photos/cats/._a.png": b"resource fork",
        "photos/.DS_Store": b"junk",
        "../evil.png": solid(),
    })
    s = uploads_source([("my pets.zip", data, None), ("loose.png", solid((1, 2, 3)), "dogs")])
    assert s.class_names == ["cats", "dogs"]
    got = {(it.name, it.label, it.label_name) for it in s}
    assert got == {("a.png", 0, "cats"), ("b b's.png", 0, "cats"), ("c.jpg", 1, "dogs"),
                   ("broken.jpg", 1, "dogs"), ("loose.png", 1, "dogs")}
    assert [k.file for k in s.skipped] == ["my pets.zip/../evil.png"]
    assert "unsafe" in s.skipped[0].reason
    v = validate(s)
    assert {it.name for it in v} == {"a.png", "b b's.png", "c.jpg", "loose.png"}
    bad = [k for k in v.skipped if "broken.jpg" in k.file]
    assert len(bad) == 1 and "not an image" in bad[0].reason
    assert bad[0].file == "my pets.zip/photos/dogs/broken.jpg"


def test_zip_top_level_files_take_the_zip_label():
    data = make_zip({"a.png": solid((1, 0, 0)), "b.png": solid((2, 0, 0))})
    s = uploads_source([("set.zip", data, "goldfish")], imagenet_class_names())
    assert s.labels() == [1, 1]


def test_zip_bomb_is_refused():
    data = make_zip({"a/bomb.png": b"\x00" * 8_000_000, "b/x.png": solid()})
    assert len(data) < 50_000  # compresses ~1000x
    s = uploads_source([("bomb.zip", data, None)], max_zip_bytes=1_000_000)
    assert len(s) == 0
    assert len(s.skipped) == 1 and s.skipped[0].file == "bomb.zip"
    assert "zip bomb" in s.skipped[0].reason and "MiB" in s.skipped[0].reason


def test_zip_with_too_many_members_is_refused():
    data = make_zip({f"c/{i}.png": b"x" for i in range(30)}, zipfile.ZIP_STORED)
    s = uploads_source([("many.zip", data, None)], max_zip_members=10)
    assert len(s) == 0 and "30 entries" in s.skipped[0].reason


def test_corrupt_zip_is_skipped():
    s = uploads_source([("x.zip", b"PK\x03\x04 garbage that is no archive", None), ("y.png", solid(), None)])
    assert [it.name for it in s] == ["y.png"]
    assert s.skipped == [Skipped("x.zip", s.skipped[0].reason)] and "not a valid zip" in s.skipped[0].reason
