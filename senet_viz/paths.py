"""Where the project's files live: the repository root with its ``assets/``, and the per-user cache.

One place for both, so that the zoo (weights), the embedded model (assets, Fashion-MNIST download) and the
dashboard agree. The cache root is read at call time, not import time, so ``$SENET_VIZ_CACHE`` set by a test or
a server's environment after import still counts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

#: The repository (the library is installed editable from it: ``assets/`` sits beside the package).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = PROJECT_ROOT / "assets"
#: Data shared between checkouts (``../shared``: the ImageNet samples, the MobileNetV3 .tflite), if present.
SHARED_DIR = PROJECT_ROOT.parent / "shared"
CACHE_ENV = "SENET_VIZ_CACHE"


def cache_dir() -> Path:
    """The per-user cache: ``$SENET_VIZ_CACHE``, else ``$XDG_CACHE_HOME/senet_viz``, else ``~/.cache/senet_viz``.

    Downloaded weights go to ``<cache>/weights``, a downloaded Fashion-MNIST to ``<cache>/fashion-mnist``.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "senet_viz"


class OutsideRootsError(ValueError):
    """A typed path resolves (after following symlinks) outside the allowed roots. The message is the same
    whether or not the path exists, so that it reveals nothing about the server's files."""


def resolve_inside(text: str | Path, roots: Sequence[Path], what: str = "path") -> Path:
    """``text`` resolved (``~`` expanded, symlinks followed, ``..`` removed) when it lies inside one of ``roots``
    (each resolved too); else :class:`OutsideRootsError`. Existence is not checked, so a missing and a present
    path outside the roots get the same answer; the caller reports a missing path inside the roots."""
    raw = str(text).strip()
    if not raw or "\x00" in raw:
        raise OutsideRootsError(outside_roots_message(what))
    try:
        path = Path(raw).expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop, a name too long: answered like any refused path
        raise OutsideRootsError(outside_roots_message(what)) from None
    for root in roots:
        try:
            base = Path(root).expanduser().resolve(strict=False)
        except (OSError, RuntimeError):
            continue
        if path == base or path.is_relative_to(base):
            return path
    raise OutsideRootsError(outside_roots_message(what))


def outside_roots_message(what: str = "path") -> str:
    """The one answer for a typed path the server does not serve (missing or present alike)."""
    return (f"This {what} is not available: paths on this server must lie inside the folders its operator "
            "opened to the app (SENET_VIZ_DATA_ROOTS). Upload the file instead, or ask the operator to add its "
            "folder.")


def file_stamp(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """(absolute path, size, modification time in ns) of a file or folder: a cache key that changes when the file
    is edited or replaced. Raises ``OSError`` when it cannot be stat'ed."""
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns
