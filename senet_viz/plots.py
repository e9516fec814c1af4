"""Plotly figures of Squeeze-and-Excitation gates, built from the tidy frames of :mod:`senet_viz.stats`.

Every function takes plain DataFrames / arrays and returns a :class:`plotly.graph_objects.Figure`; nothing here
imports torch or streamlit. The figures follow the "role of excitation" analysis of the SENet paper
(Hu et al., CVPR 2018 / TPAMI 2019, Fig. 6 and Fig. 7).

Input frames (see ``stats.py``):

* ``channels``: one row per (model, block, class, channel) with ``model``, ``block``, ``stage``, ``order``,
  ``class`` (``"all"`` = every image), ``class_index``, ``channel``, ``count``, ``mean``, ``std``, ``min``,
  ``max`` and ``hist`` (counts of the gate values in equal bins over [0, 1]).
* ``indices``: one row per (model, block) with ``specificity``, ``saturation`` and the other indices.

Large statistics (e.g. SE-ResNet-50 over the 1,000 ImageNet classes: 15 million class-channel rows) are never
drawn from a full frame: pass the bounded frames of ``GateStats`` instead. ``fig6`` / ``fig7`` take
``stats.frame(blocks, classes, hist=False)`` (means and std only, no ``hist``/``min``/``max`` needed),
``distributions`` also takes ``stats.block_frame(blocks, classes)`` (one row per block and class, the class's
histogram pooled over channels), :func:`heatmap_matrix` takes the class x channel means of
``stats.class_means(block, classes)``, and ``image_percentiles`` falls back to the all-image histogram (and says
so) where a class's per-channel histograms are not kept (``hist`` None). ``all_classes=`` (every class of the
statistics) keeps a class's colour the same however few classes a bounded frame holds.

Conventions shared by all figures: a class keeps its colour everywhere (:func:`class_colors`), the all-class
reference is dark grey and dashed, gate axes span 0..1, titles name the model, the block(s) and the classes with
their number of images, and unknown block / class / model names raise ``ValueError`` listing the valid ones.
A frame holding several models needs ``model=...``.
"""

from __future__ import annotations

import colorsys
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

__all__ = [
    "ALL_CLASS",
    "ALL_COLOR",
    "channel_percentiles",
    "class_colors",
    "depth_profile",
    "distributions",
    "fig6",
    "fig7",
    "find_chromium",
    "heatmap",
    "heatmap_matrix",
    "image_percentiles",
    "paper_preset_blocks",
    "sample_channels",
    "save_figure",
    "sweep_figure",
    "cost_figure",
    "gradcam_figure",
    "channel_attribution_figure",
]

ALL_CLASS = "all"
"""The pseudo-class of ``stats.py`` that pools every image."""
ALL_COLOR = "#404040"
"""Colour of the all-class reference (always drawn dashed where it is a line)."""

PAPER = "Hu et al. 2018"
GATE_AXIS = "mean gate s (0–1)"
CHANNEL_COLUMNS = ("model", "block", "stage", "order", "class", "channel", "count", "mean", "std", "min", "max", "hist")
MEAN_COLUMNS = ("model", "block", "stage", "order", "class", "channel", "count", "mean", "std")
"""What the line figures and the heatmap need: ``stats.frame(..., hist=False)`` has them."""
BLOCK_COLUMNS = ("model", "block", "stage", "order", "class", "count", "mean", "min", "max", "hist")
"""A frame of whole-block distributions (``stats.block_frame()``): one row per (block, class), no ``channel``."""
_MAX_HEATMAP_ROWS_HIGH = 60  # past this many classes the heatmap stops growing in height and drops the tick labels
INDEX_COLUMNS = ("model", "block", "stage", "order")

_MAX_TITLE_CLASSES = 8
_MAX_TITLE_BLOCKS = 6


def _saturated(color: str) -> bool:
    r, g, b = (int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    _, s, v = colorsys.rgb_to_hsv(r, g, b)
    return s >= 0.45 and v >= 0.3


# Plotly's default palette, then Dark24 without its greys and near-greys (they would be confused with "all").
_PALETTE: tuple[str, ...] = tuple(
    dict.fromkeys(c.upper() for c in (*qualitative.Plotly, *qualitative.Dark24) if _saturated(c))
)

_METRIC_COLORS = {
    "specificity": "#1F77B4",
    "saturation": "#D62728",
    "mean_abs_1_minus_s": "#2CA02C",
    "share_near_0": "#9467BD",
    "mean_gate": "#FF7F0E",
    "cross_class_corr": "#8C564B",
    "spread": "#17BECF",
    "eta2": "#1F77B4",
}
_METRIC_LABELS = {
    "specificity": "class specificity",
    "spread": "between-class spread",
    "eta2": "eta² (variance share)",
    "saturation": "saturation",
    "mean_abs_1_minus_s": "mean |1 − s|",
    "share_near_0": "share of gates near 0",
    "mean_gate": "mean gate",
    "cross_class_corr": "cross-class correlation",
}
_STAGE_SHADES = ("rgba(120,120,120,0.0)", "rgba(120,120,120,0.10)")


# --------------------------------------------------------------------------------------------------- colours


def class_colors(classes: Iterable[str]) -> dict[str, str]:
    """Map class names to colours, deterministically.

    Classes are sorted by name and take the palette in that order (cycling after ``len(_PALETTE)`` classes), so
    the same set of classes always gets the same colours; the figures pass every class of the frame (not only the
    shown ones), so a class keeps its colour when the selection changes. ``"all"`` is always :data:`ALL_COLOR`
    and is always in the result.
    """
    names = sorted({str(c) for c in classes} - {ALL_CLASS})
    colors = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}
    colors[ALL_CLASS] = ALL_COLOR
    return colors


def _colors(frame: pd.DataFrame, all_classes: Iterable[str] | None) -> dict[str, str]:
    """Colours from every class of the statistics when given (bounded frames hold only some), else the frame's."""
    names = set(map(str, frame["class"].unique()))
    if all_classes is not None:
        names |= {str(c) for c in all_classes}
    return class_colors(names)


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _line(cls: str, colors: dict[str, str], width: float = 1.6) -> dict[str, Any]:
    if cls == ALL_CLASS:
        return {"color": ALL_COLOR, "dash": "dash", "width": width + 0.4}
    return {"color": colors[cls], "width": width}


# --------------------------------------------------------------------------------------------------- validation


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{what} frame is empty")


def _one_model(frame: pd.DataFrame, model: str | None, what: str) -> tuple[pd.DataFrame, str]:
    """Rows of one model: ``model`` if given, else the frame's only model."""
    models = sorted(map(str, frame["model"].unique()))
    if model is None:
        if len(models) != 1:
            raise ValueError(f"{what} frame holds {len(models)} models; pass model= one of {models}")
        model = models[0]
    elif model not in models:
        raise ValueError(f"unknown model {model!r}; valid models: {models}")
    return frame[frame["model"] == model], model


def _block_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per block (block, stage, order), in depth order."""
    table = frame[["block", "stage", "order"]].drop_duplicates("block")
    return table.sort_values(["order", "block"], kind="stable").reset_index(drop=True)


def _resolve_blocks(frame: pd.DataFrame, blocks: str | Iterable[str] | None) -> list[str]:
    """Validate block names; return them unique and in depth order (all blocks when ``None``)."""
    table = _block_table(frame)
    valid = list(table["block"])
    if blocks is None:
        return valid
    wanted = [blocks] if isinstance(blocks, str) else [str(b) for b in blocks]
    if not wanted:
        raise ValueError(f"no block chosen; valid blocks: {valid}")
    unknown = [b for b in wanted if b not in valid]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; valid blocks: {valid}")
    return [b for b in valid if b in set(wanted)]


def _real_classes(frame: pd.DataFrame) -> list[str]:
    """Class names without ``"all"``, ordered by class_index (then name)."""
    cols = ["class", "class_index"] if "class_index" in frame.columns else ["class"]
    table = frame[cols].drop_duplicates("class")
    table = table[table["class"] != ALL_CLASS]
    table = table.sort_values(cols[::-1], kind="stable")
    return [str(c) for c in table["class"]]


def _resolve_classes(frame: pd.DataFrame, classes: str | Iterable[str] | None) -> list[str]:
    """Validate class names (``"all"`` allowed when present); default: every real class."""
    present = set(map(str, frame["class"].unique()))
    valid = _real_classes(frame) + ([ALL_CLASS] if ALL_CLASS in present else [])
    if classes is None:
        return _real_classes(frame)
    wanted = [classes] if isinstance(classes, str) else [str(c) for c in classes]
    if not wanted:
        raise ValueError(f"no class chosen; valid classes: {valid}")
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; valid classes: {valid}")
    return list(dict.fromkeys(wanted))


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _class_counts(sub: pd.DataFrame) -> dict[str, int]:
    """Images per class (the largest ``count`` over the class's rows)."""
    return {str(k): int(v) for k, v in sub.groupby("class")["count"].max().items()}


def _per_channel(sub: pd.DataFrame, block: str, cls: str) -> pd.DataFrame:
    rows = sub[(sub["block"] == block) & (sub["class"] == cls)]
    if rows["channel"].duplicated().any():
        raise ValueError(f"duplicate channel rows for block {block!r}, class {cls!r}")
    return rows.set_index("channel").sort_index()


# --------------------------------------------------------------------------------------------------- titles


def _classes_text(classes: Sequence[str], counts: dict[str, int]) -> str:
    parts = [f"{c} (n={counts.get(c, 0)})" for c in classes]
    if len(parts) > _MAX_TITLE_CLASSES:
        parts = parts[:_MAX_TITLE_CLASSES] + [f"+{len(parts) - _MAX_TITLE_CLASSES} more classes"]
    return ", ".join(parts)


def _blocks_text(blocks: Sequence[str]) -> str:
    if len(blocks) > _MAX_TITLE_BLOCKS:
        return f"{blocks[0]} … {blocks[-1]} ({len(blocks)} SE blocks)"
    return ", ".join(blocks)


def _layout_title(fig: go.Figure, text: str, subtitle: str, top: int = 120) -> None:
    fig.update_layout(
        title={"text": text, "x": 0.01, "xanchor": "left", "font": {"size": 16}, "subtitle": {"text": subtitle}},
        margin={"t": top, "l": 70, "r": 30, "b": 60},
        template="plotly_white",
        legend={"title": {"text": "class"}},
    )


# --------------------------------------------------------------------------------------------------- histograms


def _hist_quantiles(hist: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles of values binned in ``len(hist)`` equal bins over [0, 1], linear within the crossing bin."""
    h = np.asarray(hist, dtype=np.float64).ravel()
    total = h.sum()
    if h.size == 0 or total <= 0:
        return np.full(len(qs), np.nan)
    width = 1.0 / h.size
    cum = np.concatenate([[0.0], np.cumsum(h)])
    out = np.empty(len(qs))
    for k, q in enumerate(qs):
        target = float(q) * total
        if target <= 0:
            out[k] = np.flatnonzero(h > 0)[0] * width
            continue
        i = min(int(np.searchsorted(cum[1:], target, side="left")), h.size - 1)
        out[k] = (i + (target - cum[i]) / h[i]) * width if h[i] > 0 else (i + 1) * width
    return out


def channel_percentiles(hist_matrix: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Percentile (0..100) of ``values[c]`` within the histogram ``hist_matrix[c]``, for every channel ``c``.

    ``hist_matrix`` is ``(C, bins)``: counts in equal bins over [0, 1]. The empirical CDF is taken linear within a
    bin (mass spread uniformly over the bin), the inverse of the quantile rule of ``stats.py``: a value below all
    the mass gives 0, above all of it 100, at the median about 50. Channels without any count, and NaN values,
    give NaN.
    """
    h = np.asarray(hist_matrix, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if h.ndim == 1:
        h = h[None, :]
    if h.ndim != 2 or h.shape[1] < 1:
        raise ValueError(f"hist_matrix must be (channels, bins), got shape {np.shape(hist_matrix)}")
    if v.ndim != 1 or v.shape[0] != h.shape[0]:
        raise ValueError(f"values must be 1-D with one value per channel ({h.shape[0]}), got shape {v.shape}")
    n_bins = h.shape[1]
    total = h.sum(axis=1)
    cum = np.concatenate([np.zeros((h.shape[0], 1)), np.cumsum(h, axis=1)], axis=1)
    pos = np.nan_to_num(v, nan=0.0) * n_bins
    idx = np.clip(np.floor(pos), 0, n_bins - 1).astype(np.int64)
    frac = np.clip(pos - idx, 0.0, 1.0)
    rows = np.arange(h.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = (cum[rows, idx] + frac * h[rows, idx]) / total
    pct = 100.0 * np.clip(cdf, 0.0, 1.0)
    pct[(total <= 0) | np.isnan(v)] = np.nan
    return pct


def _has_hist(rows: pd.DataFrame) -> bool:
    """Every row carries a histogram (statistics keep per-channel ones for some classes only)."""
    return "hist" in rows.columns and all(h is not None and np.ndim(h) == 1 for h in rows["hist"])


def _stack_hist(rows: pd.DataFrame) -> np.ndarray:
    if not _has_hist(rows):
        missing = sorted(set(map(str, rows["class"])))[:4] if "class" in rows.columns else []
        raise ValueError(f"per-channel histograms are not kept for class(es) {missing} (the statistics keep them for "
                         "a bounded set of classes): draw distributions from GateStats.block_frame()")
    hists = [np.asarray(h, dtype=np.int64).ravel() for h in rows["hist"]]
    lengths = {h.size for h in hists}
    if len(lengths) != 1:
        raise ValueError(f"histograms of different lengths {sorted(lengths)} in one block")
    return np.stack(hists)


# --------------------------------------------------------------------------------------------------- Fig. 6


def sample_channels(channel_ids: Sequence[int] | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` channel ids drawn uniformly without replacement with ``np.random.default_rng(seed)``, sorted.

    The generator is fresh for every call, so a block always gets the same channels for a given seed whatever
    other blocks are shown. All ids (sorted) when ``n`` is at least their number.
    """
    ids = np.sort(np.asarray(channel_ids).ravel())
    n = _positive_int(n, "n_channels")
    if n >= ids.size:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))


def paper_preset_blocks(frame: pd.DataFrame, model: str | None = None) -> list[str]:
    """The blocks of the paper's Fig. 6: the last SE block of every stage plus every block of the last stage.

    Works on the ``channels`` or the ``indices`` frame; the result is in depth order (for SE-ResNet-50:
    SE_2_3, SE_3_4, SE_4_6, SE_5_1, SE_5_2, SE_5_3).
    """
    _require(frame, ("model", "block", "stage", "order"), "block")
    frame, _ = _one_model(frame, model, "block")
    table = _block_table(frame)
    last_stage = table["stage"].max()
    last_of_stage = set(table.loc[table.groupby("stage")["order"].idxmax(), "block"])
    keep = last_of_stage | set(table.loc[table["stage"] == last_stage, "block"])
    return [b for b in table["block"] if b in keep]


def fig6(
    channels: pd.DataFrame,
    blocks: Iterable[str] | None = None,
    classes: Iterable[str] | None = None,
    n_channels: int = 50,
    seed: int = 0,
    all_channels: bool = False,
    *,
    model: str | None = None,
    all_classes: Iterable[str] | None = None,
) -> go.Figure:
    """The paper's Fig. 6: mean gate per channel, one line per class plus the all-class mean, one panel per block.

    ``blocks`` defaults to :func:`paper_preset_blocks`, ``classes`` to every class of the frame. Each panel
    shows ``n_channels`` channels sampled with :func:`sample_channels` (``seed``), or all of them when
    ``all_channels``; x is the channel index, y the mean gate over the class's images. Needs only the
    :data:`MEAN_COLUMNS` (``stats.frame(blocks, classes, hist=False)``); ``all_classes`` fixes the colours.
    """
    _require(channels, MEAN_COLUMNS, "channels")
    frame, model = _one_model(channels, model, "channels")
    blocks = _resolve_blocks(frame, paper_preset_blocks(frame) if blocks is None else blocks)
    chosen = _resolve_classes(frame, classes)
    has_all = ALL_CLASS in set(frame["class"])
    shown = [c for c in chosen if c != ALL_CLASS] + ([ALL_CLASS] if has_all else [])
    colors = _colors(frame, all_classes)
    sub = frame[frame["block"].isin(blocks) & frame["class"].isin(shown)]
    counts = _class_counts(sub)
    if not all_channels:
        _positive_int(n_channels, "n_channels")

    n_cols = min(3, len(blocks))
    n_rows = math.ceil(len(blocks) / n_cols)
    widths = {b: int(sub.loc[sub["block"] == b, "channel"].nunique()) for b in blocks}
    picked_by_block = {}
    for b in blocks:
        ids = np.sort(sub.loc[sub["block"] == b, "channel"].unique())
        picked_by_block[b] = ids if all_channels else sample_channels(ids, n_channels, seed)
    titles = [f"{b} · {len(picked_by_block[b])} of {widths[b]} channels" for b in blocks]
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=titles,
        horizontal_spacing=0.06,
        vertical_spacing=0.16 if n_rows > 1 else 0.1,
    )
    for i, block in enumerate(blocks):
        row, col = i // n_cols + 1, i % n_cols + 1
        picked = picked_by_block[block]
        for cls in shown:
            per = _per_channel(sub, block, cls)
            y = per["mean"].reindex(picked).to_numpy(dtype=float)
            fig.add_trace(
                go.Scatter(
                    x=picked,
                    y=y,
                    mode="lines" if len(picked) > 60 else "lines+markers",
                    marker={"size": 4},
                    line=_line(cls, colors),
                    name=f"{cls} (n={counts.get(cls, 0)})",
                    legendgroup=cls,
                    showlegend=i == 0,
                    meta={"block": block, "class": cls},
                    hovertemplate=f"{block}<br>{cls}<br>channel %{{x}}<br>mean s = %{{y:.3f}}<extra></extra>",
                ),
                row=row,
                col=col,
            )
    sampled = "all channels" if all_channels else f"{n_channels} channels per block sampled uniformly (seed {seed})"
    fig.update_xaxes(title_text="channel index", row=n_rows)
    fig.update_yaxes(range=[-0.02, 1.02])
    for r in range(1, n_rows + 1):
        fig.update_yaxes(title_text=GATE_AXIS, row=r, col=1)
    _layout_title(
        fig,
        f"Mean excitation per channel — {model}: {_blocks_text(blocks)}<br>{_classes_text(shown, counts)}",
        f"{sampled}; dashed dark-grey line = mean over all images. cf. {PAPER}, Fig. 6",
        top=160,
    )
    fig.update_layout(height=max(420, 300 * n_rows + 140))
    return fig


# --------------------------------------------------------------------------------------------------- Fig. 7


def _one_class_view(channels: pd.DataFrame, model: str | None, block: str, cls: str,
                    all_classes: Iterable[str] | None = None, columns: Sequence[str] = MEAN_COLUMNS):
    """Shared set-up of the one-class figures: the rows of ``block`` for ``cls`` and the all-class reference."""
    _require(channels, columns, "channels")
    frame, model = _one_model(channels, model, "channels")
    (block,) = _resolve_blocks(frame, [block])
    (cls,) = _resolve_classes(frame, [cls])
    colors = _colors(frame, all_classes)
    shown = [cls] + ([ALL_CLASS] if cls != ALL_CLASS and ALL_CLASS in set(frame["class"]) else [])
    sub = frame[(frame["block"] == block) & frame["class"].isin(shown)]
    return model, block, cls, colors, shown, sub, _class_counts(sub)


def fig7(
    channels: pd.DataFrame,
    block: str,
    cls: str,
    n_channels: int = 50,
    seed: int = 0,
    all_channels: bool = False,
    *,
    model: str | None = None,
    all_classes: Iterable[str] | None = None,
) -> go.Figure:
    """One class's mean gate per channel with a filled ±1 std band, and the all-class mean for reference.

    Channels are sampled as in :func:`fig6`. The band is ``mean ± std`` as stored (not clipped to [0, 1]): the std
    comes from the streamed M2, so no histogram is needed (``stats.frame([block], [cls], hist=False)``).
    Traces carry ``meta`` = ``"upper"``, ``"lower"``, ``"mean"`` and ``"all"``. A class with one image has no
    within-class std: the band is left out (no ``"upper"`` / ``"lower"`` traces) and the subtitle says why.
    """
    model, block, cls, colors, shown, sub, counts = _one_class_view(channels, model, block, cls, all_classes)
    ids = np.sort(sub["channel"].unique())
    picked = ids if all_channels else sample_channels(ids, n_channels, seed)
    per = _per_channel(sub, block, cls).reindex(picked)
    mean = per["mean"].to_numpy(dtype=float)
    std = per["std"].to_numpy(dtype=float)
    color = colors[cls]
    label = f"{cls} (n={counts.get(cls, 0)})"
    has_band = counts.get(cls, 0) >= 2

    fig = go.Figure()
    if has_band:  # one image has no within-class std: no zero-width band
        fig.add_trace(
            go.Scatter(
                x=picked,
                y=mean + std,
                mode="lines",
                line={"width": 0, "color": color},
                name=f"{cls} mean + 1 std",
                legendgroup=cls,
                showlegend=False,
                meta="upper",
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=picked,
                y=mean - std,
                mode="lines",
                line={"width": 0, "color": color},
                fill="tonexty",
                fillcolor=_rgba(color if cls != ALL_CLASS else ALL_COLOR, 0.22),
                name=f"{cls} mean ± 1 std",
                legendgroup=cls,
                meta="lower",
                hoverinfo="skip",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=picked,
            y=mean,
            mode="lines+markers" if len(picked) <= 60 else "lines",
            marker={"size": 5},
            line=_line(cls, colors, width=2),
            name=f"{label} mean",
            legendgroup=cls,
            meta="mean",
            customdata=np.column_stack([std]),
            hovertemplate=f"{cls}<br>channel %{{x}}<br>mean s = %{{y:.3f}}<br>std = %{{customdata[0]:.3f}}"
            "<extra></extra>",
        )
    )
    if len(shown) > 1:
        ref = _per_channel(sub, block, ALL_CLASS)["mean"].reindex(picked).to_numpy(dtype=float)
        fig.add_trace(
            go.Scatter(
                x=picked,
                y=ref,
                mode="lines",
                line=_line(ALL_CLASS, colors),
                name=f"all images (n={counts.get(ALL_CLASS, 0)}) mean",
                legendgroup=ALL_CLASS,
                meta="all",
                hovertemplate="all images<br>channel %{x}<br>mean s = %{y:.3f}<extra></extra>",
            )
        )
    lo = np.nanmin(np.concatenate([[0.0], mean - std]))
    hi = np.nanmax(np.concatenate([[1.0], mean + std]))
    sampled = "all channels" if all_channels else f"{len(picked)} of {len(ids)} channels sampled (seed {seed})"
    fig.update_xaxes(title_text="channel index")
    fig.update_yaxes(title_text=GATE_AXIS, range=[lo - 0.02, hi + 0.02])
    band = ("mean ± 1 std over the class's images" if has_band else
            f"mean only: the ±1 std band needs ≥ 2 images and class {cls} has {counts.get(cls, 0)}")
    _layout_title(
        fig,
        f"Excitation of class {label} — {model}: {block}<br>{_classes_text(shown, counts)}",
        f"{band}, {sampled}; dashed dark-grey line = all images. cf. {PAPER}, Fig. 7",
    )
    fig.update_layout(height=460)
    return fig


# --------------------------------------------------------------------------------------------------- distributions


def _block_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """Quartiles, Tukey whiskers (clipped to observed min/max), mean and pooled histogram of one class-block."""
    hist = _stack_hist(rows).sum(axis=0)
    q1, med, q3 = _hist_quantiles(hist, (0.25, 0.5, 0.75))
    nz = np.flatnonzero(hist)
    width = 1.0 / hist.size
    lo = float(np.nanmin(rows["min"])) if rows["min"].notna().any() else (nz[0] * width if nz.size else np.nan)
    hi = float(np.nanmax(rows["max"])) if rows["max"].notna().any() else ((nz[-1] + 1) * width if nz.size else np.nan)
    iqr = q3 - q1
    counts = rows["count"].to_numpy(dtype=float)
    means = rows["mean"].to_numpy(dtype=float)
    ok = np.isfinite(means) & (counts > 0)
    mean = float(np.average(means[ok], weights=counts[ok])) if ok.any() else np.nan
    return {
        "hist": hist,
        "q1": float(q1),
        "median": float(med),
        "q3": float(q3),
        "lowerfence": float(max(lo, q1 - 1.5 * iqr)),
        "upperfence": float(min(hi, q3 + 1.5 * iqr)),
        "mean": mean,
        "values": int(hist.sum()),
    }


def distributions(
    channels: pd.DataFrame,
    stage: int | None = None,
    blocks: Iterable[str] | None = None,
    classes: Iterable[str] | None = None,
    kind: Literal["box", "violin"] = "box",
    *,
    model: str | None = None,
    all_classes: Iterable[str] | None = None,
) -> go.Figure:
    """Distribution of all gate values of a block (every channel, every image of a class), per block and class.

    ``channels`` is the per-channel frame, or a block frame (``stats.block_frame()``, :data:`BLOCK_COLUMNS`:
    one row per block and class whose ``hist`` is already pooled over the channels; statistics keep it for every
    class, so large runs draw from it). x groups the blocks (of ``stage``, or ``blocks``, or all blocks) in depth
    order; each class is one trace, side by side. ``classes`` defaults to every class plus ``"all"``. The
    distributions come from the per-class histograms summed over the block's channels: ``kind="box"`` draws
    precomputed quartiles from those
    histograms (linear within a bin), whiskers at 1.5 IQR clipped to the observed min/max, and the exact mean;
    ``kind="violin"`` draws the histogram itself as a mirrored density (each violin scaled to its own peak), with
    a marker at the median (the marker traces have ``meta["part"] == "median"``).
    """
    if kind not in ("box", "violin"):
        raise ValueError(f"kind must be 'box' or 'violin', got {kind!r}")
    _require(channels, CHANNEL_COLUMNS if "channel" in channels.columns else BLOCK_COLUMNS, "channels")
    frame, model = _one_model(channels, model, "channels")
    table = _block_table(frame)
    stages = sorted(int(s) for s in table["stage"].unique())
    if stage is not None and stage not in stages:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {stages}")
    if blocks is None:
        blocks = list(table["block"] if stage is None else table.loc[table["stage"] == stage, "block"])
    else:
        blocks = _resolve_blocks(frame, blocks)
        if stage is not None:
            stage_of = dict(zip(table["block"], table["stage"], strict=True))
            outside = [b for b in blocks if stage_of[b] != stage]
            if outside:
                valid = list(table.loc[table["stage"] == stage, "block"])
                raise ValueError(f"block(s) {outside} are not in stage {stage}; its blocks: {valid}")
    if classes is None:
        shown = _real_classes(frame) + ([ALL_CLASS] if ALL_CLASS in set(frame["class"]) else [])
    else:
        shown = _resolve_classes(frame, classes)
    colors = _colors(frame, all_classes)
    sub = frame[frame["block"].isin(blocks) & frame["class"].isin(shown)]
    counts = _class_counts(sub)
    n_bins = next((int(np.asarray(h).size) for h in sub["hist"] if h is not None and np.ndim(h) == 1), 0)

    summaries = {
        (b, c): _block_summary(sub[(sub["block"] == b) & (sub["class"] == c)])
        for b in blocks
        for c in shown
        if ((sub["block"] == b) & (sub["class"] == c)).any()
    }

    fig = go.Figure()
    if kind == "box":
        for cls in shown:
            bs = [b for b in blocks if (b, cls) in summaries]
            stats = [summaries[(b, cls)] for b in bs]
            color = colors[cls]
            fig.add_trace(
                go.Box(
                    x=bs,
                    q1=[s["q1"] for s in stats],
                    median=[s["median"] for s in stats],
                    q3=[s["q3"] for s in stats],
                    lowerfence=[s["lowerfence"] for s in stats],
                    upperfence=[s["upperfence"] for s in stats],
                    mean=[s["mean"] for s in stats],
                    boxpoints=False,
                    name=f"{cls} (n={counts.get(cls, 0)})",
                    legendgroup=cls,
                    marker={"color": color},
                    line={"color": color},
                    fillcolor=_rgba(color, 0.35),
                    meta={"class": cls, "blocks": bs},
                    hovertext=[
                        f"{cls} · {b}: {s['values']} gate values; quartiles from a {n_bins}-bin histogram"
                        for b, s in zip(bs, stats, strict=True)
                    ],
                )
            )
        fig.update_layout(boxmode="group", boxgap=0.25, boxgroupgap=0.1)
        fig.update_xaxes(title_text="SE block (depth order)", categoryorder="array", categoryarray=blocks)
        how = (
            f"box: quartiles of each class's {n_bins}-bin histogram of all channels' gates (linear within a bin); "
            "whiskers 1.5 IQR within observed min/max; dashed = exact mean"
        )
    else:
        slot = 0.8 / len(shown)
        half = 0.46 * slot
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        centres = 0.5 * (edges[:-1] + edges[1:])
        for k, cls in enumerate(shown):
            xs: list[float | None] = []
            ys: list[float | None] = []
            texts: list[str | None] = []
            med_x, med_y, med_text = [], [], []
            for i, b in enumerate(blocks):
                if (b, cls) not in summaries:
                    continue
                s = summaries[(b, cls)]
                hist = s["hist"].astype(float)
                nz = np.flatnonzero(hist)
                if nz.size == 0:
                    continue
                centre = i - 0.4 + slot * (k + 0.5)
                sel = slice(nz[0], nz[-1] + 1)
                dens = np.concatenate([[0.0], hist[sel] / hist.max(), [0.0]])
                yy = np.concatenate([[edges[nz[0]]], centres[sel], [edges[nz[-1] + 1]]])
                text = (
                    f"{cls} · {b}<br>median {s['median']:.3f}, IQR [{s['q1']:.3f}, {s['q3']:.3f}], "
                    f"mean {s['mean']:.3f}<br>density drawn from a {n_bins}-bin histogram of {s['values']} gate values"
                )
                xs += list(centre + half * dens) + list(centre - half * dens[::-1]) + [None]
                ys += list(yy) + list(yy[::-1]) + [None]
                texts += [text] * (2 * yy.size) + [None]
                med_x.append(centre)
                med_y.append(s["median"])
                med_text.append(text)
            color = colors[cls]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    fill="toself",
                    fillcolor=_rgba(color, 0.45),
                    line={"color": color, "width": 1},
                    name=f"{cls} (n={counts.get(cls, 0)})",
                    legendgroup=cls,
                    text=texts,
                    hoverinfo="text",
                    meta={"class": cls, "part": "density"},
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=med_x,
                    y=med_y,
                    mode="markers",
                    marker={"symbol": "line-ew-open", "size": max(6, int(120 * half)), "line": {"width": 3},
                            "color": "black"},
                    name=f"{cls} median",
                    legendgroup=cls,
                    showlegend=False,
                    text=med_text,
                    hoverinfo="text",
                    meta={"class": cls, "part": "median"},
                )
            )
        fig.update_xaxes(
            title_text="SE block (depth order)", tickmode="array", tickvals=list(range(len(blocks))), ticktext=blocks,
            range=[-0.6, len(blocks) - 0.4],
        )
        how = (
            f"violin: frequency polygon of each class's {n_bins}-bin histogram of all channels' gates, mirrored, "
            "scaled to its own peak (no smoothing); bar = median"
        )
    fig.update_yaxes(title_text="gate value s (unitless, 0–1)", range=[0, 1])
    where = f"stage {stage} ({_blocks_text(blocks)})" if stage is not None else _blocks_text(blocks)
    _layout_title(
        fig,
        f"Distribution of gate values per SE block — {model}: {where}"
        f"<br>{_classes_text(shown, counts)}",
        f"{how}. cf. {PAPER}, Fig. 6, 7",
    )
    fig.update_layout(height=500)
    return fig


# --------------------------------------------------------------------------------------------------- depth


def _metric_list(indices: pd.DataFrame, metrics: str | Iterable[str]) -> list[str]:
    wanted = [metrics] if isinstance(metrics, str) else list(metrics)
    skip = {"stage", "order", "channels", "n_images", "n_classes", "threshold"}
    valid = [c for c in indices.columns if c not in skip and pd.api.types.is_numeric_dtype(indices[c])]
    unknown = [m for m in wanted if m not in valid]
    if unknown or not wanted:
        raise ValueError(f"unknown metric(s) {unknown or wanted}; valid metrics: {valid}")
    return wanted


def _first(frame: pd.DataFrame, column: str) -> Any:
    if column not in frame.columns:
        return None
    vals = frame[column].dropna()
    return vals.iloc[0] if len(vals) else None


def depth_profile(
    indices: pd.DataFrame,
    second: pd.DataFrame | str | None = None,
    metrics: str | Iterable[str] = ("specificity", "saturation"),
    *,
    model: str | None = None,
) -> go.Figure:
    """Class specificity and saturation (or other ``indices`` columns) against depth, for one or two models.

    x is the block ``order`` with block names as tick labels; stages are shaded bands. ``second`` (another
    ``indices`` frame, or the name of a second model in ``indices``) is drawn dashed; when the two models have
    different numbers of SE blocks x becomes the relative depth (block position / (number of blocks − 1),
    0..1) and the axis title says so. Traces carry ``meta = {"model", "metric"}``.
    """
    _require(indices, INDEX_COLUMNS, "indices")
    if isinstance(second, str):
        first, name_a = _one_model(indices[indices["model"] != second], model, "indices")
        frame_b, name_b = _one_model(indices, second, "indices")
    else:
        first, name_a = _one_model(indices, model, "indices")
        frame_b, name_b = None, None
        if second is not None:
            _require(second, INDEX_COLUMNS, "second indices")
            frame_b, name_b = _one_model(second, None, "second indices")
    metrics = _metric_list(first, metrics)
    if frame_b is not None:
        _metric_list(frame_b, metrics)

    models = [(name_a, first.sort_values("order", kind="stable").reset_index(drop=True), "solid")]
    if frame_b is not None:
        if name_b == name_a:
            name_b = f"{name_b} (2)"
        models.append((name_b, frame_b.sort_values("order", kind="stable").reset_index(drop=True), "dash"))
    sizes = [len(m[1]) for m in models]
    relative = len(set(sizes)) > 1

    def xpos(table: pd.DataFrame) -> np.ndarray:
        if relative:
            return np.arange(len(table)) / max(len(table) - 1, 1)
        return table["order"].to_numpy()

    fig = go.Figure()
    base = models[0][1]
    bx = xpos(base)
    # stage bands of the first model
    step = float(np.min(np.diff(bx))) if len(bx) > 1 else 1.0
    x_range = [float(bx.min()) - step / 2, float(bx.max()) + step / 2]
    for j, (stage, rows) in enumerate(base.groupby("stage", sort=True)):
        pos = bx[rows.index.to_numpy()]
        fig.add_vrect(
            x0=pos.min() - step / 2, x1=pos.max() + step / 2, fillcolor=_STAGE_SHADES[j % 2], line_width=0,
            layer="below", annotation_text=f"stage {stage}", annotation_position="top left",
            annotation_font_size=11,
        )
    for name, table, dash in models:
        x = xpos(table)
        custom = np.column_stack([
            table["block"].astype(str), table["stage"].astype(str),
            table["n_images"].astype(str) if "n_images" in table else np.full(len(table), "?"),
            table["n_classes"].astype(str) if "n_classes" in table else np.full(len(table), "?"),
        ])
        for k, metric in enumerate(metrics):
            color = _METRIC_COLORS.get(metric, _PALETTE[k % len(_PALETTE)])
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=table[metric].to_numpy(dtype=float),
                    mode="lines+markers",
                    line={"color": color, "dash": dash, "width": 2},
                    marker={"size": 8, "symbol": "circle" if dash == "solid" else "diamond-open"},
                    name=f"{_METRIC_LABELS.get(metric, metric)} — {name}",
                    meta={"model": name, "metric": metric},
                    customdata=custom,
                    hovertemplate=f"{name}<br>%{{customdata[0]}} (stage %{{customdata[1]}})<br>"
                    f"{_METRIC_LABELS.get(metric, metric)} = %{{y:.3f}}<br>"
                    "%{customdata[3]} classes, %{customdata[2]} images<extra></extra>",
                )
            )
    if relative:
        size_text = " and ".join(f"{n} has {s}" for (n, _, _), s in zip(models, sizes, strict=True))
        fig.update_xaxes(
            title_text=f"relative depth (block position / (SE blocks − 1), 0–1): {size_text} SE blocks",
            range=x_range,
        )
    else:
        names = list(base["block"].astype(str))
        if len(models) > 1:
            other = list(models[1][1]["block"].astype(str))
            names = [a if a == b else f"{a} / {b}" for a, b in zip(names, other, strict=True)]
        fig.update_xaxes(
            title_text="SE block (depth order)", tickmode="array", tickvals=list(bx), ticktext=names, range=x_range
        )
    bounded = all(m in ("specificity", "saturation", "mean_abs_1_minus_s", "share_near_0", "mean_gate")
                  for m in metrics)
    fig.update_yaxes(title_text="index value (unitless, 0–1)" if bounded else "index value (unitless)")
    if bounded:
        fig.update_yaxes(range=[-0.02, 1.05])

    def population(table: pd.DataFrame) -> str:
        nc, ni = _first(table, "n_classes"), _first(table, "n_images")
        return f"{nc if nc is not None else '?'} classes, n={ni if ni is not None else '?'} images"

    title_models = " vs ".join(f"{n} ({population(t)})" for n, t, _ in models)
    blocks_line = "; ".join(f"{n}: {_blocks_text(list(t['block'].astype(str)))}" for n, t, _ in models)
    method = _first(base, "specificity_method")
    thr = _first(base, "threshold")
    notes = []
    if "specificity" in metrics and method is not None:
        notes.append(f"specificity: {method}")
    if "saturation" in metrics and thr is not None:
        notes.append(f"saturation: share of channels with all-class mean s ≥ {thr:g}")
    if len(models) > 1:
        notes.append(f"dashed = {models[1][0]}; shaded bands = stages of {name_a}")
    notes.append(f"cf. {PAPER}, Fig. 6 (early gates class-agnostic, late gates class-specific / saturated)")
    what = " and ".join(_METRIC_LABELS.get(m, m) for m in metrics)
    _layout_title(fig, f"{what[0].upper() + what[1:]} by depth — {title_models}<br>{blocks_line}", "; ".join(notes))
    fig.update_layout(height=480, legend={"title": {"text": "index — model"}})
    return fig


# --------------------------------------------------------------------------------------------------- heatmap


def heatmap(
    channels: pd.DataFrame,
    block: str,
    classes: Iterable[str] | None = None,
    max_channels: int | None = None,
    *,
    model: str | None = None,
    all_classes: Iterable[str] | None = None,
) -> go.Figure:
    """Class × channel heatmap of the mean gate of one block (colour scale fixed to 0..1).

    ``classes`` defaults to every class (``"all"`` may be asked for explicitly). With ``max_channels`` and a wider
    block, only the ``max_channels`` channels whose mean gate varies most across the shown classes are kept
    (in channel order; ties by lower index), and the x-axis title says so. For many classes pass the means
    matrix to :func:`heatmap_matrix` instead of a long frame.
    """
    _require(channels, MEAN_COLUMNS, "channels")
    frame, model = _one_model(channels, model, "channels")
    (block,) = _resolve_blocks(frame, [block])
    shown = _resolve_classes(frame, classes)
    sub = frame[(frame["block"] == block) & frame["class"].isin(shown)]
    counts = _class_counts(sub)
    if sub.duplicated(["class", "channel"]).any():
        raise ValueError(f"duplicate (class, channel) rows in block {block!r}")
    table = sub.pivot(index="class", columns="channel", values="mean").reindex(index=shown).sort_index(axis=1)
    palette = set(map(str, frame["class"].unique())) | {str(c) for c in (all_classes or ())}
    return heatmap_matrix(table.to_numpy(dtype=float), shown, [counts.get(c, 0) for c in shown], model=model,
                          block=block, channel_ids=table.columns.to_numpy(), max_channels=max_channels,
                          all_classes=palette)


def heatmap_matrix(
    means: np.ndarray,
    classes: Sequence[str],
    counts: Sequence[int],
    *,
    model: str,
    block: str,
    channel_ids: Sequence[int] | np.ndarray | None = None,
    max_channels: int | None = None,
    all_classes: Iterable[str] | None = None,
) -> go.Figure:
    """:func:`heatmap` from a class × channel matrix of mean gates (``stats.class_means(block, classes)``), without
    a long frame: 1,000 classes × 2,048 channels is one array. ``counts`` are the classes' image counts,
    ``channel_ids`` the columns' channel indices (default 0..C-1). Past 60 classes the figure stops growing in
    height and leaves the class names to the hover text."""
    z = np.asarray(means, dtype=float)
    shown = [str(c) for c in classes]
    if z.ndim != 2 or z.shape[0] != len(shown) or len(counts) != len(shown):
        raise ValueError(f"means must be (classes, channels) with one row per class ({len(shown)}) and as many "
                         f"counts ({len(counts)}), got shape {z.shape}")
    if not shown:
        raise ValueError("no class chosen")
    x = np.arange(z.shape[1]) if channel_ids is None else np.asarray(channel_ids)
    count_of = {c: int(n) for c, n in zip(shown, counts, strict=True)}
    colors = class_colors(set(shown) | {str(c) for c in (all_classes or ())})
    n_total = z.shape[1]
    x_title = "channel index"
    if max_channels is not None:
        max_channels = _positive_int(max_channels, "max_channels")
        if n_total > max_channels:
            var = np.nan_to_num(np.nanvar(z, axis=0), nan=-1.0)
            keep = np.sort(np.argsort(-var, kind="stable")[:max_channels])
            z, x = z[:, keep], x[keep]
            x_title = (
                f"channel index (the {max_channels} of {n_total} channels with the largest variance across classes)"
            )
    subset = z.shape[1] < n_total
    many = len(shown) > _MAX_HEATMAP_ROWS_HIGH
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(c) for c in x] if subset else x,
            y=shown,
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            colorbar={"title": {"text": "mean gate s"}},
            customdata=np.repeat(np.array([count_of[c] for c in shown])[:, None], z.shape[1], axis=1),
            hovertemplate="%{y} (n=%{customdata})<br>channel %{x}<br>mean s = %{z:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text=x_title, type="category" if subset else "linear")
    if many:  # a thousand tick labels are unreadable: the class is in the hover text
        fig.update_yaxes(title_text=f"class ({len(shown)}; names on hover)", autorange="reversed",
                         showticklabels=False)
    else:
        fig.update_yaxes(title_text="class", autorange="reversed", tickmode="array", tickvals=shown,
                         ticktext=[f"<span style='color:{colors[c]}'>■</span> {c}" for c in shown])
    _layout_title(
        fig,
        f"Mean gate per class and channel — {model}: {block}<br>{_classes_text(shown, count_of)}",
        f"colour = mean of s over the class's images (fixed scale 0–1). "
        f"cf. {PAPER}, Fig. 6 (all channels of one panel)",
    )
    rows = min(len(shown), _MAX_HEATMAP_ROWS_HIGH)
    fig.update_layout(height=max(320, 40 * rows + 200), legend={"title": {"text": ""}})
    return fig


# --------------------------------------------------------------------------------------------------- one image


def image_percentiles(
    channels: pd.DataFrame,
    block: str,
    cls: str,
    gates: np.ndarray | Sequence[float],
    image_name: str,
    *,
    model: str | None = None,
    all_classes: Iterable[str] | None = None,
) -> go.Figure:
    """One image's gates in ``block`` against the per-channel distribution of its class ``cls``.

    Top: percentile (0..100) of the image's gate within the class's per-channel histogram
    (:func:`channel_percentiles`), with 5/50/95 reference lines. Bottom: the image's gates, the class mean and the
    all-class mean. ``gates[i]`` belongs to the i-th channel of the block in channel order. With one image in
    ``cls`` the subtitle says that percentiles within it are meaningless. Where the class's per-channel
    histograms are not kept (``hist`` None: large statistics keep them for a bounded set of classes), the
    percentiles are taken among all images and the panel title and subtitle say so (trace meta
    ``"percentile"`` either way).
    """
    model, block, cls, colors, shown, sub, counts = _one_class_view(channels, model, block, cls, all_classes,
                                                                    CHANNEL_COLUMNS)
    per = _per_channel(sub, block, cls)
    values = np.asarray(gates, dtype=np.float64)
    if values.ndim != 1 or values.size != len(per):
        raise ValueError(
            f"gates must be a 1-D array with one value per channel of {block} ({len(per)}), got shape {values.shape}"
        )
    within = cls
    if not _has_hist(per):
        if ALL_CLASS not in shown:
            raise ValueError(f"per-channel histograms are not kept for class {cls!r} and the frame has no "
                             f"{ALL_CLASS!r} rows to rank the image among")
        within = ALL_CLASS
    hist = _stack_hist(per if within == cls else _per_channel(sub, block, ALL_CLASS).reindex(per.index))
    pct = channel_percentiles(hist, values)
    x = per.index.to_numpy()
    mean = per["mean"].to_numpy(dtype=float)
    std = per["std"].to_numpy(dtype=float)
    color = colors[cls]
    label = f"{cls} (n={counts.get(cls, 0)})"
    dense = len(x) > 120

    among = (f"within class {label}" if within == cls else
             f"among all {counts.get(ALL_CLASS, 0)} images (class {cls}: per-channel histograms not kept)")
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.55, 0.45], vertical_spacing=0.1,
        subplot_titles=[f"percentile of the image's gate {among}", "gate values"],
    )
    custom = np.column_stack([values, mean, std])
    fig.add_trace(
        go.Scatter(
            x=x,
            y=pct,
            mode="markers" if dense else "lines+markers",
            marker={"color": color, "size": 4 if dense else 6},
            line={"color": _rgba(color, 0.5), "width": 1},
            name=f"percentile in {within}",
            meta="percentile",
            customdata=custom,
            hovertemplate="channel %{x}<br>percentile %{y:.1f}<br>image s = %{customdata[0]:.3f}<br>"
            f"{cls} mean = %{{customdata[1]:.3f}} ± %{{customdata[2]:.3f}}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for level, dash in ((50, "dash"), (5, "dot"), (95, "dot")):
        fig.add_hline(y=level, line={"color": "grey", "dash": dash, "width": 1}, row=1, col=1)
    fig.add_trace(
        go.Scatter(x=x, y=mean, mode="lines", line=_line(cls, colors, 2), name=f"{label} mean", meta="class mean",
                   legendgroup=cls, hovertemplate=f"{cls} mean<br>channel %{{x}}<br>s = %{{y:.3f}}<extra></extra>"),
        row=2,
        col=1,
    )
    if len(shown) > 1:
        ref = _per_channel(sub, block, ALL_CLASS)["mean"].reindex(x).to_numpy(dtype=float)
        fig.add_trace(
            go.Scatter(x=x, y=ref, mode="lines", line=_line(ALL_CLASS, colors),
                       name=f"all images (n={counts.get(ALL_CLASS, 0)}) mean", meta="all",
                       hovertemplate="all images mean<br>channel %{x}<br>s = %{y:.3f}<extra></extra>"),
            row=2,
            col=1,
        )
    fig.add_trace(
        go.Scatter(x=x, y=values, mode="markers", marker={"color": "black", "size": 4 if dense else 6,
                                                          "symbol": "x-thin-open" if not dense else "circle"},
                   name=f"{image_name} gates", meta="image",
                   hovertemplate=f"{image_name}<br>channel %{{x}}<br>s = %{{y:.3f}}<extra></extra>"),
        row=2,
        col=1,
    )
    fig.update_yaxes(title_text="percentile within class (%)", range=[-2, 102], row=1, col=1)
    fig.update_yaxes(title_text="gate s (unitless, 0–1)", range=[-0.02, 1.02], row=2, col=1)
    fig.update_xaxes(title_text="channel index", row=2, col=1)
    n_bins = hist.shape[1]
    one = (f"class {cls} has one image: percentiles within a one-image class are meaningless; "
           if counts.get(cls, 0) == 1 and within == cls else "")
    whose = ("the class's" if within == cls else
             f"all images' (the per-channel histograms of class {cls} are not kept for this class: the statistics "
             "keep them for a bounded set of classes)")
    _layout_title(
        fig,
        f"Image {image_name} against class {label} — {model}: {block}<br>{_classes_text(shown, counts)}",
        f"{one}percentile = CDF of {whose} per-channel histogram ({n_bins} bins over [0, 1], linear within a "
        f"bin); dashed 50, dotted 5/95; dashed dark-grey line = all images. cf. {PAPER}, Fig. 7",
        top=160,
    )
    fig.update_layout(height=620, legend={"title": {"text": ""}})
    return fig


# --------------------------------------------------------------------------------------------------- export

_IMAGE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
_CHROMIUM_CANDIDATES = (
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/usr/bin/google-chrome-stable",
)


_MODE_COLORS = {"identity": "#D62728", "mean": "#1F77B4"}
_KIND_SYMBOLS = {"block": "circle", "stage": "square", "last": "diamond"}


def _pareto(part: pd.DataFrame, y: str, higher_is_better: bool) -> pd.DataFrame:
    """Rows not dominated in (parameters saved: more is better, ``y``)."""
    sign = 1 if higher_is_better else -1
    rows = part.dropna(subset=[y]).assign(_score=lambda f: sign * f[y])
    rows = rows.sort_values(["params_saved_pct", "_score"], ascending=[False, False])
    best, front = -np.inf, []
    for _, r in rows.iterrows():
        if r["_score"] > best:
            front.append(r)
            best = r["_score"]
    return pd.DataFrame(front).sort_values("params_saved_pct") if front else rows.iloc[:0]


def sweep_figure(sweep: pd.DataFrame, reference: dict | None = None) -> go.Figure:
    """Accuracy change against parameters saved for every ablation of a sweep, with the Pareto front per mode.

    ``sweep`` is :func:`senet_viz.ablation.sweep`'s frame. ``reference`` (e.g. ``paper.PAPER_LAST_STAGE_CLAIM``)
    adds the paper's point ``(params_saved_share, top1_change_points)`` as a star, labelled with its note.
    When no image carries a label in the model's classes (top-1 cannot be scored), two panels show instead the
    top-1 agreement with the full network (%) and KL(full || ablated) (nats) against parameters saved.
    """
    _require(sweep, ("model", "kind", "config", "mode", "d_top1", "params_saved_pct", "agreement", "kl"), "sweep")
    scored = not sweep["d_top1"].isna().all()
    model = str(sweep["model"].iloc[0])
    panels = [("d_top1", "top-1 change (percentage points)", True)] if scored else [
        ("agreement_pct", "top-1 agreement with the full network (%)", True),
        ("kl", "KL(full ‖ ablated) (nats)", False)]
    sweep = sweep.assign(agreement_pct=100 * sweep["agreement"].astype(float))
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.08,
                        subplot_titles=[label for _, label, _ in panels] if len(panels) > 1 else None)
    for col, (y, _, higher) in enumerate(panels, start=1):
        for mode, part in sweep.groupby("mode", sort=False):
            color = _MODE_COLORS.get(str(mode), "#7F7F7F")
            for kind, sub in part.groupby("kind", sort=False):
                fig.add_trace(go.Scatter(
                    x=sub["params_saved_pct"], y=sub[y], mode="markers", name=f"{mode}: {kind}",
                    legendgroup=f"{mode}: {kind}", showlegend=col == 1,
                    marker={"color": color, "symbol": _KIND_SYMBOLS.get(str(kind), "circle"), "size": 9,
                            "line": {"width": 0.5, "color": "white"}},
                    text=sub["config"], meta={"mode": mode, "kind": kind, "metric": y},
                    customdata=np.stack([sub["agreement"].astype(float), sub["kl"].astype(float),
                                         sub["d_top1"].astype(float)], axis=1),
                    hovertemplate="%{text}<br>params saved %{x:.2f}%<br>top-1 change %{customdata[2]:+.2f} points"
                                  "<br>agreement %{customdata[0]:.1%}<br>KL %{customdata[1]:.3f} nats<extra>"
                                  + str(mode) + "</extra>"), row=1, col=col)
            front_df = _pareto(part, y, higher)
            fig.add_trace(go.Scatter(x=front_df["params_saved_pct"], y=front_df[y], mode="lines",
                                     name=f"{mode}: Pareto front", legendgroup=f"{mode}: Pareto front",
                                     showlegend=col == 1, line={"color": color, "width": 1.5, "dash": "dot"},
                                     meta={"mode": mode, "kind": "pareto", "metric": y}, hoverinfo="skip"),
                          row=1, col=col)
        fig.update_xaxes(title="parameters saved (% of the full network)", row=1, col=col)
        fig.update_yaxes(title=panels[col - 1][1], row=1, col=col)
    if reference is not None and scored:
        fig.add_trace(go.Scatter(
            x=[100 * reference["params_saved_share"]], y=[reference["top1_change_points"]], mode="markers+text",
            name=f"paper: {reference.get('model', '')} {reference.get('blocks', '')}", text=["paper"],
            textposition="top center", marker={"symbol": "star", "size": 15, "color": "#FF7F0E"},
            meta={"kind": "reference"}, hovertext=reference.get("note", ""), hoverinfo="text"))
    if scored:
        fig.add_hline(y=0, line={"color": "#999", "width": 1})
    n = int(sweep["n_images"].iloc[0]) if "n_images" in sweep else None
    full = sweep["full_top1"].iloc[0] if "full_top1" in sweep else None
    ncal = int(sweep["n_calibration"].iloc[0]) if "n_calibration" in sweep else 0
    subtitle = (f"{n} evaluation images" + (f", mean gates fitted on {ncal} other images" if ncal else "")
                + (f"; full network top-1 {full:.1%}" if full is not None and not pd.isna(full) else
                   "; no image has a label among the model's classes, so top-1 cannot be scored")
                + f". identity = gate 1 (the paper's removal), mean = gate frozen to its mean. cf. {PAPER}")
    what = "top-1 change" if scored else "agreement and KL"
    _layout_title(fig, f"SE ablation sweep — {model}: {what} vs parameters saved", subtitle)
    fig.update_layout(legend={"title": {"text": "mode: configuration"}}, height=520)
    return fig


def cost_figure(blocks: pd.DataFrame, model: str, total_params: int) -> go.Figure:
    """SE parameters per block (bars coloured by stage) as a share of the whole network."""
    _require(blocks, ("name", "stage", "params"), "cost blocks")
    fig = go.Figure()
    for stage, sub in blocks.groupby("stage", sort=True):
        fig.add_trace(go.Bar(x=sub["name"], y=100 * sub["params"] / total_params, name=f"stage {stage}",
                             customdata=sub["params"], meta={"stage": int(stage)},
                             hovertemplate="%{x}: %{customdata:,} parameters (%{y:.2f}%)<extra></extra>"))
    se_share = 100 * blocks["params"].sum() / total_params
    _layout_title(fig, f"SE parameters per block — {model}",
                  f"all SE blocks: {blocks['params'].sum():,} of {total_params:,} parameters ({se_share:.1f}%)")
    fig.update_layout(legend={"title": {"text": "stage"}})
    fig.update_xaxes(title="SE block")
    fig.update_yaxes(title="parameters (% of the network)")
    return fig


def gradcam_figure(image: np.ndarray, cams: dict[str, np.ndarray], title: str) -> go.Figure:
    """The image with one Grad-CAM overlay per entry of ``cams`` (label -> H x W map in [0, 1]), side by side."""
    labels = list(cams)
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, horizontal_spacing=0.03)
    for i, label in enumerate(labels, start=1):
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=1, col=i)
        fig.add_trace(go.Heatmap(z=cams[label], colorscale="Jet", zmin=0, zmax=1, opacity=0.45, showscale=i == 1,
                                 colorbar={"title": {"text": "Grad-CAM"}}, meta={"cam": label},
                                 hovertemplate="x %{x}, y %{y}: %{z:.2f}<extra>" + label + "</extra>"), row=1, col=i)
        fig.update_xaxes(showticklabels=False, row=1, col=i)
        fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor=f"x{i if i > 1 else ''}", row=1,
                         col=i)
    _layout_title(fig, title, "Grad-CAM (captum LayerGradCam) at the stage's last SE-bearing block, "
                              "normalised to its maximum")
    fig.update_layout(height=420)
    return fig


def channel_attribution_figure(attribution: np.ndarray, gates: np.ndarray, model: str, block: str, cls: str
                               ) -> go.Figure:
    """Gradient x gate per SE channel of one block for one class score, channels sorted by attribution."""
    order = np.argsort(-attribution)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("attribution s·∂score/∂s", "gate s of this image"))
    x = [str(c) for c in order]
    fig.add_trace(go.Bar(x=x, y=attribution[order], marker_color=np.where(attribution[order] >= 0, "#2CA02C",
                                                                          "#D62728"),
                         name="attribution", hovertemplate="channel %{x}: %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=gates[order], marker_color="#7F7F7F", name="gate s",
                         hovertemplate="channel %{x}: s = %{y:.3f}<extra></extra>"), row=2, col=1)
    _layout_title(fig, f"SE channel attribution — {model}: {block}, class '{cls}'",
                  f"{len(attribution)} channels, sorted by attribution; sum = {attribution.sum():.3f} "
                  "(gradient × activation at the gate, captum)")
    fig.update_xaxes(title="channel (sorted)", type="category", showticklabels=len(x) <= 64, row=2, col=1)
    fig.update_yaxes(title="attribution", row=1, col=1)
    fig.update_yaxes(title="s", range=[0, 1.05], row=2, col=1)
    fig.update_layout(height=520, showlegend=False)
    return fig


def format_macs(macs: float) -> str:
    """A MAC count in the unit that shows its digits: 3.8605 GMACs, 1.58 MMACs, 8.19 kMACs."""
    for unit, scale in (("GMACs", 1e9), ("MMACs", 1e6), ("kMACs", 1e3)):
        if abs(macs) >= scale:
            return f"{macs / scale:.4g} {unit}" if unit != "GMACs" else f"{macs / scale:.4f} {unit}"
    return f"{macs:,.0f} MACs"


# Export size: wide enough that no title, subtitle or legend is cut; scale 2 for a sharp PNG (3200 px wide).
EXPORT_WIDTH, EXPORT_HEIGHT, EXPORT_SCALE = 1600, 900, 2


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
    ``.jpg``, ``.webp``: ``fig.write_image`` through kaleido 1.x, which needs a Chrome/Chromium: the one found by
    :func:`find_chromium` is handed to kaleido (via choreographer's ``BROWSER_PATH`` environment variable, set
    for this process if it was unset or wrong); without one a ``RuntimeError`` says how to install it. Extra
    keyword arguments go to ``write_html`` / ``write_image``; images default to the figure's own width (else
    ``EXPORT_WIDTH``, 1600) and at least ``EXPORT_HEIGHT`` (900) high at scale 2, where nothing is cut
    (plotly's 700 x 500 default cuts long titles and legends).
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
    if os.environ.get("BROWSER_PATH") != browser:
        os.environ["BROWSER_PATH"] = browser  # read by choreographer when kaleido starts its browser
    kwargs.setdefault("width", int(fig.layout.width or EXPORT_WIDTH))
    kwargs.setdefault("height", max(int(fig.layout.height or 0), EXPORT_HEIGHT))
    kwargs.setdefault("scale", EXPORT_SCALE if suffix in (".png", ".jpg", ".jpeg", ".webp") else 1)
    try:
        fig.write_image(out, format=_IMAGE_FORMATS[suffix], **kwargs)
    except RuntimeError as exc:
        if "chrome" in str(exc).lower():
            raise RuntimeError(f"{_NO_CHROMIUM} (kaleido could not start {browser}: {exc})") from exc
        raise
    return out
