"""Hostile analysis bundles (issue 18, items 3-5): every file is built here, in ``tmp_path``.

- a 3 KB bundle whose statistics declare 250 million channels: refused from the Parquet footer, nothing allocated
  (peak memory measured in a child process);
- a bundle whose ``stats.parquet`` is a deflate bomb (500 MiB of zeros in half a MiB): refused after a few MiB,
  with no large temporary file (the child may not write a file over 32 MiB) and no large allocation;
- a doctored bundle that copies a genuine ``bundle.json`` over other statistics: the shared caches are keyed by
  the file's bytes, so the session that opens the genuine file sees the genuine statistics;
- Markdown and HTML in the provenance: shown as text, never as markup (no element carries an image or a tag);
- an empty bundle: a clear message when it is opened, not a KeyError from a page;
- a typed path outside the data roots: one message, the same for a file that exists and one that does not.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from apptest_helpers import app_session, open_page
from streamlit.testing.v1 import AppTest

from senet_viz.analysis.bundle import MAX_MEMBER_BYTES, BundleError, provenance, read_bundle, write_bundle
from senet_viz.analysis.stats import GateStats
from senet_viz.analysis.stats_io import META_KEY, StatsTooLarge
from senet_viz.paths import outside_roots_message
from ui.text import plain

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
BLOCKS = [{"name": "SE_2_1", "stage": 2, "channels": 8}, {"name": "SE_5_1", "stage": 5, "channels": 16}]
CLASSES = ["cat", "dog", "owl"]
PEAK_MB = 200  # what refusing a bomb may cost in memory, above the child's state after a genuine bundle
EVIL = "![x](http://evil.example/t.png) <img src=http://evil.example/u.png> :red[red] $x^2$"


def stats_of(seed: int, n: int = 60) -> GateStats:
    rng = np.random.default_rng(seed)
    stats = GateStats.for_blocks("toy", BLOCKS, CLASSES)
    labels = rng.integers(0, len(CLASSES), n)
    for b in BLOCKS:
        stats.update(b["name"], rng.uniform(size=(n, b["channels"])), labels)
    return stats


def prov(**overrides) -> dict:
    p = provenance(model="toy", weights="toy.safetensors", weights_digest="abc", images="/data/x", n_images=60,
                   n_classes=3, command=["python", "-m", "senet_viz", "paper"])
    p.update(overrides)
    return p


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buffer.getvalue()


def run_child(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (its own peak RSS); it prints one JSON line, returned."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# The child reads a genuine bundle first (imports, pyarrow's pools: its baseline), then the bomb.
CHILD = """
import json, resource, sys, tracemalloc
from senet_viz.analysis.bundle import BundleError, read_bundle
read_bundle(sys.argv[1] if len(sys.argv) > 1 else {genuine!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
try:
    read_bundle({bomb!r})
    outcome = "opened"
except BundleError as exc:
    outcome = "refused: " + str(exc)
peak = tracemalloc.get_traced_memory()[1]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"outcome": outcome, "rss_mb": (after - before) / 1024, "traced_mb": peak / 2**20}}))
"""


# ------------------------------------------------------------------------------------------ channel bomb


def channel_bomb(tmp_path: Path, channels: int = 250_000_000) -> Path:
    """A genuine small bundle whose statistics' metadata then declares ``channels`` channels in one block."""
    genuine = tmp_path / "stats.parquet"
    stats_of(0).save(genuine)
    table = pq.read_table(genuine)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta["blocks"][0]["channels"] = channels
    forged = tmp_path / "forged.parquet"
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), forged,
                   compression="zstd")
    bomb = tmp_path / "channels.senetviz.zip"
    bomb.write_bytes(zip_of({"bundle.json": json.dumps(prov()).encode(), "stats.parquet": forged.read_bytes()}))
    return bomb


@pytest.mark.slow
def test_a_bundle_declaring_250m_channels_is_refused_before_anything_is_allocated(tmp_path):
    bomb = channel_bomb(tmp_path)
    assert bomb.stat().st_size < 16_000  # a few KB (the was 3.4 KB)
    with pytest.raises(BundleError, match=r"declare 250,000,016 gates .* holds the values of only 96"):
        read_bundle(bomb)
    with pytest.raises(StatsTooLarge):  # the library's own reader checks the shapes even with no memory bound
        with zipfile.ZipFile(bomb) as zf:
            (tmp_path / "bomb.parquet").write_bytes(zf.read("stats.parquet"))
        GateStats.load(tmp_path / "bomb.parquet", max_bytes=None)
    genuine = write_bundle(tmp_path / "genuine", stats_of(0), prov())
    report = run_child(CHILD.format(genuine=str(genuine), bomb=str(bomb)))
    assert report["outcome"].startswith("refused: "), report
    # Before: np.full(250M) twice and a 250M x 50 histogram, gigabytes. Now only the footer is read.
    assert report["rss_mb"] < PEAK_MB and report["traced_mb"] < PEAK_MB, report


def test_statistics_larger_than_the_memory_bound_are_refused_from_the_footer(tmp_path):
    path = write_bundle(tmp_path / "genuine", stats_of(0), prov())
    assert read_bundle(path, max_bytes=64 << 20).stats.n_images() == 60
    with pytest.raises(BundleError, match=r"would take about .* MiB of memory once read, over the 0 MiB"):
        read_bundle(path, max_bytes=1024)


# ------------------------------------------------------------------------------------------ expansion bomb


def deflate_bomb(size: int) -> bytes:
    """A zip with a genuine bundle.json and a ``stats.parquet`` of ``size`` zero bytes, deflated: the same 1 MiB
    segment (a full flush resets the dictionary, so it can repeat) makes it in milliseconds, about 1 KB per MiB."""
    meta = json.dumps(prov()).encode()
    chunk = bytes(1 << 20)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    count = size // len(chunk)
    data = segment * count + zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    members = [(b"bundle.json", 0, meta, zlib.crc32(meta), len(meta)), (b"stats.parquet", 8, data, crc, size)]
    out, central = io.BytesIO(), io.BytesIO()
    for name, method, payload, crc32, usize in members:
        offset = out.tell()
        out.write(struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 33, crc32, len(payload), usize,
                              len(name), 0) + name + payload)
        central.write(struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, method, 0, 33, crc32,
                                  len(payload), usize, len(name), 0, 0, 0, 0, 0o644 << 16, offset) + name)
    start = out.tell()
    out.write(central.getvalue())
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(central.getvalue()), start, 0))
    return out.getvalue()


@pytest.mark.slow
def test_a_deflate_bomb_is_refused_without_a_large_temporary_file_or_allocation(tmp_path):
    size = 500 << 20  # under the 512 MiB member limit: the header tells the truth, the expansion gives it away
    assert size <= MAX_MEMBER_BYTES["stats.parquet"]
    bomb = tmp_path / "deflate.senetviz.zip"
    bomb.write_bytes(deflate_bomb(size))
    assert bomb.stat().st_size < 1 << 20
    with zipfile.ZipFile(bomb) as zf:  # a valid zip: its member really expands to 500 MiB
        assert zf.getinfo("stats.parquet").file_size == size
    with pytest.raises(BundleError, match="compression bomb"):
        read_bundle(bomb.read_bytes())  # as an upload
    genuine = write_bundle(tmp_path / "genuine", stats_of(0), prov())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # No file over 32 MiB may be written (SIGXFSZ ignored: a larger write fails with EFBIG instead of killing it):
    # before, the member went whole to a temporary file.
    code = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 20, 32 << 20))\n"
            + CHILD.format(genuine=str(genuine), bomb=str(bomb)))
    report = run_child(code, env={"TMPDIR": str(scratch)})
    assert report["outcome"].startswith("refused: ") and "compression bomb" in report["outcome"], report
    assert report["rss_mb"] < PEAK_MB and report["traced_mb"] < PEAK_MB, report
    assert not list(scratch.iterdir())  # its temporary folder is gone


# ------------------------------------------------------------------------------------------ doctored bundle


def test_a_doctored_bundle_with_a_genuine_bundle_json_never_answers_for_the_genuine_file(tmp_path, monkeypatch):
    from ui import bundles

    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))
    genuine_stats, doctored_stats = stats_of(0), stats_of(1)
    genuine = write_bundle(tmp_path / "genuine", genuine_stats, prov())
    with zipfile.ZipFile(genuine) as zf:
        bundle_json = zf.read("bundle.json")  # copied byte for byte, time stamp included
    doctored_parquet = tmp_path / "doctored.parquet"
    doctored_stats.save(doctored_parquet)
    doctored = zip_of({"bundle.json": bundle_json, "stats.parquet": doctored_parquet.read_bytes()})
    expected = genuine_stats.indices()["specificity"].to_numpy()
    forged = doctored_stats.indices()["specificity"].to_numpy()
    assert not np.allclose(expected, forged)

    bundles.BUNDLES.clear()
    first = bundles.open_bundle(doctored)  # one session uploads the doctored file
    np.testing.assert_allclose(bundles.bundle_analysis(first).indices["specificity"], forged)
    second = bundles.open_bundle(str(genuine))  # the next session opens the genuine one by its path
    assert second.provenance == first.provenance and second.digest != first.digest
    np.testing.assert_allclose(bundles.bundle_analysis(second).indices["specificity"], expected)
    np.testing.assert_allclose(bundles.bundle_analysis(bundles.open_bundle(genuine.read_bytes())).indices["specificity"],
                               expected)  # its upload is the same content: the same entry
    assert bundles.open_bundle(genuine.read_bytes()) is second
    assert 0 < bundles.BUNDLES.nbytes() < 1 << 20


def test_the_bundle_cache_is_bounded_by_bytes_least_recently_used_first(tmp_path, monkeypatch):
    from ui import bundles

    bundles.BUNDLES.clear()
    blobs = [write_bundle(tmp_path / f"b{i}", stats_of(i), prov()).read_bytes() for i in range(3)]
    first = bundles.open_bundle(blobs[0])
    assert bundles.bundle_bytes(first) >= first.stats.nbytes() > 0  # estimated from the arrays
    bundles.BUNDLES.clear()
    monkeypatch.setattr(bundles, "bundle_bytes", lambda bundle: 1 << 20)  # 1 MiB each: room for two
    monkeypatch.setenv("SENET_VIZ_BUNDLES_MB", "2.5")
    a = bundles.open_bundle(blobs[0])
    bundles.open_bundle(blobs[1])
    assert bundles.open_bundle(blobs[0]) is a  # a use: blobs[1] is now the least recently used
    bundles.open_bundle(blobs[2])
    assert bundles.BUNDLES.nbytes() == 2 << 20
    assert bundles.open_bundle(blobs[0]) is a  # kept
    digests = bundles.BUNDLES.digests()
    assert len(digests) == 2 and bundles.open_bundle(blobs[1]).digest not in digests  # dropped, read again


# ------------------------------------------------------------------------------------------ through the app


def app_with_bundle(path: Path | str) -> AppTest:
    at = app_session(work_from="An analysis file", timeout=TIMEOUT)
    at.text_input(key="bundle_path").set_value(str(path))
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


UNESCAPED = re.compile(r"(?<!\\)!\[|(?<!\\)<img|(?<!\\):red\[")  # an image, a tag, a directive as markup
MARKDOWN_KINDS = ("markdown", "caption", "info", "warning", "error", "success")


def markup_sources(at: AppTest) -> list[str]:
    """Everything on screen that Streamlit renders as Markdown: bodies, and the labels of expanders and widgets."""
    out = [e.value for kind in MARKDOWN_KINDS for e in at.get(kind)]
    out += [e.label for kind in ("expandable", "selectbox", "radio", "button", "text_input", "checkbox")
            for e in at.get(kind)]
    return out


@pytest.mark.slow
def test_markdown_and_html_in_the_provenance_are_shown_as_text(tmp_path, monkeypatch):
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))
    stats = stats_of(0)
    stats.model = EVIL
    path = write_bundle(tmp_path / "evil", stats, prov(model=EVIL, weights=EVIL, images=EVIL, command=EVIL,
                                                       created=EVIL, weights_digest=EVIL))
    at = app_with_bundle(path)
    assert not at.error, [e.value for e in at.error]
    assert any(EVIL in t.value for t in at.text)  # the provenance, as typed, in a plain-text element
    pages = ["compare", "depth", "export"]
    for page in [None, *pages]:
        if page is not None:
            open_page(at, page)
        for source in markup_sources(at):
            assert not UNESCAPED.search(source), (page, source)
    assert any("evil" in c.value for c in at.caption)  # Export's provenance line is there, escaped
    # Export's figures carry the provenance under the plot: as text, not tags plotly would render.
    import html

    from ui import exports

    assert "<img" not in html.escape(exports.Provenance(EVIL, EVIL, EVIL, "-").text)


@pytest.mark.slow
def test_an_empty_bundle_gives_a_clear_message_when_it_is_opened(tmp_path, monkeypatch):
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))
    empty = write_bundle(tmp_path / "empty", GateStats.for_blocks("toy", BLOCKS, CLASSES), prov())
    with pytest.raises(BundleError, match="hold no images"):
        read_bundle(empty)
    at = app_with_bundle(empty)
    assert any("hold no images" in e.value for e in at.error), [e.value for e in at.error]
    open_page_ok = at.switch_page("app_pages/compare.py").run()
    assert not open_page_ok.exception  # the page asks for an analysis instead of failing on a missing column
    only_json = tmp_path / "partial.senetviz.zip"
    only_json.write_bytes(zip_of({"bundle.json": json.dumps(prov()).encode()}))
    at = app_with_bundle(only_json)
    assert any("it has no stats" in e.value for e in at.error), [e.value for e in at.error]


@pytest.mark.slow
def test_a_bundle_path_outside_the_roots_gets_one_message_whether_it_exists_or_not(tmp_path, monkeypatch):
    roots, outside = tmp_path / "roots", tmp_path / "outside"
    roots.mkdir()
    outside.mkdir()
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(roots))
    present = write_bundle(outside / "present", stats_of(0), prov())
    (roots / "link.senetviz.zip").symlink_to(present)  # inside by name, outside once followed
    expected = plain(outside_roots_message("analysis file"), None)
    seen = {}
    for case, path in {"present": present, "missing": outside / "missing.senetviz.zip",
                       "symlink": roots / "link.senetviz.zip", "system": "/etc/passwd"}.items():
        at = app_with_bundle(path)
        seen[case] = [e.value for e in at.error]
    assert all(errors == [expected] for errors in seen.values()), seen
    inside = write_bundle(roots / "inside", stats_of(0), prov())
    at = app_with_bundle(inside)  # inside the roots it opens
    assert not at.error and any("/data/x" in t.value for t in at.text)


def upload_bundle(data: bytes) -> AppTest:
    at = app_session(work_from="An analysis file", timeout=TIMEOUT)
    (widget,) = [u for u in at.get("file_uploader") if str(u.key).startswith("bundle_upload_")]
    widget.set_value([("run.senetviz.zip", data, "application/zip")])
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.mark.slow
def test_an_uploaded_bundle_counts_against_the_session_budget(tmp_path, monkeypatch):
    data = write_bundle(tmp_path / "up", stats_of(0), prov()).read_bytes()
    at = upload_bundle(data)
    assert not at.error and any("/data/x" in t.value for t in at.text)  # opened
    monkeypatch.setenv("SENET_VIZ_SESSION_MB", str(len(data) / 2 / 2**20))
    at = upload_bundle(data)
    assert any(e.value.startswith(r"run\.senetviz\.zip was not added: it needs") for e in at.error), at.error
    assert not at.text  # nothing opened


def test_the_menu_label_counts_from_the_statistics_not_from_bundle_json(tmp_path):
    path = write_bundle(tmp_path / "claims", stats_of(0), prov(n_images=50_000, n_classes=1_000))
    assert read_bundle(path).label == "toy · 60 images in 3 classes"


def test_page_headers_that_disagree_with_the_footer_are_refused_before_decoding(tmp_path):
    """The footer-based bounds hold only if the pages declare what the footer says: a page header claiming more
    bytes than its footer counts (same byte length, so every offset stays valid) is refused."""
    from senet_viz.data.parquet_pages import PageMismatch, _varint, page_header

    genuine = tmp_path / "stats.parquet"
    stats_of(0).save(genuine)
    column = pq.ParquetFile(genuine).metadata.row_group(0).column(6)  # mean: dictionary page, then data pages
    data = bytearray(genuine.read_bytes())
    with genuine.open("rb") as f:
        header, _ = page_header(f, column.data_page_offset, len(data))
    assert header[1] == 0 and header[5][1] > 0  # a data page with its value count
    # Field 2 (uncompressed size) follows field 1 (page type): 0x15, zigzag varint, 0x15, zigzag varint.
    pos = column.data_page_offset
    assert data[pos] == 0x15
    _, pos = _varint(bytes(data), pos + 1)
    assert data[pos] == 0x15
    size, end = _varint(bytes(data), pos + 1)
    width = end - (pos + 1)
    larger = bytes([0xFE] * (width - 1) + [0x7E if width == 1 else 0x7F])  # the largest size of the same width
    assert width <= 2 and _varint(larger, 0)[0] > size
    data[pos + 1:end] = larger
    forged = tmp_path / "forged.parquet"
    forged.write_bytes(bytes(data))
    with pytest.raises(PageMismatch, match="pages of column mean.list.element .* declare"):
        GateStats.load(forged)
    bundle = zip_of({"bundle.json": json.dumps(prov()).encode(), "stats.parquet": bytes(data)})
    with pytest.raises(BundleError, match="damaged or forged"):
        read_bundle(bundle)


# ------------------------------------------------------------------------------------------ chance.csv (issue 20)


def chance_of(stats: GateStats, **text: str) -> pd.DataFrame:
    """A genuine chance table of ``stats``' blocks (built from random per-image gates), with ``text`` written over
    its text columns."""
    from senet_viz.analysis.chance import ChanceOptions, chance_table

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 10)
    gates = {b["name"]: rng.uniform(size=(len(labels), b["channels"])) for b in BLOCKS}
    table = chance_table(gates, labels, options=ChanceOptions(permutations=9, bootstrap=5))
    for column, value in text.items():
        table[column] = value
    return table


def test_a_forged_chance_table_is_cut_short_or_refused(tmp_path):
    stats = stats_of(0)
    long = EVIL + "x" * (1 << 20)  # a 1 MiB "reason": under the member limit, far over what a page should show
    bundle = read_bundle(write_bundle(tmp_path / "long", stats, prov(), chance=chance_of(stats, cannot_tell=long)))
    assert bundle.chance["cannot_tell"].str.len().max() == 200
    assert bundle.chance["cannot_tell"].iloc[0] == long[:200]
    # pages format every other column as a number: text where a number belongs is refused with the reason
    words = chance_of(stats, n_bootstrap="many", eta2_p=EVIL)
    with pytest.raises(BundleError, match="column 'n_bootstrap' holds values that are not numbers"):
        read_bundle(write_bundle(tmp_path / "words", stats, prov(), chance=words))
    with zipfile.ZipFile(write_bundle(tmp_path / "genuine", stats, prov())) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    big = zip_of({**members, "chance.csv": bytes(5 << 20)})  # over its 4 MiB member limit
    with pytest.raises(BundleError, match="chance.csv"):
        read_bundle(big)


@pytest.mark.slow
def test_markup_in_a_chance_table_is_shown_as_text_on_depth_and_compare(tmp_path, monkeypatch):
    monkeypatch.setenv("SENET_VIZ_DATA_ROOTS", str(tmp_path))
    stats = stats_of(0)
    path = write_bundle(tmp_path / "evil", stats, prov(), chance=chance_of(stats, cannot_tell=EVIL + "x" * 5000))
    at = app_with_bundle(path)
    for page in ("depth", "compare"):
        open_page(at, page)
        assert not at.exception, [e.message for e in at.exception]
        for source in markup_sources(at):
            assert not UNESCAPED.search(source), (page, source)
            assert "x" * 300 not in source, page  # the reason is cut short
