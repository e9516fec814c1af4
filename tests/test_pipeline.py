"""The input pipeline of senet_viz.inference.pipeline: the fast JPEG path against the PIL reference, odd JPEGs,
skipped files, decode threads (also from a thread that is not the main one), and gates copied to the host once
per batch.

Synthetic images are made here; the real ImageNet samples in ../shared are used where present.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io
from conftest import IMAGENET_SAMPLES, TINY_CLASSES, requires
from PIL import Image, ImageFile
from tiny_nets import make_tiny_seresnet
from torchvision.transforms.v2 import functional as TF

from senet_viz.data.decode import ImageDecodeError, decode_image, decode_image_fast, read_jpeg
from senet_viz.data.folders import folder_source
from senet_viz.data.sources import ImageItem, ImageSet
from senet_viz.data.uploads import uploads_source
from senet_viz.gates.capture import capture
from senet_viz.inference import pipeline as pipeline_mod
from senet_viz.inference.pipeline import Pipeline, default_workers
from senet_viz.inference.run import RunOptions, run_model
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.preprocess import Preprocess, PreprocessTransform

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
needs_samples = requires(IMAGENET_SAMPLES.is_dir(), f"the shared ImageNet samples at {IMAGENET_SAMPLES}")

# ----------------------------------------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(size=(120, 80), seed: int = 0) -> Image.Image:
    """A smooth RGB picture with an asymmetric pattern (a wrong flip or turn changes it)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + 2 * y) % 256], axis=-1).astype(np.int16)
    arr[: h // 3, : w // 4] = 30  # a dark corner: top left
    arr += rng.integers(-10, 10, arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def as_array(image: torch.Tensor | Image.Image) -> np.ndarray:
    """H x W x 3 uint8 of a decoded image, whichever path produced it."""
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).numpy()
    return np.asarray(image)


def reference_input(transform: PreprocessTransform, source) -> torch.Tensor:
    """The old pipeline: decode_image and the reference PIL transform (float, normalised)."""
    return transform(decode_image(source))


def tiny_model() -> LoadedModel:
    """The tiny SE-ResNet with the zoo's transform class (64 px crop), so the fast path applies."""
    return LoadedModel.from_module(make_tiny_seresnet(), "tiny", TINY_CLASSES, input_size=(3, 64, 64))


# ------------------------------------------------------------------------------------- decoding, one image


def test_fast_decode_gives_decode_images_pixels_for_rgb_grey_and_progressive_jpegs():
    for im in (photo(), photo().convert("L"), photo((97, 61), seed=3)):
        for kw in ({"quality": 90}, {"quality": 75, "progressive": True}, {"quality": 95, "subsampling": 0}):
            data = encode(im, **kw)
            fast = decode_image_fast(data)
            assert isinstance(fast, torch.Tensor), "a grey/RGB JPEG takes the torchvision path"
            assert fast.dtype == torch.uint8 and fast.shape[0] == 3
            np.testing.assert_array_equal(as_array(fast), np.asarray(decode_image(data)))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_decode_image(orientation):
    src = photo((90, 50))
    exif = src.getexif()
    exif[0x0112] = orientation
    data = encode(src, exif=exif.tobytes(), quality=95)
    fast = decode_image_fast(data)
    assert isinstance(fast, torch.Tensor)
    expected = np.asarray(decode_image(data))
    if orientation >= 5:
        assert expected.shape[:2] == (90, 50), "orientations 5..8 turn the image"
    np.testing.assert_array_equal(as_array(fast), expected)


def test_cmyk_and_other_formats_fall_back_to_decode_image():
    cmyk = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    png = encode(photo(), "PNG")
    for data in (cmyk, png):
        assert read_jpeg(data) is None
        out = decode_image_fast(data)
        assert isinstance(out, Image.Image) and out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), np.asarray(decode_image(data)))


def test_the_pixel_limit_is_checked_before_any_pixel_is_decoded(monkeypatch):
    data = encode(photo((400, 300)))

    def no_decoding(*_a, **_k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert read_jpeg(data, max_pixels=400 * 300 - 1) is None
    with pytest.raises(ImageDecodeError, match="over the .* limit"):
        decode_image_fast(data, max_pixels=400 * 300 - 1)
    assert read_jpeg(data, max_pixels=400 * 300) is not None  # at the limit: allowed, header read only


def test_bad_jpegs_fail_with_decode_images_reasons(tmp_path):
    good = encode(photo())
    cases = {"truncated": good[: len(good) // 2], "garbage": b"\xff\xd8\xff" + b"\x00" * 50, "empty": b""}
    for name, data in cases.items():
        with pytest.raises(ImageDecodeError) as ref:
            decode_image(data)
        with pytest.raises(ImageDecodeError) as fast:
            decode_image_fast(data)
        assert str(fast.value) == str(ref.value), name
    # paths too: a missing file and a folder
    for path in (tmp_path / "missing.jpg", tmp_path):
        with pytest.raises(ImageDecodeError) as ref:
            decode_image(path)
        with pytest.raises(ImageDecodeError) as fast:
            decode_image_fast(path)
        assert str(fast.value) == str(ref.value)


@needs_samples
def test_real_jpegs_decode_to_the_same_pixels_and_nearly_the_same_model_input():
    files = sorted(IMAGENET_SAMPLES.glob("*.JPEG"))
    grey = [f for f in files if Image.open(f).mode == "L"][:4]
    rotated = [f for f in files if Image.open(f).getexif().get(0x0112, 1) != 1]
    chosen = files[::30] + grey + rotated
    assert grey and rotated, "the shared samples hold grey and EXIF-rotated JPEGs"
    transform = Preprocess(crop=224, resize=256, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3).transform()
    pipeline = Pipeline([], transform, torch.device("cpu"))
    worst, shares = 0, []
    for f in chosen:
        fast = decode_image_fast(f)
        assert isinstance(fast, torch.Tensor), f.name
        np.testing.assert_array_equal(as_array(fast), np.asarray(decode_image(f)), err_msg=f.name)
        # the model's input: the tensor resize is antialiased like PIL's, within 2/255 on a few pixels
        x = pipeline.geometry(fast)
        ref = TF.pil_to_tensor(transform.geometry(decode_image(f)))
        assert x.shape == ref.shape
        diff = (x.int() - ref.int()).abs()
        worst = max(worst, int(diff.max()))
        shares.append(float((diff > 0).float().mean()))
        assert diff.max() <= 2 and shares[-1] < 0.15, f.name  # measured on all 900: <= 2, at most 9.9 % of pixels
    assert np.mean(shares) < 0.01  # measured: 0.2 % of the pixels on average
    assert worst > 0, "the two resizes are not bit-identical; if they became so, tighten this test"


def test_the_aspect_ratio_guard_cuts_the_same_box_on_tensors(monkeypatch):
    """Beyond 16:1 the long side is cut before resizing (preprocess.LimitAspect); the tensor path cuts it too."""
    loaded = tiny_model()
    pipeline = Pipeline([], loaded.transform, torch.device("cpu"))
    resized = []
    real_resize = pipeline_mod.TF.resize

    def spy(pixels, *args, **kwargs):
        resized.append(tuple(pixels.shape[-2:]))
        return real_resize(pixels, *args, **kwargs)

    monkeypatch.setattr(pipeline_mod.TF, "resize", spy)
    for size in [(900, 20), (20, 900), (330, 20)]:  # wide, tall, just over the ratio
        data = encode(photo(size, seed=7), quality=95)
        x = pipeline.prepare(ImageItem("k", "wide.jpg", None, None, data=data))
        h, w = resized[-1]
        assert max(h, w) == 16 * min(h, w), "the resize saw the whole long side"
        ref = TF.pil_to_tensor(loaded.transform.geometry(decode_image(data)))
        assert x.shape == ref.shape == (3, 64, 64)
        assert (x.int() - ref.int()).abs().max() <= 2, size  # the same pixels, up to the resize's rounding


# ------------------------------------------------------------------------------------- the pass


def hostile_set(tmp_path: Path) -> ImageSet:
    """Good JPEGs (one grey, one rotated), a PNG, a CMYK JPEG, and files that cannot be read."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    exif = photo().getexif()
    exif[0x0112] = 6
    files = {
        "a_good.jpg": encode(photo(seed=1)),
        "b_truncated.jpg": encode(photo(seed=2))[:1500],  # header intact: the decoders themselves refuse it
        "c_grey.jpg": encode(photo(seed=3).convert("L")),
        "d_not_an_image.jpg": b"hello, I am text",
        "e_rotated.jpg": encode(photo(seed=4), exif=exif.tobytes()),
        "f_cmyk.jpg": encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0))),
        "g_empty.jpg": b"",
        "h_png.png": encode(photo(seed=5), "PNG"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder_source(folder)


def test_unreadable_files_are_skipped_with_decode_images_reason_and_the_rest_runs(tmp_path):
    images = hostile_set(tmp_path)
    loaded = tiny_model()
    expected_skips = {}
    for it in images.items:
        try:
            decode_image(it.path)
        except ImageDecodeError as exc:
            expected_skips[it.origin] = str(exc)
    assert len(expected_skips) == 3
    results = []
    for kw in ({"num_workers": 0}, {"num_workers": 2}, {"num_workers": 1, "device_decode": True}, {"batch_size": 3}):
        result = run_model(loaded, images, options=RunOptions(**kw))
        assert {s.file: s.reason for s in result.skipped} == expected_skips, kw
        assert result.names == ["a_good.jpg", "c_grey.jpg", "e_rotated.jpg", "f_cmyk.jpg", "h_png.png"], kw
        assert all(g.shape[0] == 5 for g in result.gates.values())
        results.append(result)
    for other in results[1:]:  # threads, batching and the batched (device) decoder give the same numbers
        np.testing.assert_allclose(other.logits, results[0].logits, rtol=1e-5, atol=1e-5)
        for name, gates in results[0].gates.items():
            np.testing.assert_array_equal(other.gates[name], gates)


def test_fast_pipeline_input_matches_the_reference_transform(tmp_path):
    """The batch the network sees: PIL-decoded formats bit for bit, JPEGs within the resize's rounding."""
    images = hostile_set(tmp_path)
    loaded = tiny_model()
    pipeline = Pipeline(images.items, loaded.transform, torch.device("cpu"))
    indices, x, failed = pipeline.device_batch(pipeline.host(list(range(len(images.items)))))
    assert len(indices) == 5 and len(failed) == 3
    for row, i in enumerate(indices):
        item = images.items[i]
        ref = reference_input(loaded.transform, item.path)
        if item.name in ("f_cmyk.jpg", "h_png.png"):
            assert torch.equal(x[row], ref), item.name  # the reference PIL steps, normalised with the same ops
        else:
            std = min(loaded.transform.preprocess.std)
            assert (x[row] - ref).abs().max() <= 3 / 255 / std + 1e-6, item.name


def test_a_custom_transform_keeps_the_pil_path(tmp_path):
    images = hostile_set(tmp_path)
    loaded = tiny_model()
    plain = replace(loaded, transform=lambda im: loaded.transform(im))  # not a PreprocessTransform
    pipeline = Pipeline(images.items, plain.transform, torch.device("cpu"))
    indices, x, failed = pipeline.device_batch(pipeline.host(list(range(len(images.items)))))
    assert len(failed) == 3
    assert torch.equal(x, torch.stack([reference_input(loaded.transform, images.items[i].path) for i in indices]))
    result = run_model(plain, images, options=RunOptions(num_workers=1))
    assert result.n == 5 and len(result.skipped) == 3


def test_decode_threads_work_from_a_thread_that_is_not_the_main_one(tmp_path):
    """Streamlit runs scripts in threads; in-memory uploads must work there with decode threads."""
    uploads = [(f"img{i}.jpg", encode(photo(seed=i)), "cats" if i % 2 else "dogs") for i in range(9)]
    uploads.append(("broken.jpg", b"\xff\xd8\xff\xe0 nope", "cats"))
    images = uploads_source(uploads)
    loaded = tiny_model()
    expected = run_model(loaded, images, options=RunOptions(num_workers=0, batch_size=4))
    out: dict = {}

    def script_thread():
        try:
            out["result"] = run_model(loaded, images, options=RunOptions(num_workers=2, batch_size=4))
        except BaseException as exc:  # surfaced below
            out["error"] = exc

    before = {t.name for t in threading.enumerate()}
    worker = threading.Thread(target=script_thread, name="ScriptRunner.scriptThread")
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive() and "error" not in out, out.get("error")
    result = out["result"]
    assert result.keys == expected.keys and len(result.skipped) == 1
    np.testing.assert_allclose(result.logits, expected.logits, rtol=1e-5, atol=1e-5)
    leftover = {t.name for t in threading.enumerate()} - before
    assert not any(name.startswith("senet-viz-decode") for name in leftover), leftover


def test_an_error_in_the_network_stops_the_decode_threads(tmp_path):
    images = uploads_source([(f"img{i}.jpg", encode(photo(seed=i)), None) for i in range(40)])
    loaded = tiny_model()
    calls = []

    def broken(_module, _inputs, _out):
        calls.append(1)
        raise RuntimeError("boom")

    handle = loaded.model.fc.register_forward_hook(broken)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            run_model(loaded, images, options=RunOptions(num_workers=2, batch_size=4))
    finally:
        handle.remove()
    assert len(calls) == 1
    assert not any(t.name.startswith("senet-viz-decode") for t in threading.enumerate())


def test_default_workers_follow_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(2)))
    assert default_workers("cpu") == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert default_workers("cpu") == 4
    assert default_workers(torch.device("cuda")) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert default_workers("cpu") == 1 and default_workers(torch.device("cuda")) == 1


# ------------------------------------------------------------------------------------- gates, once per batch


def test_per_batch_recorder_copies_once_per_batch_and_matches_immediate_recording(tiny_seresnet, tiny_input):
    loaded = tiny_seresnet
    with capture(loaded.model, loaded.blocks) as immediate:
        loaded.model(tiny_input)
    original = torch.Tensor.cpu

    def host_copies(per_batch: bool) -> tuple[int, dict]:
        copies = []

        def counting_cpu(self, *a, **k):
            copies.append(tuple(self.shape))
            return original(self, *a, **k)

        with capture(loaded.model, loaded.blocks, per_batch=per_batch) as rec:
            torch.Tensor.cpu = counting_cpu
            try:
                loaded.model(tiny_input)
                rec.commit()
            finally:
                torch.Tensor.cpu = original
        return len(copies), rec.gates

    n_immediate, immediate = host_copies(False)
    n_batched, batched = host_copies(True)
    assert n_immediate == len(loaded.blocks) > 1  # what per_batch saves: one copy per block
    assert n_batched == 1, "one host copy per batch"
    for name, gates in immediate.items():
        np.testing.assert_array_equal(batched[name], gates)


def test_discarded_gates_are_neither_kept_nor_streamed(tiny_seresnet, tiny_input):
    loaded = tiny_seresnet
    streamed = []
    with capture(loaded.model, loaded.blocks, per_batch=True, on_gates=lambda n, g: streamed.append(n)) as rec:
        loaded.model(tiny_input)
        assert bool(rec.pending_finite())
        rec.discard()
        loaded.model(tiny_input[:2])
    gates = rec.gates  # reading commits what is pending
    assert all(g.shape[0] == 2 for g in gates.values())
    assert streamed == [b.name for b in loaded.blocks]


def test_items_with_in_memory_bytes_are_picklable():
    import pickle

    item = ImageItem("k/a.jpg", "a.jpg", 0, "cat", data=encode(photo()))
    assert pickle.loads(pickle.dumps(item)) == item
