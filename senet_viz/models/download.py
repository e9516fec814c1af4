"""Where a zoo model's weights come from: files here, the timm / torchvision hub cache, or a hub download.

In this order (what :func:`senet_viz.models.zoo.load_model` follows when no weights file is given):

1. a file named after the model (:func:`file_stem`) in ``$SENET_VIZ_WEIGHTS_DIR``, the project's ``assets/`` or
   the download folder (:func:`download_dir`), or one of the spec's known files (:func:`local_weights_file`);
2. the timm / torchvision hub cache (:func:`hub_cached_file`): loads offline;
3. the hub itself (:func:`load_from_hub`), only when it may download and the hub answers within
   ``HUB_TIMEOUT_S``; offline this fails within seconds with a message that names the file options.

:func:`weights_status` tells which applies right now, cheaply enough for every dashboard rerun;
:func:`download_weights` fetches a file into the download folder with progress and a disk budget (the dashboard's
button), :func:`download_size` asks its size first.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from senet_viz.models.registry import REGISTRY, ModelSpec, get_spec, tv_weights
from senet_viz.models.weights import WEIGHT_SUFFIXES, WeightsError, file_digest, load_weights_into
from senet_viz.paths import ASSETS_DIR, PROJECT_ROOT, cache_dir, file_stamp

WEIGHTS_DIR_ENV = "SENET_VIZ_WEIGHTS_DIR"
HUB_TIMEOUT_S = 3.0


class WeightsUnavailableError(WeightsError):
    """No local weights and the hub cannot be reached."""


class DownloadNeededError(WeightsUnavailableError):
    """The weights are on the hub only and this load may not download them (``load_model(download=False)``)."""


class DownloadBudgetError(WeightsUnavailableError):
    """A download that would take the download folder over its disk budget (``download_weights(max_bytes=)``)."""


# ------------------------------------------------------------------------------------- files here


def _weights_dirs() -> list[Path]:
    env = [Path(d) for d in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if d]
    return [*env, ASSETS_DIR, download_dir()]


def local_weights_file(name: str) -> Path | None:
    """A weights file named after the model in $SENET_VIZ_WEIGHTS_DIR, assets/ or the download folder, or one of
    the spec's known files (e.g. the shared .tflite of MobileNetV3-Small), if there is one."""
    for folder in _weights_dirs():
        for suffix in WEIGHT_SUFFIXES:
            candidate = folder / f"{file_stem(name)}{suffix}"
            if candidate.is_file():
                return candidate
    spec = REGISTRY.get(name)
    for known in spec.known_files if spec else ():
        candidate = (PROJECT_ROOT / known).resolve()
        if candidate.is_file():
            return candidate
    return None


def file_stem(name: str) -> str:
    """The stem of a model's weights file: its name, with the ``:`` of ``timm:`` / ``torchvision:`` names (and
    path separators) written ``_`` (``torchvision:regnet_y_16gf`` -> ``torchvision_regnet_y_16gf.safetensors``)."""
    return re.sub(r"[:/\\]", "_", name)


def download_dir() -> Path:
    """Where :func:`download_weights` keeps files: ``<cache>/weights`` (see :func:`senet_viz.paths.cache_dir`)."""
    return cache_dir() / "weights"


def download_dir_bytes() -> int:
    """Bytes the files in :func:`download_dir` take (0 when it does not exist)."""
    try:
        return sum(e.stat().st_size for e in os.scandir(download_dir()) if e.is_file(follow_symlinks=False))
    except OSError:
        return 0


# ------------------------------------------------------------------------------------- the hub


def weights_url(name: str) -> str:
    """The download address of a zoo model's pretrained weights (torchvision's URL, or the timm hub file)."""
    spec = get_spec(name)
    if spec.source == "torchvision":
        return tv_weights(spec).url
    if spec.source != "timm":
        raise WeightsUnavailableError(f"{name} has no hub weights; it ships in assets/ or trains with `train`")
    import timm.models
    from huggingface_hub import hf_hub_url

    cfg = timm.models.get_pretrained_cfg(spec.arch)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        return hf_hub_url(hub_id, "model.safetensors")
    if getattr(cfg, "url", None):  # older timm weights (e.g. the legacy SENets) are a .pth release file
        return cfg.url
    raise WeightsUnavailableError(f"timm has no hub weights for {spec.arch}")


def hub_url(spec: ModelSpec) -> str:
    """The address whose host must answer for a hub download of ``spec`` (torchvision's file, or the timm hub)."""
    if spec.source == "torchvision":
        return tv_weights(spec).url
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_cached_file(spec: ModelSpec) -> Path | None:
    """The weights of ``spec`` in the torchvision / Hugging Face hub cache, if they are there."""
    if spec.source == "senet_viz":
        return None
    if spec.source == "torchvision":
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(tv_weights(spec).url).path).name
        return path if path.is_file() else None
    import timm.models
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(spec.arch)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_reachable(url: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """None if a TCP connection to the URL's host opens within ``timeout`` s, else the reason it did not."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parsed.hostname}:{port} unreachable ({exc.__class__.__name__}: {exc})"


def load_from_hub(spec: ModelSpec, model: nn.Module, download: bool = True) -> tuple[str, str]:
    """Load the hub weights of ``spec`` into ``model``: from the hub cache, else downloaded (when ``download`` and
    the hub answers). Returns (where they came from, for people; their ``weights_id``)."""
    if spec.source == "senet_viz":
        raise WeightsUnavailableError(
            f"no weights for '{spec.name}': the project's own model ships as assets/{spec.name}.safetensors, which "
            f"is missing. Restore it (git checkout assets/), pass --weights FILE, or retrain it with "
            f"`python -m senet_viz train` (see assets/{spec.name}.md).")
    cached = hub_cached_file(spec)
    if cached is not None:
        if spec.source == "timm":
            # timm's own loader applies the model's key filter; the file is local, so nothing is fetched.
            import timm

            hub_model = timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
            model.load_state_dict(hub_model.state_dict())
        else:
            load_weights_into(model, cached)
        return f"hub cache ({cached})", file_digest(cached)
    if not download:  # load_model checks this before building; kept here so no path fetches by itself
        raise DownloadNeededError(f"the weights of {spec.name} are on the hub only; this load may not download them")
    why = _hub_reachable(hub_url(spec))
    if why is not None:
        raise WeightsUnavailableError(
            f"no weights for '{spec.name}': none given, none in ${WEIGHTS_DIR_ENV} or assets/, not in the hub cache, "
            f"and the model hub cannot be reached ({why}). Pass a local file with --weights FILE "
            f"(.safetensors/.pth/.tflite), or put it at ${WEIGHTS_DIR_ENV}/{spec.name}.safetensors."
        )
    if spec.source == "timm":
        import timm

        hub_model = timm.create_model(spec.arch, pretrained=True)
        model.load_state_dict(hub_model.state_dict())
    else:
        model.load_state_dict(tv_weights(spec).get_state_dict(progress=True, weights_only=True))
    forget_weights_status()
    cached = hub_cached_file(spec)
    return "hub download", file_digest(cached) if cached else "hub"


# ------------------------------------------------------------------------------------- downloads


def mib_text(n: int) -> str:
    """``n`` bytes for people: ``12 MiB``, ``3.5 KiB``."""
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def _budget_error(name: str, size: int, used: int, max_bytes: int) -> DownloadBudgetError:
    return DownloadBudgetError(
        f"not downloading the weights of {name} ({mib_text(size)}): the download folder {download_dir()} holds "
        f"{mib_text(used)} and may hold {mib_text(max_bytes)} (SENET_VIZ_DOWNLOAD_MB on a served app). Remove files "
        "from it, raise the budget, or give a weights file instead.")


_SIZES: dict[str, tuple[float, int | None]] = {}  # url -> (when asked, size): the app asks on every rerun
_SIZE_TTL_S = 60.0


class _KeepHead(urllib.request.HTTPRedirectHandler):
    """Follows a redirect of a HEAD request with a HEAD request (urllib turns it into a GET)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        return None if new is None else urllib.request.Request(new.full_url, headers=dict(new.header_items()),
                                                               method="HEAD")


def download_size(name: str, url: str | None = None, timeout: float = HUB_TIMEOUT_S) -> int | None:
    """The size in bytes of ``name``'s weights file on the hub (a HEAD request, redirects followed; the hub's
    ``X-Linked-Size`` when it says it), or None when the hub does not say or cannot be reached. Remembered for a
    minute per address."""
    url = url or weights_url(name)
    known = _SIZES.get(url)
    if known is not None and time.monotonic() - known[0] < _SIZE_TTL_S:
        return known[1]
    size: int | None = None
    if _hub_reachable(url, timeout) is None:
        try:
            opener = urllib.request.build_opener(_KeepHead)
            with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
                raw = response.headers.get("X-Linked-Size") or response.headers.get("Content-Length")
                size = int(raw) if raw and raw.isdigit() else None
        except (urllib.error.URLError, OSError, ValueError):
            size = None
    _SIZES[url] = (time.monotonic(), size)
    return size


def download_weights(name: str, progress: Callable[[int, int], None] | None = None, url: str | None = None,
                     chunk: int = 1 << 20, max_bytes: int | None = None) -> Path:
    """Download a model's weights into :func:`download_dir` with ``progress(bytes done, bytes total)``.

    The file is written under a temporary ``.part`` name and renamed when complete, so an interrupted download
    never leaves a file that looks usable; a file whose name carries a sha256 prefix (torchvision's
    ``name-<hash>.pth``) is checked against it, as ``torch.hub`` does. Offline this fails within seconds with
    :class:`WeightsUnavailableError`. ``max_bytes``: the download folder's disk budget (the app's
    ``SENET_VIZ_DOWNLOAD_MB``; None for the CLI): a file that would take the folder over it is refused
    (:class:`DownloadBudgetError`) before its first byte when the server says its length, else as soon as it
    passes the budget.

    Not ``torch.hub.download_url_to_file``: it reports progress only to a tqdm bar and cannot stop at a budget.
    """
    url = url or weights_url(name)
    why = _hub_reachable(url)
    if why is not None:
        raise WeightsUnavailableError(f"cannot download the weights of {name}: {why}. Pass a local file instead "
                                      f"(--weights FILE or ${WEIGHTS_DIR_ENV}/{name}.safetensors).")
    filename = Path(urlparse(url).path).name
    dest = download_dir() / f"{file_stem(name)}{Path(filename).suffix or '.safetensors'}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    used = download_dir_bytes() - (dest.stat().st_size if dest.is_file() else 0)  # dest is replaced
    expected = torch.hub.HASH_REGEX.search(filename)
    sha256 = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f"{dest.name}.", suffix=".part", delete=False) as out:
        partial = Path(out.name)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            if max_bytes is not None and used + total > max_bytes:
                raise _budget_error(name, total, used, max_bytes)
            done = 0
            while block := response.read(chunk):
                done += len(block)
                if max_bytes is not None and used + done > max_bytes:  # no length, or a wrong one
                    raise _budget_error(name, done, used, max_bytes)
                out.write(block)
                sha256.update(block)
                if progress is not None:
                    progress(done, total)
        if expected and not sha256.hexdigest().startswith(expected.group(1)):
            raise WeightsUnavailableError(f"the download of {name} is damaged: its sha256 {sha256.hexdigest()} "
                                          f"does not start with {expected.group(1)} as {filename} says")
        partial.replace(dest)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsUnavailableError(f"downloading the weights of {name} failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    forget_weights_status()
    return dest


# ------------------------------------------------------------------------------------- status


class WeightsStatus(enum.StrEnum):
    """Where the weights of a model would come from right now (:func:`weights_status`).

    A ``StrEnum``: a member equals its value (``WeightsStatus.FILE == "file"``) and prints and serialises to JSON
    as it, so the command line's ``models`` listing is unchanged; :attr:`label` is the wording for people.
    """

    FILE = "file"  # a file here: $SENET_VIZ_WEIGHTS_DIR, assets/, the download folder or a known file
    HUB_CACHE = "hub cache"  # the timm / torchvision hub cache: loads offline
    HUB_ONLINE = "hub (online only)"  # to be downloaded from the hub: needs the internet (or a file)
    MISSING = "missing"  # the project's own model without its file: restore assets/ or retrain it

    @property
    def label(self) -> str:
        return {"file": "weights file on disk", "hub cache": "in the hub cache (loads offline)",
                "hub (online only)": "to download from the hub (online only)",
                "missing": "file missing: restore assets/ or retrain it"}[self.value]

    @property
    def ready(self) -> bool:
        """The model loads without the internet and without a file from the user."""
        return self in (WeightsStatus.FILE, WeightsStatus.HUB_CACHE)


_STATUS_CACHE: dict[str, tuple[tuple, WeightsStatus]] = {}


def _folder_stamp(path: Path) -> tuple[str, int, int] | None:
    try:
        return file_stamp(path)
    except OSError:
        return None


def _watched_dirs(spec: ModelSpec) -> list[Path]:
    """The folders whose listing decides the status of ``spec``: adding or removing a file in one changes the
    folder's modification time."""
    dirs = _weights_dirs() + [(PROJECT_ROOT / known).resolve().parent for known in spec.known_files]
    if spec.source == "torchvision":
        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    elif spec.source == "timm":
        from huggingface_hub import constants

        dirs.append(Path(constants.HF_HUB_CACHE))
        snapshots = _hf_snapshots_dir(spec.arch, constants.HF_HUB_CACHE)
        if snapshots is not None:
            dirs.append(snapshots)
            try:
                dirs += sorted(Path(e.path) for e in os.scandir(snapshots) if e.is_dir())
            except OSError:
                pass
    return dirs


@functools.lru_cache(maxsize=256)
def _hf_snapshots_dir(arch: str, hub_cache: str) -> Path | None:
    import timm.models

    hub_id = getattr(timm.models.get_pretrained_cfg(arch), "hf_hub_id", None)
    return Path(hub_cache) / f"models--{hub_id.replace('/', '--')}" / "snapshots" if hub_id else None


def weights_status(name: str) -> WeightsStatus:
    """Where the weights of ``name`` would come from right now (see :class:`WeightsStatus`).

    Computed once per model and process, and again only when a folder it depends on (the weights folders, the
    hub caches) gained or lost a file, which a few ``stat`` calls tell: the dashboard asks on every rerun.
    :func:`forget_weights_status` drops what is known (downloads through this module call it).
    """
    spec = get_spec(name)
    signature = tuple((str(d), _folder_stamp(d)) for d in _watched_dirs(spec))
    known = _STATUS_CACHE.get(name)
    if known is not None and known[0] == signature:
        return known[1]
    if local_weights_file(name):
        status = WeightsStatus.FILE
    elif spec.source == "senet_viz":
        status = WeightsStatus.MISSING
    else:
        status = WeightsStatus.HUB_CACHE if hub_cached_file(spec) else WeightsStatus.HUB_ONLINE
    _STATUS_CACHE[name] = (signature, status)
    return status


def forget_weights_status() -> None:
    """Drop the statuses :func:`weights_status` remembers (after this process fetched weights)."""
    _STATUS_CACHE.clear()
