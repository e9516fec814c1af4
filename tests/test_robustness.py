"""Robustness: a corpus of bad inputs through the CLI and the app, safe loading, limits, and concurrent users.

What other files already cover (not repeated here): every decoder case one by one and the hypothesis fuzzers
(random bytes behind image magics; random small images of every mode and format, intact, truncated or with a
flipped byte: only ``ImageDecodeError`` escapes) in test_data.py; zip guards (nested folders, zip bomb, too
many members, unsafe paths) in test_data.py; a pickle that runs code, a checkpoint of another architecture and
text files with weights suffixes through the library in test_weights.py; a .tflite that is not a model through
the importer in test_tflite.py; two threads ablating different blocks of a tiny net in test_capture.py; bad image
uploads beside good ones in the app in test_app.py.

Here: the image corpus in one folder through ``python -m senet_viz evaluate/extract --json`` (in process through
``cli.main``; exit 0, every bad file in ``skipped`` with its reason, every good and odd-but-valid file processed);
the weights corpus through the CLI (exit 2, reason on stderr) and the app's weights uploader; a network without SE
blocks; a scan of the source for unsafe loaders; four threads ablating different SE blocks of one shared model, and
proof that the check catches an ablation that edits the shared model; the configured upload and pixel limits, as the
user sees them.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
import os
import struct
import threading
import tomllib
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from apptest_helpers import shown
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires
from PIL import Image
from torch import nn

from senet_viz import cli
from senet_viz.analysis import ablation
from senet_viz.analysis.cost import model_cost
from senet_viz.data.decode import MAX_PIXELS
from senet_viz.data.folders import folder_source
from senet_viz.data.sources import ImageSet
from senet_viz.gates import capture
from senet_viz.gates.blocks import BlockSelectionError, discover_se_blocks, select_blocks
from senet_viz.gates.capture import hook_count
from senet_viz.inference import run
from senet_viz.inference.run import Ablation, RunOptions, run_model
from senet_viz.models import registry
from senet_viz.models.embedded.data import CLASS_NAMES
from senet_viz.models.loaded import LoadedModel
from senet_viz.models.preprocess import LimitAspect
from senet_viz.models.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = "se_resnet_fmnist"
SAMPLES = ROOT / "assets" / "fmnist_samples"
NOSE5_WEIGHTS = ROOT / "assets" / "se_resnet_fmnist_nose5.safetensors"

pytestmark = requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)


# ------------------------------------------------------------------------------------------------ helpers


def sample(cls: str, i: int = 0) -> Path:
    return sorted((SAMPLES / cls).glob("*.png"))[i]


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` RGB pixels but carries almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_bomb() -> bytes:
    """A 1 kB zip whose directory declares a 4 GiB member: over the default MAX_ZIP_BYTES (1 GiB) at once."""
    data = bytearray(make_zip({"Bag/bomb.png": b"\0" * 1000}))
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", 0xFFFF_FFF0)  # uncompressed size in the directory
    return bytes(data)


class _Exploit:
    """Unpickling this runs a shell command that creates ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"echo pwned > '{self.target}'",)


def resnet18_state_dict() -> dict[str, torch.Tensor]:
    """A plain ResNet-18 (no SE anywhere) for 10 classes, random weights: a checkpoint of a non-SE model."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).state_dict()


# ------------------------------------------------------------------------------------ the image corpus

# Files that must be skipped, and a fragment of the reason they must be given.
BAD_IMAGES = {
    "Bag/empty.jpg": "file is empty (0 bytes): empty.jpg",
    "Bag/text renamed.jpg": "not an image (cannot identify format)",
    "Bag/truncated.jpg": "truncated or corrupt image data",
    "Sneaker/bomb 100k x 100k.png": "decompression bomb",
    "Sneaker/over the cap.png": f"over the {MAX_PIXELS // 10**6} Mpx limit; resize it or raise SENET_VIZ_MAX_PIXELS",
    "Sneaker/archive.zip": "not a supported image file type (.zip)",
    "loose.png": "image outside the class folders",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, set[str]]:
    """Class folders Bag/ and Sneaker/ (model classes) holding good samples, odd-but-valid images and bad files.
    Returns the folder and the relative paths that must be processed."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "Bag").mkdir()
    (root / "Sneaker").mkdir()
    good: dict[str, bytes] = {}
    for cls in ("Bag", "Sneaker"):
        for i in range(3):
            good[f"{cls}/{sample(cls, i).name}"] = sample(cls, i).read_bytes()
    bag = Image.open(sample("Bag", 3)).convert("RGB")
    sneaker = Image.open(sample("Sneaker", 3)).convert("RGB")
    palette = sneaker.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    rgba = bag.convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    frames = [bag, sneaker, bag.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    good.update({
        "Bag/cmyk.jpg": encode(bag.convert("CMYK"), "JPEG"),
        "Bag/sixteen bit.png": encode(Image.fromarray(np.asarray(bag.convert("L"), np.uint16) * 257)),
        "Bag/rgba.png": encode(rgba),
        "Bag/animated.gif": gif.getvalue(),
        "Bag/exif rotated.jpg": encode(bag.resize((28, 40)), "JPEG", exif=exif),
        "Sneaker/palette transparent.png": encode(palette),
        "Sneaker/one pixel.png": encode(Image.new("RGB", (1, 1), (120, 120, 120))),
        "Sneaker/wide 1 x 10000.png": encode(Image.new("RGB", (10_000, 1), (200, 200, 200))),
        "Sneaker/it's \"quoted\" name.png": sample("Sneaker", 4).read_bytes(),
        "Sneaker/  spaces  in name .png": sample("Sneaker", 5).read_bytes(),
        "Sneaker/ünïcödé 猫 🙂.png": sample("Sneaker", 6).read_bytes(),
        "Sneaker/back\\slash.png": sample("Sneaker", 7).read_bytes(),  # a path separator elsewhere, a name here
    })
    bad_bytes = {
        "Bag/empty.jpg": b"",
        "Bag/text renamed.jpg": b"this is a text file that was renamed to .jpg\n" * 10,
        "Bag/truncated.jpg": encode(bag.resize((256, 256)), "JPEG")[:1500],
        "Sneaker/bomb 100k x 100k.png": png_header_only(100_000, 100_000),
        "Sneaker/over the cap.png": png_header_only(7_000, 7_000),  # 49 Mpx: under Pillow's limit, over ours
        "Sneaker/archive.zip": make_zip({"deep/er/x.png": encode(bag)}),
        "loose.png": encode(bag),
    }
    assert set(bad_bytes) == set(BAD_IMAGES)
    for rel, data in {**good, **bad_bytes}.items():
        (root / rel).write_bytes(data)
    (root / "Sneaker" / "notes.txt").write_text("ignored without a word")
    (root / "Bag" / "fake.tflite").write_bytes(b"not a model")  # a known non-image type: ignored too
    return root, set(good)


def run_cli(capsys, *args: str | Path) -> dict:
    """``python -m senet_viz <args> --json`` in this process (``cli.main``): exit 0, no traceback, its JSON."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args] + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    return json.loads(out)


def check_skipped(summary: dict) -> None:
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == set(BAD_IMAGES), sorted(reasons)
    for rel, fragment in BAD_IMAGES.items():
        assert fragment in reasons[rel], (rel, reasons[rel])
    assert reasons["Bag/empty.jpg"].startswith("file is empty")  # said once, not wrapped in "cannot read"
    assert summary["n_skipped"] == len(summary["skipped"]) == len(BAD_IMAGES)


def test_cli_evaluate_skips_each_bad_file_with_its_reason_and_scores_the_rest(corpus, capsys):
    root, good = corpus
    out = run_cli(capsys, "evaluate", "--model", MODEL, "--images", root, "--ablate", "stage:5", "--device", "cpu")
    check_skipped(out)
    assert out["n_images"] == len(good) == 18
    assert out["top1"] is not None and out["full_top1"] is not None and out["ablated"] == ["SE_5_1", "SE_5_2"]


def test_cli_extract_writes_a_row_for_every_readable_file(corpus, tmp_path, capsys):
    from senet_viz.data.store import read_excitations

    root, good = corpus
    out_file = tmp_path / "x.parquet"
    summary = run_cli(capsys, "extract", "--model", MODEL, "--images", root, "--out", out_file, "--device", "cpu")
    check_skipped(summary)
    assert summary["n_images"] == len(good)
    gates = read_excitations(out_file)
    assert set(gates.keys) == good  # the odd names, the 1 x 10000, the CMYK, ... each have their row
    assert set(gates.label_names) == {"Bag", "Sneaker"}


def test_a_very_wide_image_is_cut_before_resizing_not_blown_up():
    """1 x 10,000 px resized to a short side of 256 would be 256 x 2,560,000 (several GB); cut first, the model
    sees the same pixels."""
    transform = registry.get_spec("tf_mobilenetv3_small_100").preprocess.transform()
    rng = np.random.default_rng(0)
    for size in [(10_000, 1), (1, 10_000), (2_000, 40)]:
        im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        cut = LimitAspect()(im)
        assert max(cut.size) <= 16 * min(cut.size) and min(cut.size) == min(size)
        assert tuple(transform(im).shape) == (3, 224, 224)
    # within the ratio nothing changes; beyond it, the centre the crop keeps is the same
    im = Image.fromarray(rng.integers(0, 256, (40, 2_000, 3), dtype=np.uint8))
    assert LimitAspect()(Image.new("RGB", (160, 10))).size == (160, 10)
    plain = [t for t in transform.transforms if not isinstance(t, LimitAspect)]
    np.testing.assert_allclose(transform(im).numpy(), transform.__class__(plain)(im).numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------- the weights corpus


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """case -> (file, fragment its message must hold). The pickle would create pwned.txt beside itself."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    evil = folder / "evil.pth"
    good_state = load_model(MODEL, device="cpu").model.state_dict()
    torch.save({"state_dict": good_state, "payload": _Exploit(folder / "pwned.txt")}, evil)
    resnet = folder / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18_state_dict().items()}, str(resnet))
    fake = folder / "fake.tflite"
    fake.write_bytes(b"PK\x03\x04 not a flatbuffer at all " * 8)
    return {
        "pickle that runs code": (evil, "weights_only=True"),
        "checkpoint of the wrong architecture": (NOSE5_WEIGHTS, "missing in file"),
        "non-SE model": (resnet, "another model"),
        ".tflite that is not a model": (fake, "is not a TFLite model"),
    }


@pytest.mark.parametrize("case", ["pickle that runs code", "checkpoint of the wrong architecture", "non-SE model",
                                  ".tflite that is not a model"])
def test_cli_bad_weights_exit_2_with_the_reason(case, bad_weights, corpus, capsys):
    """In-process through cli.main (the entry point of ``python -m senet_viz``) to spare four interpreter starts."""
    path, fragment = bad_weights[case]
    code = cli.main(["evaluate", "--model", MODEL, "--weights", str(path), "--images", str(corpus[0]),
                     "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err
    if case == "checkpoint of the wrong architecture":  # names the keys: the SE of stage 5 is missing in the file
        assert "layer4.0.se.fc1.weight" in err
    if case == "non-SE model":
        assert "not in model" in err and "missing in file" in err
    assert not (path.parent / "pwned.txt").exists(), "the pickled os.system call was executed"


# ------------------------------------------------------------------------------------- a network without SE


def test_a_network_without_se_has_no_blocks_and_says_so_where_a_user_selects_them():
    import torchvision

    torch.manual_seed(0)
    loaded = LoadedModel.from_module(torchvision.models.resnet18(num_classes=10), "resnet18",
                                     [f"c{i}" for i in range(10)], input_size=(3, 64, 64))
    assert loaded.blocks == [] and discover_se_blocks(loaded.model, (3, 64, 64)).blocks == []
    for spec in ("stage:5", "SE_5_1", "last:1", "all"):
        with pytest.raises(BlockSelectionError, match="this model has no SE blocks"):
            select_blocks(loaded.blocks, spec)
    assert select_blocks(loaded.blocks, None) == [] and select_blocks(loaded.blocks, "") == []
    # inference, accuracy and cost still work; there are simply no gates
    images = folder_source(SAMPLES).subset(["Bag", "Sneaker"])
    images = ImageSet(images.items[:4], [], images.class_names)
    result = run_model(loaded, images)
    assert result.n == 4 and result.gates == {} and hook_count(loaded.model) == 0
    out = ablation.evaluate(loaded, images)
    assert out["n_images"] == 4 and out["params_removed"] == 0


# ------------------------------------------------------------------------------------------- safe loading

SCANNED = [ROOT / "app.py", *sorted((ROOT / "senet_viz").rglob("*.py")), *sorted((ROOT / "ui").rglob("*.py")),
           *sorted((ROOT / "app_pages").rglob("*.py"))]
# Loaders that unpickle: they must be called with weights_only=True written out.
NEED_WEIGHTS_ONLY = {"torch.load", "torch.hub.load", "torch.hub.load_state_dict_from_url",
                     "torch.utils.model_zoo.load_url"}
NEED_WEIGHTS_ONLY_METHODS = {"get_state_dict", "load_state_dict_from_url"}  # torchvision Weights.get_state_dict
# Loaders that run pickled code whatever their arguments.
FORBIDDEN = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "dill.load",
             "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load", "pandas.read_pickle",
             "shelve.open"}


def unsafe_loads(source: str, filename: str = "<string>") -> list[str]:
    """Every call in ``source`` that could unpickle code: ``file:line: call``."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def dotted(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id, expr.id)
        if isinstance(expr, ast.Attribute):
            base = dotted(expr.value)
            return f"{base}.{expr.attr}" if base else f"?.{expr.attr}"
        return None

    def weights_only_true(call: ast.Call) -> bool:
        kw = {k.arg: k.value for k in call.keywords}
        value = kw.get("weights_only")
        return None not in kw and isinstance(value, ast.Constant) and value.value is True

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func) or ""
        method = name.rsplit(".", 1)[-1]
        numpy_pickle = name in ("numpy.load", "np.load") and any(
            k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
            for k in node.keywords)
        needs = name in NEED_WEIGHTS_ONLY or method in NEED_WEIGHTS_ONLY_METHODS
        if name in FORBIDDEN or numpy_pickle or (needs and not weights_only_true(node)):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.slow
def test_no_code_loads_pickles_without_weights_only():
    assert len(SCANNED) > 20
    problems = [p for f in SCANNED for p in unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert not problems, "unsafe loaders:\n" + "\n".join(problems)


def test_the_loader_scanner_sees_every_form():
    bad = """
import torch, pickle
import torch as T
from torch import load
from torch import load as L
from torch.hub import load_state_dict_from_url
import numpy as np
torch.load(p)
T.load(p, weights_only=False)
load(p)
L(p, map_location="cpu")
torch.load(p, **kw)
load_state_dict_from_url(u)
weights.get_state_dict(progress=True)
pickle.loads(b)
np.load(f, allow_pickle=True)
"""
    ok = """
import torch
torch.load(p, map_location="cpu", weights_only=True)
weights.get_state_dict(progress=True, weights_only=True)
np.load(f)
"""
    assert [line.split(":")[1] for line in unsafe_loads(bad)] == [str(n) for n in range(8, 17)]
    assert unsafe_loads(ok) == []


def test_every_torch_load_on_the_way_to_a_model_uses_weights_only(tmp_path, monkeypatch):
    """At run time as well: loading a .pth through the zoo calls torch.load with weights_only=True only."""
    path = tmp_path / f"{MODEL}.pth"
    torch.save({"state_dict": load_model(MODEL, device="cpu").model.state_dict()}, path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_model(MODEL, weights=path, device="cpu")
    assert calls == [True] and loaded.weights_source == str(path)


# ------------------------------------------------------------------------------------------- concurrency

# Four users, four different SE removals on the one shared model.
JOBS = {"stage 5": ("stage:5", "identity"), "first 2": ("first:2", "identity"), "SE_4_1": ("SE_4_1", "identity"),
        "all, frozen to the mean": ("all", "mean")}


@pytest.fixture(scope="module")
def fmnist_images() -> ImageSet:
    images = folder_source(SAMPLES, class_names=list(CLASS_NAMES))  # labels in the model's space
    return ImageSet(images.items[::15], [], images.class_names)  # 20 images, 2 per class


def fresh_model() -> LoadedModel:
    return load_model(MODEL, device="cpu")


def same(a, b) -> bool:
    """Exact equality of nested results: arrays (shape, dtype and every bit), dicts, tuples, numbers."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def concurrent_check(loaded: LoadedModel, images: ImageSet, iterations: int = 5, cost_user: bool = False) -> dict:
    """Run every job alone, then all together in threads released at once by a barrier; compare exactly.

    The jobs are the four SE removals of JOBS (logits, top-1 and the gates the network used, all captured in
    the same hooked pass), and with ``cost_user`` a fifth user reading parameters and MACs (a plain forward
    under FLOP counting) at the same time."""
    means = ablation.mean_gates(run_model(loaded, images), loaded.blocks)

    def removal(key: str):
        spec, mode = JOBS[key]
        gone = Ablation(select_blocks(loaded.blocks, spec), mode, means)
        result = run_model(loaded, images, options=RunOptions(batch_size=8, ablation=gone))
        return result.logits, result.pred, result.gates

    def cost():
        report = model_cost(loaded.model, loaded.blocks, select_blocks(loaded.blocks, "stage:5"), loaded.input_size)
        return report.macs, report.macs_removed, tuple(report.blocks["macs"])

    jobs = {key: functools.partial(removal, key) for key in JOBS} | ({"cost": cost} if cost_user else {})
    # One OpenMP team size for this thread and the threads started below: a thread that has not run torch takes the
    # stored default, which the app's engine (an earlier test) may have set below this thread's own size, and a
    # convolution summed by another number of threads differs in the last bits.
    torch.set_num_threads(torch.get_num_threads())
    alone = {key: job() for key, job in jobs.items()}
    distinct = {alone[key][0].tobytes() for key in JOBS}
    assert len(distinct) == len(JOBS), "the removals must give different logits to tell them apart"
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    modules = [(name, type(m)) for name, m in loaded.model.named_modules()]

    barrier = threading.Barrier(len(jobs))
    got: dict[str, list] = {key: [] for key in jobs}
    errors: list[BaseException] = []

    def worker(key: str) -> None:
        try:
            for _ in range(iterations):
                barrier.wait(timeout=60)
                got[key].append(jobs[key]())
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(key,)) for key in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return {
        "errors": errors,
        "runs": {key: len(v) for key, v in got.items()},
        "mismatches": [f"{key} #{i}" for key in jobs for i, r in enumerate(got[key]) if not same(r, alone[key])],
        "hooks_left": hook_count(loaded.model),
        "state_unchanged": all(torch.equal(state[k], v) for k, v in loaded.model.state_dict().items()),
        "modules_unchanged": modules == [(name, type(m)) for name, m in loaded.model.named_modules()],
    }


@pytest.mark.slow
def test_four_threads_removing_different_se_blocks_get_exactly_their_own_results(fmnist_images):
    loaded = fresh_model()
    report = concurrent_check(loaded, fmnist_images, cost_user=True)
    assert not report["errors"], report["errors"]
    assert report["runs"] == {key: 5 for key in [*JOBS, "cost"]}
    assert report["mismatches"] == [], report
    assert report["hooks_left"] == 0
    assert report["state_unchanged"] and report["modules_unchanged"]
    # and the metrics a user reads, through ablation.evaluate, match the ones of a lone run
    alone = {key: ablation.evaluate(loaded, fmnist_images, select_blocks(loaded.blocks, JOBS[key][0]), JOBS[key][1])
             for key in JOBS}
    together: dict[str, dict] = {}
    barrier = threading.Barrier(len(JOBS))

    def worker(key: str) -> None:
        barrier.wait(timeout=60)
        together[key] = ablation.evaluate(loaded, fmnist_images, select_blocks(loaded.blocks, JOBS[key][0]),
                                          JOBS[key][1])

    threads = [threading.Thread(target=worker, args=(key,)) for key in JOBS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone
    assert hook_count(loaded.model) == 0


def mac_counts_beside_another_model(loaded: LoadedModel, other: nn.Module, rounds: int = 10) -> list[bool]:
    """Count the MACs of ``loaded`` while another thread keeps running ``other``: True where a count equals the
    lone one."""
    alone = model_cost(loaded.model, loaded.blocks, (), loaded.input_size).blocks["macs"].tolist()
    stop = threading.Event()

    def busy() -> None:
        x = torch.zeros(1, 1, 28, 28)
        with torch.inference_mode():
            while not stop.is_set():
                other(x)

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        return [model_cost(loaded.model, loaded.blocks, (), loaded.input_size).blocks["macs"].tolist() == alone
                for _ in range(rounds)]
    finally:
        stop.set()
        thread.join(timeout=60)


def mac_count_with_another_forward_inside(loaded: LoadedModel, other: LoadedModel) -> bool:
    """Count the MACs of ``loaded`` while another thread is inside a forward of ``other``: True where the count
    equals the lone one. The interleaving is forced, not left to chance: once the count has begun (its tracker is
    in place), the other thread enters ``other`` down to its first SE block and waits there until the count ends."""
    alone = model_cost(loaded.model, loaded.blocks, (), loaded.input_size).blocks["macs"].tolist()
    go, inside, counted = threading.Event(), threading.Event(), threading.Event()

    def wait_inside(module, args) -> None:
        inside.set()
        counted.wait(timeout=60)

    def start_other(module, args) -> None:
        if not go.is_set():
            go.set()
            assert inside.wait(timeout=60), "the other forward never reached its SE block"

    def forward_other() -> None:
        go.wait(timeout=60)
        with torch.inference_mode():
            other.model(torch.zeros(1, *other.input_size))

    thread = threading.Thread(target=forward_other)
    pause = other.model.get_submodule(other.blocks[0].path).register_forward_pre_hook(wait_inside)
    begin = loaded.model.register_forward_pre_hook(start_other)
    thread.start()
    try:
        macs = model_cost(loaded.model, loaded.blocks, (), loaded.input_size).blocks["macs"].tolist()
    finally:
        counted.set()
        go.set()
        thread.join(timeout=60)
        begin.remove()
        pause.remove()
    assert inside.is_set() and not thread.is_alive()
    return macs == alone


@pytest.mark.slow
def test_mac_counts_are_not_disturbed_by_another_model_running_in_another_thread(monkeypatch):
    """torch's FLOP counter attributes operations to modules through global module hooks; the cost module
    follows only its own thread, so another user's network running meanwhile changes nothing. With torch's
    tracker put back, the same check sees the disturbance (in the forced interleaving: in a free-running race it
    may or may not happen, so only the undisturbed counts are asserted there)."""
    from torch.utils.module_tracker import ModuleTracker

    from senet_viz.analysis import cost
    loaded, other = fresh_model(), load_model("se_resnet_fmnist_nose5", device="cpu")
    assert all(mac_counts_beside_another_model(loaded, other.model))
    assert mac_count_with_another_forward_inside(loaded, other)
    monkeypatch.setattr(cost, "_ThisThreadModuleTracker", ModuleTracker)
    assert not mac_count_with_another_forward_inside(loaded, other)


class _Constant(nn.Module):
    def __init__(self, vec: torch.Tensor | None) -> None:
        super().__init__()
        self.vec = vec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vec is None:
            return torch.ones_like(x)
        return self.vec.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2))).expand_as(x)


@contextlib.contextmanager
def mutating_ablate(model, blocks, mode="identity", means=None, *, grad=False):
    """What the design forbids: ablation as an edit of the shared model (each gate swapped for a constant
    module) without the lock. Used only to prove that the concurrency check catches it."""
    modules = dict(model.named_modules())
    saved = []
    for b in blocks:
        parent_path, _, child = b.gate_path.rpartition(".")
        parent = modules[parent_path] if parent_path else model
        saved.append((parent, child, getattr(parent, child)))
        vec = None if mode == "identity" else torch.as_tensor(np.asarray(means[b.name], np.float32))
        setattr(parent, child, _Constant(vec))
    try:
        with torch.inference_mode():
            yield
    finally:
        for parent, child, original in reversed(saved):
            setattr(parent, child, original)


def break_ablation(monkeypatch) -> None:
    for module in (capture, run, ablation):
        monkeypatch.setattr(module, "ablate", mutating_ablate)


@pytest.mark.slow
def test_the_concurrency_check_catches_an_ablation_that_edits_the_shared_model(fmnist_images, monkeypatch):
    break_ablation(monkeypatch)
    loaded = fresh_model()  # this one gets damaged
    report = concurrent_check(loaded, fmnist_images)
    assert not report["errors"], report["errors"]
    # alone, the mutating version gives the right numbers (concurrent_check asserts the jobs differ);
    # together, the users see each other's removals, or the model keeps someone's constant gate
    assert report["mismatches"] or not report["modules_unchanged"], report


# ------------------------------------------------------------------------------------------------- limits


def test_the_server_config_sets_the_limits():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == 200
    assert config["server"]["fileWatcherType"] == "none" and config["server"]["headless"] is True
    assert config["browser"]["gatherUsageStats"] is False


@pytest.mark.slow
def test_app_states_the_limits_and_explains_bad_zip_and_weights_uploads(bad_weights):
    """One session: the upload widgets state the limits; a zip bomb is refused beside good uploads, a zip with
    nested folders is read; every bad weights file gives its reason, and the app recovers when it is removed."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.selectbox(key="model_name").set_value(MODEL)
    at.radio(key="image_source").set_value("Upload by class")
    at.run()
    assert not at.exception, [e.message for e in at.exception]

    def uploader(slot: str):  # upload keys carry a generation: files move to session state, the widget empties
        return next(u for u in at.get("file_uploader") if str(u.key).startswith(f"class_files_{slot}_"))

    for widget in (uploader("0"), uploader("zip"), at.file_uploader(key="weights_upload")):
        assert "200 MB per file" in widget.help, widget.key
    for widget in (uploader("0"), uploader("zip")):
        assert "40 Mpx" in widget.help and "SENET_VIZ_MAX_PIXELS" in widget.help
    assert "weights_only=True" in at.file_uploader(key="weights_upload").help

    def state() -> tuple[str, str]:
        assert not at.exception, [e.message for e in at.exception]
        listed = "\n".join(m.value for m in at.markdown)
        return (at.caption[0].value if at.caption else ""), listed

    at.text_input(key="class_name_0").set_value("Bag")
    uploader("0").set_value(
        [(p.name, p.read_bytes(), "image/png") for p in (sample("Bag", 0), sample("Bag", 1))]
        + [("huge.png", png_header_only(7_000, 7_000), "image/png")])
    uploader("zip").set_value(("bomb.zip", zip_bomb(), "application/zip"))
    at.run()
    caption, listed = state()
    assert caption.startswith("2 images, grouped by labels")
    assert "bomb.zip: zip would expand to" in listed.replace("\\", "") and "possible zip bomb" in listed
    # the pixel cap, said (the page shows file names as plain text: ui.text.plain escapes their punctuation)
    assert "huge.png: image is 7000x7000 = 49 Mpx, over the 40 Mpx limit" in listed.replace("\\", "")

    nested = make_zip({
        "photos/Sneaker/a.png": sample("Sneaker", 0).read_bytes(),
        "photos/Sneaker/deep/er/b.png": sample("Sneaker", 1).read_bytes(),
        "photos/Bag/c.png": sample("Bag", 2).read_bytes(),
        "photos/Bag/inner.zip": make_zip({"x.png": sample("Bag", 3).read_bytes()}),
    })
    uploader("zip").set_value(("nested folders.zip", nested, "application/zip"))
    at.run()
    caption, listed = state()
    assert caption.startswith("5 images, grouped by labels"), caption
    assert "nested folders.zip/photos/Bag/inner.zip: nested zip archives are not expanded" in listed.replace("\\", "")

    for case, (path, fragment) in bad_weights.items():
        at.file_uploader(key="weights_upload").set_value((path.name, path.read_bytes(), "application/octet-stream"))
        at.run()
        assert not at.exception, (case, [e.message for e in at.exception])
        errors = [shown(e.value) for e in at.error]
        assert any(f"Could not load {MODEL}" in e and fragment in e for e in errors), (case, errors)
    assert not (bad_weights["pickle that runs code"][0].parent / "pwned.txt").exists()

    at.file_uploader(key="weights_upload").set_value(None)
    at.run()
    caption, _ = state()
    assert not at.error and caption.startswith("5 images, grouped by labels")
