"""Analysis bundles: gate statistics plus what they were computed from, in one file the app opens alone.

A bundle is a zip archive (``.senetviz.zip``) holding

- ``bundle.json``: the provenance — model, weights (source and sha256 digest), image source and counts (images,
  classes, skipped), the command line that made it, the library versions, the time;
- ``stats.parquet``: the :class:`~senet_viz.analysis.stats.GateStats` as :meth:`GateStats.save` writes it (mergeable:
  bundles of shards merge exactly, see :func:`merge_bundles`);
- ``indices.csv``: the per-block indices, for a reader without senet-viz;
- optionally ``metrics.json``: accuracy or ablation results of the same run;
- optionally ``chance.csv``: the chance levels, permutation p values and bootstrap intervals of every per-block
  index (:func:`senet_viz.analysis.chance.chance_table`); a bundle without it opens with chance unknown.

Reading is safe on untrusted files: only these member names are read, each streamed with a size limit (a member
that expands past it is refused as soon as it does), and the statistics load from Parquet (no pickle) after their
declared shapes were checked against the Parquet footer and the memory they would take against ``max_bytes``
(:meth:`GateStats.load`). Memory is that of the statistics, independent of the number of images.
"""

from __future__ import annotations

import io
import json
import platform
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from senet_viz.analysis.stats import GateStats
from senet_viz.analysis.stats_io import StatsTooLarge

FORMAT = "senet-viz-bundle"
VERSION = 1
SUFFIX = ".senetviz.zip"
#: Size limits of the members read. stats.parquet: the largest real bundle, SE-ResNet-50's 16 blocks (15,104 gates)
#: over 1,000 classes, weighs 225 MiB (245 MiB with 64 classes' per-channel histograms kept); 512 MiB is twice that.
#: The JSON members hold kilobytes (provenance; accuracy or ablation results): 1 MiB each, since parsed JSON takes
#: up to tens of times its text in Python objects. indices.csv is written for other readers and never read here.
MAX_MEMBER_BYTES = {"bundle.json": 1 << 20, "metrics.json": 1 << 20, "indices.csv": 16 << 20,
                    "stats.parquet": 512 << 20, "chance.csv": 4 << 20}
#: Memory the statistics of one bundle may take once read (a reader may ask for less: the app uses its budget).
MAX_STATS_BYTES = 2 << 30
MAX_MEMBERS = 64  # a bundle has three to five
MAX_CHANCE_ROWS = 10_000  # one row per SE block
MAX_CHANCE_TEXT = 200  # characters kept of a block name or a "cannot tell" reason read from chance.csv
#: A member may expand to at most this many times its compressed size (plus 1 MiB): stats.parquet is compressed
#: already (written stored; zipped again with deflate it gains little), so a bomb is refused after a few MiB.
MAX_EXPANSION = 16
_CHUNK = 1 << 20


class BundleError(ValueError):
    """A file that is not a readable senet-viz bundle; the message says what is wrong."""


@dataclass
class Bundle:
    """Statistics and where they come from."""

    stats: GateStats
    provenance: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    #: the chance table (one row per block) when the bundle holds one; None: chance unknown (an older bundle)
    chance: pd.DataFrame | None = field(default=None, compare=False)
    #: sha256 of the file it was read from, when the reader knows it (the app's caches are keyed by it: never by
    #: bundle.json, which a doctored file can copy from a genuine one); "" otherwise.
    digest: str = field(default="", compare=False)

    @property
    def model(self) -> str:
        return str(self.provenance.get("model") or self.stats.model)

    @property
    def label(self) -> str:
        """One line for menus and captions: model, images, classes. The counts are the statistics' own, not what
        bundle.json claims (a doctored bundle.json cannot make a menu say "50,000 images" over 60)."""
        n, k = self.stats.n_images(), len(self.stats.classes())
        return f"{self.model} · {n:,} images in {k:,} class{'es' if k != 1 else ''}"


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in ("senet-viz", "torch", "torchvision", "timm", "numpy", "pandas", "pyarrow"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package == "senet-viz":
                from senet_viz import __version__
                out[package] = __version__
    return out


def _command_line() -> list[str]:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("senet_viz/__main__.py", "senet_viz\\__main__.py")):
        argv[0:1] = ["python", "-m", "senet_viz"]  # as the user typed it, not the module's path
    return argv


def provenance(*, model: str, weights: str, weights_digest: str, images: str, n_images: int, n_classes: int,
               n_skipped: int = 0, command: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record of a bundle (``extra`` keys are kept as given, e.g. ``per_class``, ``world_size``)."""
    return {"format": FORMAT, "version": VERSION, "model": model, "weights": weights,
            "weights_digest": weights_digest, "images": images, "n_images": int(n_images),
            "n_classes": int(n_classes), "n_skipped": int(n_skipped),
            "command": " ".join(command if command is not None else _command_line()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions(), **extra}


def write_bundle(path: str | Path, stats: GateStats, prov: dict[str, Any], metrics: dict[str, Any] | None = None,
                 chance: pd.DataFrame | None = None) -> Path:
    """Write a bundle to ``path`` (``.senetviz.zip`` is appended when the name has no ``.zip``); ``chance``: the
    chance table of the same images, kept as ``chance.csv``."""
    out = Path(path)
    if not out.name.endswith(".zip"):
        out = out.with_name(out.name + SUFFIX)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.parquet"
        stats.save(stats_path)
        part = out.with_name(out.name + ".part")
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED) as zf:  # parquet is already compressed
            zf.writestr("bundle.json", json.dumps(prov, indent=2, default=str))
            zf.write(stats_path, "stats.parquet")
            zf.writestr("indices.csv", stats.indices().to_csv(index=False))
            if metrics:
                zf.writestr("metrics.json", json.dumps(metrics, indent=2, default=str))
            if chance is not None:
                zf.writestr("chance.csv", chance.to_csv(index=False))
        part.replace(out)  # a reader never sees half a bundle
    return out


def _info(zf: zipfile.ZipFile, name: str, required: bool) -> zipfile.ZipInfo | None:
    try:
        info = zf.getinfo(name)
    except KeyError:
        if required:
            raise BundleError(f"not a senet-viz bundle: it has no {name} (write one with `python -m senet_viz "
                              "paper ... --out DIR` or `stats ... --bundle FILE`)") from None
        return None
    if info.file_size > MAX_MEMBER_BYTES[name]:
        raise BundleError(f"{name} in the bundle is {info.file_size / 2**20:,.0f} MiB, over the "
                          f"{MAX_MEMBER_BYTES[name] / 2**20:,.0f} MiB limit")
    return info


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: io.RawIOBase | io.BufferedIOBase) -> None:
    """Stream a member to ``out`` in chunks, refusing it as soon as it expands past its limit or past
    :data:`MAX_EXPANSION` times its compressed size (whatever its header says): never more is held or written."""
    limit, written = MAX_MEMBER_BYTES[info.filename], 0
    ratio_limit = MAX_EXPANSION * info.compress_size + _CHUNK  # zipfile reads at most compress_size bytes of it
    try:
        with zf.open(info) as f:
            while chunk := f.read(min(_CHUNK, limit + 1 - written)):
                written += len(chunk)
                if written > limit:  # the header lied about the size
                    raise BundleError(f"{info.filename} in the bundle expands past its {limit / 2**20:,.0f} MiB "
                                      "limit")
                if written > ratio_limit:
                    raise BundleError(f"{info.filename} in the bundle expands to more than {MAX_EXPANSION} times "
                                      "its compressed size: a compression bomb, not a bundle")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise BundleError(f"{info.filename} in the bundle cannot be read: {exc}") from None


def _member(zf: zipfile.ZipFile, name: str, required: bool = True) -> bytes | None:
    info = _info(zf, name, required)
    if info is None:
        return None
    buffer = io.BytesIO()
    _copy_member(zf, info, buffer)
    return buffer.getvalue()


def _json_member(zf: zipfile.ZipFile, name: str, required: bool = True) -> Any:
    data = _member(zf, name, required)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{name} is not valid JSON: {exc}") from None


def _chance_member(zf: zipfile.ZipFile) -> pd.DataFrame | None:
    """``chance.csv`` as a frame (None when the bundle has none); a damaged one is refused with the reason."""
    data = _member(zf, "chance.csv", required=False)
    if data is None:
        return None
    try:
        frame = pd.read_csv(io.BytesIO(data), nrows=MAX_CHANCE_ROWS + 1, keep_default_na=True)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise BundleError(f"chance.csv in the bundle cannot be read: {exc}") from None
    if "block" not in frame.columns or len(frame) > MAX_CHANCE_ROWS:
        raise BundleError("chance.csv in the bundle is not a chance table (no block column, or more rows than "
                          f"{MAX_CHANCE_ROWS:,} blocks)")
    # A stranger's file: the two text columns are cut short (pages show them), every other column must be numbers
    # (pages format them as numbers) or the "above chance" flags.
    frame["block"] = [str(v)[:MAX_CHANCE_TEXT] for v in frame["block"]]
    if "cannot_tell" in frame.columns:
        frame["cannot_tell"] = ["" if pd.isna(v) else str(v)[:MAX_CHANCE_TEXT] for v in frame["cannot_tell"]]
    for column in frame.columns:
        if column in ("block", "cannot_tell"):
            continue
        if str(column).endswith("_above_chance"):
            frame[column] = frame[column].astype(str).str.lower().eq("true")
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        if numbers.isna().sum() > frame[column].isna().sum():
            raise BundleError(f"chance.csv in the bundle is not a chance table: column {str(column)[:40]!r} holds "
                              "values that are not numbers")
        frame[column] = numbers
    return frame


def read_bundle(source: str | Path | bytes, max_bytes: int | None = MAX_STATS_BYTES) -> Bundle:
    """Open a bundle from a path or from the bytes of an upload; raises :class:`BundleError` with the reason.

    ``max_bytes``: the memory its statistics may take once read, checked from the file's metadata before any is
    allocated (``None``: no bound)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes | bytearray) else Path(source))
    except FileNotFoundError:
        raise BundleError(f"bundle not found: {source}") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"not a senet-viz bundle (not a zip archive: {exc})") from None
    with zf, tempfile.TemporaryDirectory() as tmp:  # a private (0700) folder, removed at once
        if len(zf.infolist()) > MAX_MEMBERS:
            raise BundleError(f"not a senet-viz bundle: {len(zf.infolist()):,} members (a bundle has 3 to 5)")
        prov = _json_member(zf, "bundle.json")
        if not isinstance(prov, dict) or prov.get("format") != FORMAT:
            raise BundleError("bundle.json does not describe a senet-viz bundle (format field missing or wrong)")
        version = prov.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError(f"bundle.json has version {version!r}, not a number")
        if version > VERSION:
            raise BundleError(f"bundle version {version} is newer than this senet-viz reads ({VERSION}); "
                              "update senet-viz")
        info = _info(zf, "stats.parquet", required=True)
        stats_path = Path(tmp) / "stats.parquet"
        with stats_path.open("wb") as out:
            _copy_member(zf, info, out)
        metrics = _json_member(zf, "metrics.json", required=False)
        chance = _chance_member(zf)
        try:
            stats = GateStats.load(stats_path, max_bytes=max_bytes)
        except StatsTooLarge as exc:
            raise BundleError(f"the statistics in the bundle are refused: {exc}") from None
        except Exception as exc:  # a damaged or foreign Parquet file: say so, never a traceback
            raise BundleError(f"the statistics in the bundle cannot be read: {exc.__class__.__name__}: {exc}") from None
    if stats.n_images() == 0:
        raise BundleError("the statistics in the bundle hold no images (every block is empty): write the bundle "
                          "again from a run over images")
    if not isinstance(metrics, dict):
        metrics = {}
    return Bundle(stats, prov, metrics, chance=chance)


def merge_bundles(bundles: list[Bundle]) -> Bundle:
    """One bundle from bundles of disjoint shards of the same model and classes (statistics merged exactly)."""
    if not bundles:
        raise BundleError("no bundle to merge")
    first = bundles[0]
    stats = first.stats
    for other in bundles[1:]:
        if other.model != first.model:
            raise BundleError(f"cannot merge bundles of different models: {first.model} and {other.model}")
        stats = stats.merge(other.stats)
    prov = dict(first.provenance)
    for key in ("n_images", "n_skipped"):
        prov[key] = sum(int(b.provenance.get(key, 0)) for b in bundles)
    prov["merged_from"] = len(bundles)
    return Bundle(stats, prov, {})  # chance tables of shards do not merge: chance unknown until computed again
