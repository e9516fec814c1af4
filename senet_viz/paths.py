"""Where the project's files live: the repository root with its ``assets/``, and the per-user cache.

One place for both, so that the zoo (weights), the embedded model (assets, Fashion-MNIST download) and the
dashboard agree. The cache root is read at call time, not import time, so ``$SENET_VIZ_CACHE`` set by a test or
a server's environment after import still counts.
"""

from __future__ import annotations

import os
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
