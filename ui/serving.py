"""What the operator of a served app allows a browser user, read from the server's environment.

A browser user is a stranger (the app may be served to a class or a lab): nothing they send runs code, reaches
files outside the operator's roots, or takes more memory than a stated budget. Everything that loosens this is an
opt-in environment variable of the server, documented in the README's "Serving it to others":

- ``SENET_VIZ_ALLOW_CODE=1``: formats that carry code (Python entry points, TorchScript, ``.pt2`` with pickles)
  load from the browser. Off by default; ONNX, safetensors, TFLite and ``weights_only`` state dicts are open.
- ``SENET_VIZ_DATA_ROOTS``: more folders (``os.pathsep``-separated) that typed server paths may name, besides the
  folder the server was started in and the sample folders the app itself offers (:func:`data_roots`).
- Byte budgets (MiB): ``SENET_VIZ_SESSION_MB`` per session for uploads (expanded zips included),
  ``SENET_VIZ_UPLOADS_MB`` for all sessions' uploads together,
  ``SENET_VIZ_RESULTS_MB``, ``SENET_VIZ_BUNDLES_MB``, ``SENET_VIZ_PIXELS_MB``, ``SENET_VIZ_MODELS_MB`` per server
  for its caches, ``SENET_VIZ_DOWNLOAD_MB`` of disk for weights downloaded from a hub and
  ``SENET_VIZ_UPLOAD_DISK_MB`` for uploaded weights and model files (:func:`budget_bytes`).

This module only reads settings and resolves paths; it imports no torch and no model code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from senet_viz.paths import ASSETS_DIR, SHARED_DIR, resolve_inside

__all__ = ["ALLOW_CODE_ENV", "BUDGETS_MB", "DATA_ROOTS_ENV", "allow_code", "budget_bytes", "data_roots",
           "server_path"]

_log = logging.getLogger(__name__)

ALLOW_CODE_ENV = "SENET_VIZ_ALLOW_CODE"
DATA_ROOTS_ENV = "SENET_VIZ_DATA_ROOTS"
#: The folder the server was started in (read once, at import: a later chdir does not widen the roots).
START_DIR = Path.cwd().resolve()
_TOO_WIDE = {Path("/"), Path.home().resolve()}
#: Sample folders the app itself offers: the embedded model's samples (in assets/), the shared ImageNet samples.
APP_SAMPLE_DIRS = (ASSETS_DIR, SHARED_DIR / "data")

#: Default byte budgets in MiB, by environment variable.
BUDGETS_MB: dict[str, int] = {
    "SENET_VIZ_SESSION_MB": 512,  # one session's uploads: files kept plus what its zips expand to
    "SENET_VIZ_UPLOADS_MB": 1536,  # all sessions' uploads together (a closed tab counts until Streamlit drops it)
    "SENET_VIZ_RESULTS_MB": 2048,  # the server's shared results (network passes, statistics, ablations, ...)
    "SENET_VIZ_BUNDLES_MB": 1024,  # opened analysis bundles and their analyses
    "SENET_VIZ_PIXELS_MB": 256,  # model-ready pixels shared by a request's passes
    "SENET_VIZ_MODELS_MB": 4096,  # loaded models (parameters and buffers)
    "SENET_VIZ_DOWNLOAD_MB": 10240,  # disk for weights downloaded from a hub
    "SENET_VIZ_UPLOAD_DISK_MB": 2048,  # disk for uploaded weights and model files (least recently used dropped)
}


def allow_code() -> bool:
    """Whether the operator allows formats that carry code from the browser (``SENET_VIZ_ALLOW_CODE=1``)."""
    return os.environ.get(ALLOW_CODE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def data_roots(env: Mapping[str, str] | None = None) -> list[Path]:
    """The folders typed server paths may lie in: the start folder, the app's sample folders, and
    ``$SENET_VIZ_DATA_ROOTS`` (``os.pathsep``-separated; empty entries ignored)."""
    env = os.environ if env is None else env
    # A server started in / or in a home folder (a container's WORKDIR /, a shell's ~) would open everything: the
    # start folder counts only when it is neither; the operator can still name such a folder explicitly.
    start = [] if START_DIR in _TOO_WIDE else [START_DIR]
    roots = [*start, *APP_SAMPLE_DIRS]
    roots += [Path(p).expanduser() for p in env.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return roots


def server_path(text: str | Path, what: str = "path") -> Path:
    """A typed server path, resolved inside :func:`data_roots`; :class:`OutsideRootsError` (one message, whether
    the path exists or not) otherwise."""
    return resolve_inside(text, data_roots(), what)


def budget_bytes(name: str, env: Mapping[str, str] | None = None) -> int:
    """The byte budget ``name`` (a key of :data:`BUDGETS_MB`) sets, from the environment in MiB; a malformed or
    non-positive value falls back to the default with a logged warning."""
    env = os.environ if env is None else env
    default = BUDGETS_MB[name]
    raw = env.get(name, "").strip()
    if not raw:
        return default << 20
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        _log.warning("%s=%r is not a positive number of MiB; using %d", name, raw, default)
        return default << 20
    return int(value * (1 << 20))
