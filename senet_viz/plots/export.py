"""Figures to files: the provenance stamp under an exported figure, HTML (plotly.js embedded) and static images
through kaleido with the Chrome/Chromium found here, passed to kaleido explicitly (no process-wide environment
change)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

# Export size: wide enough that no title, subtitle or legend is cut; scale 2 for a sharp PNG (3200 px wide).
EXPORT_WIDTH, EXPORT_HEIGHT, EXPORT_SCALE = 1600, 900, 2

_IMAGE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}

_CHROMIUM_CANDIDATES = (
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/usr/bin/google-chrome-stable",
)


def stamp(fig: go.Figure, provenance: str) -> go.Figure:
    """A copy of ``fig`` carrying ``provenance`` (model, weights, images) as a small line under the plot, sized
    for export (``EXPORT_WIDTH`` x at least ``EXPORT_HEIGHT``). The original figure is not changed."""
    out = go.Figure(fig)
    height = max(EXPORT_HEIGHT, int(out.layout.height or 0))
    bottom = int(out.layout.margin.b if out.layout.margin and out.layout.margin.b is not None else 60) + 40
    out.update_layout(width=EXPORT_WIDTH, height=height, margin={"b": bottom})
    out.add_annotation(text=provenance, xref="paper", yref="paper", x=0, y=0, xanchor="left", yanchor="top",
                       yshift=-(bottom - 18), showarrow=False, align="left",
                       font={"size": 11, "color": "#555"}, name="provenance")
    return out


def _is_exe(path: str | None) -> bool:
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def find_chromium() -> str | None:
    """The Chrome/Chromium kaleido should use: ``$BROWSER_PATH`` if it is an executable, else
    ``/usr/bin/chromium`` (or chromium-browser / google-chrome), else one on ``PATH``; ``None`` if there is none."""
    env = os.environ.get("BROWSER_PATH")
    if _is_exe(env):
        return env
    for candidate in _CHROMIUM_CANDIDATES:
        if _is_exe(candidate):
            return candidate
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None

_NO_CHROMIUM = (
    "PNG/SVG/PDF export needs Chrome or Chromium (kaleido 1.x drives a headless browser): install it with "
    "`apt-get install chromium` (or set BROWSER_PATH to a Chrome/Chromium executable). "
    "HTML export works without it: save as .html."
)


def save_figure(fig: go.Figure, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write ``fig`` to ``path``; the format comes from the suffix. Returns the path.

    ``.html``: a standalone page with plotly.js embedded (opens offline; no CDN). ``.png``, ``.svg``, ``.pdf``,
    ``.jpg``, ``.webp``: rendered by kaleido 1.x, which needs a Chrome/Chromium: the one found by
    :func:`find_chromium` is handed to kaleido as its browser path for this call only (the process environment is
    left as it is, so concurrent exports and other libraries see no change); without one a ``RuntimeError`` says
    how to install it. Extra keyword arguments go to ``write_html``, or for images ``width``, ``height`` and
    ``scale``; images default to the figure's own width (else ``EXPORT_WIDTH``, 1600) and at least
    ``EXPORT_HEIGHT`` (900) high at scale 2, where nothing is cut (plotly's 700 x 500 default cuts long titles and
    legends). plotly's image defaults (``plotly.io.defaults``: plotly.js, MathJax, topojson) apply as in
    ``fig.write_image``.
    """
    if not isinstance(fig, go.Figure):
        raise TypeError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", *_IMAGE_FORMATS):
        raise ValueError(f"unsupported file type {out.suffix!r}; use one of {['.html', *_IMAGE_FORMATS]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".html", ".htm"):
        kwargs.setdefault("full_html", True)
        kwargs["include_plotlyjs"] = True  # embedded: the file must open offline
        fig.write_html(out, **kwargs)
        return out
    browser = find_chromium()
    if browser is None:
        raise RuntimeError(_NO_CHROMIUM)
    unknown = set(kwargs) - {"width", "height", "scale"}
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) for an image: {sorted(unknown)}")
    opts = {
        "format": _IMAGE_FORMATS[suffix],
        "width": int(kwargs.get("width") or fig.layout.width or EXPORT_WIDTH),
        "height": int(kwargs.get("height") or max(int(fig.layout.height or 0), EXPORT_HEIGHT)),
        "scale": kwargs.get("scale") or (EXPORT_SCALE if suffix in (".png", ".jpg", ".jpeg", ".webp") else 1),
    }
    try:
        data = _render(fig.to_dict(), opts, browser)
    except RuntimeError as exc:
        if "chrom" in str(exc).lower() or "browser" in str(exc).lower():
            raise RuntimeError(f"{_NO_CHROMIUM} (kaleido could not start {browser}: {exc})") from exc
        raise
    out.write_bytes(data)
    return out


def _render(fig_dict: dict, opts: dict, browser: str) -> bytes:
    """The image bytes of a figure through kaleido, its browser given by path (``kopts``: passed to kaleido's
    browser for this call) with plotly's own defaults, as ``plotly.io.to_image`` sets them."""
    import kaleido
    from kaleido.errors import ChromeNotFoundError
    from plotly.io import defaults

    kopts: dict[str, Any] = {"path": browser}
    for name in ("plotlyjs", "mathjax", "headers"):
        if getattr(defaults, name, None):
            kopts[name] = getattr(defaults, name)
    try:
        return kaleido.calc_fig_sync(fig_dict, opts=opts, topojson=defaults.topojson, kopts=kopts)
    except ChromeNotFoundError as exc:
        raise RuntimeError(f"no browser at {browser}: {exc}") from exc
