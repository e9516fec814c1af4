"""``python -m ui.serve [streamlit options]``: ``streamlit run app.py`` (what ``make run`` starts), with the app's
imports made while the server starts instead of in the first visitor's script run.

Streamlit runs nothing of the app before a browser connects, so on a plain ``streamlit run app.py`` the first page
waits for torch, timm, pandas, plotly and the project's modules to import (seconds on two cores) before it can draw
anything. Here a background thread imports them as soon as Streamlit's runtime exists (so that modules that
decorate with ``st.cache_data`` at import see it); the first script run then finds them in ``sys.modules``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"
#: What the first page (Compare classes on the embedded model) imports, heaviest first.
PRELOAD = ("torch", "timm", "pandas", "plotly.graph_objects", "senet_viz.models.zoo", "senet_viz.analysis.stats",
           "senet_viz.analysis.chance", "senet_viz.plots", "ui.sidebar", "ui.results", "ui.common", "ui.channels",
           "ui.exports", "senet_viz.plots.depth", "senet_viz.analysis.verdict")
_log = logging.getLogger(__name__)


def preload(timeout_s: float = 60.0) -> None:
    """Import :data:`PRELOAD` once Streamlit's runtime exists (waits up to ``timeout_s`` for it)."""
    from streamlit import runtime

    deadline = time.monotonic() + timeout_s
    while not runtime.exists():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    started = time.perf_counter()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the app's own run reports a broken import where it matters
            _log.warning("senet-viz: could not preload %s", name, exc_info=True)
    # on the server's output, beside Streamlit's own lines (benchmarks/interactions.py waits for it)
    print(f"  senet-viz: the app's modules are loaded ({time.perf_counter() - started:.1f} s)", flush=True)


def main(argv: list[str]) -> None:
    threading.Thread(target=preload, name="senet-viz-preload", daemon=True).start()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *argv]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
