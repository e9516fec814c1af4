"""Hostile uploads (issue 18): zips that expand to GiBs against the session's byte budget, a zip whose directory lies
about sizes, a 16-bit TIFF that costs a gigabyte to decode, the private upload folder, zips expanded once; and the
cases that held before (zip-slip, nested zips, symbolic links, 20,001-member zips refused in memory).

Every hostile file is built here, in memory or in tmp_path."""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
from apptest_helpers import app_session, assert_ok, uploader
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires
from PIL import Image

from senet_viz.data import uploads as imagedata
from senet_viz.data.decode import ImageDecodeError, decode_bytes, decode_image
from senet_viz.data.uploads import ZipRefused, expand_zip, uploads_source

ROOT = Path(__file__).resolve().parents[1]
MODEL = "se_resnet_fmnist"
SAMPLES = ROOT / "assets" / "fmnist_samples"
TIMEOUT = 240
MIB = 1 << 20


def sample_files(cls: str, n: int) -> list[tuple[str, bytes, str]]:
    return [(p.name, p.read_bytes(), "image/png") for p in sorted((SAMPLES / cls).glob("*.png"))[:n]]


@functools.lru_cache(maxsize=4)
def _deflated_zeros(size: int) -> tuple[bytes, int]:
    """``size`` zero bytes as a raw deflate stream, and their CRC-32 (computed once per size)."""
    chunk = bytes(MIB)
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    parts, crc = [], 0
    for _ in range(size // MIB):
        parts.append(packer.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    parts.append(packer.flush())
    return b"".join(parts), crc


def inflating_zip(total_mib: int, member_mib: int = 64, seed: int = 0) -> bytes:
    """A zip of image-named members of zeros, its sizes declared honestly, that expands to ``total_mib`` MiB (about
    1 MB per GiB). Written record by record, so that one compressed member serves them all; ``seed`` names the
    class folder, so each archive's bytes (and digest) differ."""
    body, crc = _deflated_zeros(member_mib * MIB)
    out, directory = io.BytesIO(), io.BytesIO()
    names = [f"cls{seed}/zeros_{i}.png".encode() for i in range(total_mib // member_mib)]
    for name in names:
        offset = out.tell()
        sizes = struct.pack("<3I", crc, len(body), member_mib * MIB)
        out.write(struct.pack("<4s5H", b"PK\x03\x04", 20, 0, zipfile.ZIP_DEFLATED, 0, 0) + sizes
                  + struct.pack("<2H", len(name), 0) + name + body)
        directory.write(struct.pack("<4s6H", b"PK\x01\x02", 20, 20, 0, zipfile.ZIP_DEFLATED, 0, 0) + sizes
                        + struct.pack("<5H2I", len(name), 0, 0, 0, 0, 0, offset) + name)
    start = out.tell()
    out.write(directory.getvalue())
    out.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(names), len(names), len(directory.getvalue()),
                          start, 0))
    return out.getvalue()


def lying_zip(real_mib: int = 64, declared: int = 1000) -> bytes:
    """A zip whose one member inflates to ``real_mib`` MiB while its local header and central directory declare
    ``declared`` bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("liars/small.png", bytes(real_mib * MIB))
    data = bytearray(buf.getvalue())
    local = data.index(b"PK\x03\x04")
    data[local + 22:local + 26] = struct.pack("<I", declared)  # uncompressed size in the local header
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", declared)  # ... and in the central directory
    return bytes(data)


def tiff16_bomb(width: int = 8000, height: int = 5000) -> bytes:
    """A ~120 kB 16-bit grey TIFF of 40 Mpx (deflate-compressed flat pixels): 1.1 GB to decode before issue 18."""
    buf = io.BytesIO()
    Image.new("I;16", (width, height), 1000).save(buf, "TIFF", compression="tiff_adobe_deflate")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ the library


def test_zip_refused_from_its_directory_before_anything_is_expanded():
    data = inflating_zip(1024)
    assert len(data) < 1_500_000
    tracemalloc.start()
    try:
        with pytest.raises(ZipRefused) as info:
            expand_zip("big.zip", data, budget=512 * MIB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.over_budget and info.value.declared == 1024 * MIB and info.value.limit == 512 * MIB
    assert "1,024.0 MiB of images, over the 512.0 MiB left of the budget" in str(info.value)
    assert peak < 8 * MIB, peak  # nothing inflated: the directory alone said no


def test_zip_whose_directory_lies_about_sizes_costs_only_what_it_declares():
    data = lying_zip(real_mib=64, declared=1000)
    tracemalloc.start()
    try:
        expanded = expand_zip("liar.zip", data, budget=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert expanded.members == () and expanded.nbytes == 0
    [skip] = expanded.skipped
    assert skip.file == "liar.zip/liars/small.png" and "cannot extract from the zip" in skip.reason
    assert "CRC" in skip.reason
    assert peak < 8 * MIB, peak  # never more than the 1000 declared bytes of the member were inflated


def test_held_zip_cases_are_refused_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(png, "PNG")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.png", png.getvalue())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok/a.png", png.getvalue())
        zf.writestr("../evil.png", png.getvalue())
        zf.writestr("/abs/evil.png", png.getvalue())
        zf.writestr("ok/inner.zip", inner.getvalue())
        link = zipfile.ZipInfo("ok/link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    expanded = expand_zip("mixed.zip", buf.getvalue())
    assert [m.name for m in expanded.members] == ["ok/a.png"]
    reasons = {s.file: s.reason for s in expanded.skipped}
    assert "unsafe path" in reasons["mixed.zip/../evil.png"]
    assert "unsafe path" in reasons["mixed.zip//abs/evil.png"]
    assert "nested zip archives are not expanded" in reasons["mixed.zip/ok/inner.zip"]
    assert "symbolic link inside the zip" in reasons["mixed.zip/ok/link.png"]
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "evil.png").exists()  # nothing on disk


@pytest.mark.slow
def test_zip_with_20001_members_is_refused_even_when_its_end_record_lies():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(20_001):
            zf.writestr(f"c/{i}.png", b"")
    honest = buf.getvalue()
    with pytest.raises(ZipRefused, match="20,001 entries, over the limit of 20,000"):
        expand_zip("many.zip", honest)
    lying = bytearray(honest)
    end = lying.rindex(b"PK\x05\x06")
    lying[end + 8:end + 12] = struct.pack("<HH", 3, 3)  # the end record claims 3 entries
    with pytest.raises(ZipRefused, match="20,001 entries"):
        expand_zip("many.zip", bytes(lying))
    skipped = uploads_source([("many.zip", bytes(lying), None)]).skipped
    assert [s.file for s in skipped] == ["many.zip"] and "20,001 entries" in skipped[0].reason


def test_expanded_zip_is_used_as_is_by_uploads_source(monkeypatch):
    expanded = expand_zip("two.zip", inflating_zip(2, member_mib=1))
    calls = []
    monkeypatch.setattr(imagedata, "expand_zip", lambda *a, **k: calls.append(a) or expanded)
    images = uploads_source([("two.zip", expanded, None)])
    assert calls == [] and [it.name for it in images] == ["zeros_0.png", "zeros_1.png"]
    assert images.class_names == ["cls0"] and images.items[0].key.endswith("/two.zip/cls0/zeros_0.png")


def test_16bit_tiff_bomb_is_refused_before_decoding_by_its_byte_cost():
    data = tiff16_bomb()
    assert len(data) < 200_000
    assert decode_bytes("I;16", 8000, 5000) == 680_000_000
    assert decode_bytes("RGB", 8000, 5000) < 512 * MIB  # a 40-Mpx 8-bit RGB photo still decodes
    with pytest.raises(ImageDecodeError, match=r"8000x5000 16-bit grey \(I;16\): decoding it would take about "
                                               r"648 MiB, over the 512 MiB limit for one image"):
        decode_image(data)


@pytest.mark.slow
def test_16bit_tiff_bomb_peak_memory_in_a_fresh_process(tmp_path):
    """Measured with ru_maxrss in a fresh interpreter: the refusal costs almost nothing; 1.1 GB before issue 18."""
    path = tmp_path / "bomb.tif"
    path.write_bytes(tiff16_bomb())
    script = (
        "import resource, sys\n"
        "from senet_viz.data.decode import ImageDecodeError, decode_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    decode_image(sys.argv[1])\nexcept ImageDecodeError as exc:\n    print('refused', exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=120).stdout.split("\n")
    assert out[0].startswith("refused image is 8000x5000 16-bit grey")
    assert int(out[1]) < 32 * MIB, out


# ------------------------------------------------------------------------------------------ the upload folder


def test_upload_folder_is_private_readable_by_workers_and_removed_at_exit(tmp_path):
    script = (
        "import multiprocessing, os, stat, sys\n"
        "from pathlib import Path\n"
        "from ui import uploads\n"
        "plain = uploads.save_upload('w.safetensors', b'weights')\n"
        "named = uploads.save_upload('../my model.pt2', b'model', keep_name=True)\n"
        "root = uploads.upload_dir()\n"
        "modes = [stat.S_IMODE(os.stat(p).st_mode) for p in (root, plain, named.parent, named)]\n"
        "print(root, ' '.join(oct(m) for m in modes), named.name)\n"
        "with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "    print(pool.apply(Path.read_bytes, (plain,)) == b'weights')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.strip().splitlines()[-2:]
    root, *modes, name = first.split()
    assert modes == ["0o700", "0o600", "0o700", "0o600"], first
    assert Path(root).name.startswith("senet_viz_uploads_") and name == "my_model.pt2"
    assert second == "True"  # a spawned worker (same user) reads the file it is given
    assert not Path(root).exists()  # removed when the process exited


def test_uploaded_files_on_disk_stay_within_their_budget_least_recently_used_dropped(monkeypatch, tmp_path):
    from ui import uploads

    monkeypatch.setattr(uploads, "_upload_dir", tmp_path / "uploads")
    (tmp_path / "uploads").mkdir(mode=0o700)
    monkeypatch.setenv("SENET_VIZ_UPLOAD_DISK_MB", "3")
    mib = 1 << 20
    first = uploads.save_upload("a.pth", b"a" * mib)
    second = uploads.save_upload("b.onnx", b"b" * mib, keep_name=True)
    os.utime(first, ns=(1, 1))  # a is the least recently used
    os.utime(second, ns=(2, 2))
    third = uploads.save_upload("c.safetensors", b"c" * (2 * mib))  # 4 MiB in all: a goes
    assert not first.exists() and second.exists() and third.exists()
    used = sum(p.stat().st_size for p in (tmp_path / "uploads").rglob("*") if p.is_file())
    assert used <= 3 * mib
    with pytest.raises(ValueError, match="SENET_VIZ_UPLOAD_DISK_MB"):  # larger than the whole budget
        uploads.save_upload("d.pt2", b"d" * (4 * mib))
    assert second.exists() and third.exists()  # nothing dropped for a file that cannot fit
    assert uploads.save_upload("a.pth", b"a" * mib) == first and first.exists()  # written again when asked again


# ------------------------------------------------------------------------------------------ through the app


def upload_app(monkeypatch: pytest.MonkeyPatch, budget_mb: int | None = None):

    if budget_mb is not None:
        monkeypatch.setenv("SENET_VIZ_SESSION_MB", str(budget_mb))
    at = app_session(MODEL, timeout=TIMEOUT)
    at.radio(key="image_source").set_value("Upload by class")
    at.run()
    at.text_input(key="class_name_0").set_value("Bag")
    uploader(at, 0).set_value(sample_files("Bag", 3))
    at.run()
    assert_ok(at)
    return at


def errors(at) -> list[str]:
    return [e.value.replace("\\", "") for e in at.error]  # ui.text.plain escapes the punctuation


def kept(at) -> dict[str, dict]:
    return at.session_state["uploaded_files"]


@pytest.mark.slow
@requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)
def test_three_gib_zips_against_the_default_budget(monkeypatch):
    """Three ~1 MB zips that each expand to 1 GiB: each is refused from its directory with the budget message,
    nothing is inflated, and the images uploaded before are kept."""
    monkeypatch.delenv("SENET_VIZ_SESSION_MB", raising=False)
    at = upload_app(monkeypatch)
    tracemalloc.start()
    try:
        for seed in range(3):
            uploader(at, "zip").set_value((f"gib{seed}.zip", inflating_zip(1024, seed=seed), "application/zip"))
            at.run()
            assert not at.exception, [e.message for e in at.exception]
            [message] = errors(at)
            assert message.startswith(f"gib{seed}.zip was not added: it needs 1,024.0 MiB, and this session's "
                                      "uploads may take 512.0 MiB in all"), message
            assert '"Manage files"' in message and "removing a class" in message and "SENET_VIZ_SESSION_MB" in message
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * MIB, peak  # three GiB declared, none inflated
    assert len(kept(at)["0"]) == 3 and not kept(at).get("zip")
    assert "3 files in 1 classes" in " ".join(c.value for c in at.caption)


@pytest.mark.slow
@requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)
def test_zips_fill_the_budget_then_are_refused_and_earlier_uploads_stay(monkeypatch):
    """With a 40 MiB budget, the first of three zips (32 MiB of images each) is expanded and kept, the next two are
    refused with what is used and what is free; the earlier images and the first zip stay."""
    at = upload_app(monkeypatch, budget_mb=40)
    for seed in range(3):
        uploader(at, "zip").set_value((f"part{seed}.zip", inflating_zip(32, member_mib=8, seed=seed),
                                       "application/zip"))
        at.run()
        assert not at.exception, [e.message for e in at.exception]
    [message] = errors(at)
    assert message.startswith("part2.zip was not added: it needs 32.0 MiB, and this session's uploads may take "
                              "40.0 MiB in all (32.0 MiB used, 8.0 MiB free)"), message
    assert [name for name, _ in kept(at)["zip"].values()] == ["part0.zip"]
    assert len(kept(at)["0"]) == 3
    assert any("Uploads use 32.0 MiB of 40.0 MiB" in c.value for c in at.caption)
    # Removing the zip frees its share: the next one fits.
    at.multiselect(key="drop_files_zip").set_value(list(kept(at)["zip"]))
    at.run()
    at.button(key="drop_selected_zip").click()
    at.run()
    assert not errors(at) and not kept(at)["zip"]
    uploader(at, "zip").set_value(("part1.zip", inflating_zip(32, member_mib=8, seed=1), "application/zip"))
    at.run()
    assert not errors(at) and [name for name, _ in kept(at)["zip"].values()] == ["part1.zip"]


@pytest.mark.slow
@requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)
def test_zip_is_expanded_once_across_reruns(monkeypatch):
    calls: list[str] = []
    real = imagedata.expand_zip

    def counting(name, data, **kw):
        calls.append(name)
        return real(name, data, **kw)

    monkeypatch.setattr(imagedata, "expand_zip", counting)
    at = upload_app(monkeypatch)
    classes = io.BytesIO()
    with zipfile.ZipFile(classes, "w") as zf:
        for cls in ("Sneaker", "Bag"):
            for name, data, _ in sample_files(cls, 2):
                zf.writestr(f"{cls}/{name}", data)
    uploader(at, "zip").set_value(("classes.zip", classes.getvalue(), "application/zip"))
    at.run()
    assert_ok(at)
    at.text_input(key="class_name_0").set_value("Bags")
    at.run()
    at.radio(key="image_source").set_value("Embedded samples")
    at.run()
    at.radio(key="image_source").set_value("Upload by class")
    at.run()
    assert_ok(at)
    assert calls == ["classes.zip"]  # five script runs, one expansion
    [(name, expanded)] = kept(at)["zip"].values()
    assert name == "classes.zip" and len(expanded.members) == 4
    assert "7 files in 3 classes" in " ".join(c.value for c in at.caption)


@pytest.mark.slow
@requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)
def test_lying_zip_and_tiff_bomb_through_the_app(monkeypatch):
    at = upload_app(monkeypatch)
    uploader(at, "zip").set_value(("liar.zip", lying_zip(), "application/zip"))
    uploader(at, 0).set_value([("bomb.tif", tiff16_bomb(), "image/tiff")])
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    listed = "\n".join(m.value for m in at.markdown).replace("\\", "")
    assert "liar.zip/liars/small.png" in listed and "Bad CRC-32" in listed
    assert "bomb.tif: image is 8000x5000 16-bit grey (I;16): decoding it would take about 648 MiB" in listed
    [(_, expanded)] = kept(at)["zip"].values()
    assert expanded.nbytes == 0  # the lie cost nothing against the budget


# ------------------------------------------------------------------------------------------ the server budget


@pytest.mark.slow
def test_the_server_budget_counts_every_live_session_and_a_dropped_one_frees_its_share():
    import gc

    from ui import uploads

    data = [inflating_zip(8, member_mib=4, seed=i) for i in range(3)]
    gc.collect()
    base = uploads.server_used()  # other tests' sessions not yet collected
    budgets = {"budget": 64 * MIB, "server": base + 20 * MIB}
    first, second = uploads.new_store(), uploads.new_store()
    assert uploads.add(first, "zip", "a.zip", data[0], **budgets) is None
    assert uploads.add(second, "zip", "b.zip", data[1], **budgets) is None
    assert uploads.server_used() == base + 16 * MIB
    refused = uploads.add(second, "zip", "c.zip", data[2], **budgets)
    assert refused is not None and refused.startswith("c.zip was not added: it needs 8.0 MiB, and the uploads of "
                                                      "everyone using this server are at ")
    assert "SENET_VIZ_UPLOADS_MB" in refused
    del first  # the session that held it is gone: nothing else keeps its store or its bytes
    gc.collect()
    assert uploads.add(second, "zip", "c.zip", data[2], **budgets) is None
    assert uploads.used_bytes(second) == 16 * MIB


@pytest.mark.slow
@requires(embedded_model_ready(MODEL), EMBEDDED_MISSING)
def test_a_sessions_uploads_are_freed_with_the_session(monkeypatch):
    import gc
    import weakref

    at = upload_app(monkeypatch)
    uploader(at, "zip").set_value(("small.zip", inflating_zip(4, member_mib=2), "application/zip"))
    at.run()
    assert_ok(at)
    [(_, expanded)] = kept(at)["zip"].values()
    gone = weakref.ref(expanded)
    store = weakref.ref(kept(at))
    del expanded, at
    gc.collect()
    assert gone() is None and store() is None  # no cache, registry or module kept the session's uploads


@pytest.mark.slow
def test_expanding_a_member_holds_it_once():
    data = inflating_zip(128, member_mib=128)
    tracemalloc.start()
    try:
        expanded = expand_zip("one.zip", data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert expanded.nbytes == 128 * MIB
    assert peak < 160 * MIB, peak  # not the member plus a joined copy of it (256 MiB)
