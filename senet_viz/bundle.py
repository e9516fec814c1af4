"""Analysis bundles: gate statistics plus what they were computed from, in one file the app opens alone.

A bundle is a zip archive (``.senetviz.zip``) holding

- ``bundle.json``: the provenance — model, weights (source and sha256 digest), image source and counts (images,
  classes, skipped), the command line that made it, the library versions, the time;
- ``stats.parquet``: the :class:`~senet_viz.stats.GateStats` as :meth:`GateStats.save` writes it (mergeable:
  bundles of shards merge exactly, see :func:`merge_bundles`);
- ``indices.csv``: the per-block indices, for a reader without senet-viz;
- optionally ``metrics.json``: accuracy or ablation results of the same run.

Reading is safe on untrusted files: only these member names are read, each with a size limit, and the statistics
load from Parquet (no pickle). Memory is that of the statistics, independent of the number of images.
"""

from __future__ import annotations

import io
import json
import platform
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import GateStats

FORMAT = "senet-viz-bundle"
VERSION = 1
SUFFIX = ".senetviz.zip"
MAX_MEMBER_BYTES = {"bundle.json": 1 << 20, "metrics.json": 64 << 20, "indices.csv": 16 << 20,
                    "stats.parquet": 4 << 30}


class BundleError(ValueError):
    """A file that is not a readable senet-viz bundle; the message says what is wrong."""


@dataclass
class Bundle:
    """Statistics and where they come from."""

    stats: GateStats
    provenance: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.provenance.get("model") or self.stats.model)

    @property
    def label(self) -> str:
        """One line for menus and captions: model, images, classes."""
        p = self.provenance
        return (f"{self.model} · {p.get('n_images', '?'):,} images in {p.get('n_classes', '?'):,} classes"
                if isinstance(p.get("n_images"), int) and isinstance(p.get("n_classes"), int)
                else f"{self.model} · {p.get('images', 'images not recorded')}")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in ("senet-viz", "torch", "torchvision", "timm", "numpy", "pandas", "pyarrow"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package == "senet-viz":
                from . import __version__

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


def write_bundle(path: str | Path, stats: GateStats, prov: dict[str, Any], metrics: dict[str, Any] | None = None
                 ) -> Path:
    """Write a bundle to ``path`` (``.senetviz.zip`` is appended when the name has no ``.zip``)."""
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
        part.replace(out)  # a reader never sees half a bundle
    return out


def _member(zf: zipfile.ZipFile, name: str, required: bool = True) -> bytes | None:
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
    with zf.open(info) as f:
        data = f.read(MAX_MEMBER_BYTES[name] + 1)
    if len(data) > MAX_MEMBER_BYTES[name]:  # the header lied about the size
        raise BundleError(f"{name} in the bundle expands past its {MAX_MEMBER_BYTES[name] / 2**20:,.0f} MiB limit")
    return data


def read_bundle(source: str | Path | bytes) -> Bundle:
    """Open a bundle from a path or from the bytes of an upload; raises :class:`BundleError` with the reason."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes | bytearray) else Path(source))
    except FileNotFoundError:
        raise BundleError(f"bundle not found: {source}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"not a senet-viz bundle (not a zip archive: {exc})") from None
    with zf:
        try:
            prov = json.loads(_member(zf, "bundle.json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"bundle.json is not valid JSON: {exc}") from None
        if not isinstance(prov, dict) or prov.get("format") != FORMAT:
            raise BundleError("bundle.json does not describe a senet-viz bundle (format field missing or wrong)")
        if int(prov.get("version", 0)) > VERSION:
            raise BundleError(f"bundle version {prov.get('version')} is newer than this senet-viz reads ({VERSION}); "
                              "update senet-viz")
        stats_bytes = _member(zf, "stats.parquet")
        metrics_bytes = _member(zf, "metrics.json", required=False)
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.parquet"
        stats_path.write_bytes(stats_bytes)
        try:
            stats = GateStats.load(stats_path)
        except Exception as exc:  # a damaged or foreign Parquet file: say so, never a traceback
            raise BundleError(f"the statistics in the bundle cannot be read: {exc.__class__.__name__}: {exc}") from None
    metrics = json.loads(metrics_bytes) if metrics_bytes else {}
    return Bundle(stats, prov, metrics)


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
    return Bundle(stats, prov, {})
