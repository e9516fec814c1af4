"""Figures of single SE channels: class selectivity against depth, one channel's gates per class, and where in the
top images the channel's SE input is strongest (inputs from :mod:`senet_viz.analysis.channels`,
:mod:`senet_viz.analysis.exemplars` and :mod:`senet_viz.analysis.channel_maps`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from senet_viz.plots.common import ALL_CLASS, class_colors, layout_title

SUMMARY_COLUMNS = ("model", "block", "stage", "order", "selectivity_q25", "selectivity_median", "selectivity_q75")
_COLORS = {"selectivity": "#1F77B4", "eta2": "#D62728"}
_LABELS = {"selectivity": "selectivity (Morcos et al. 2018)", "eta2": "eta² (variance share of class)"}
MAX_DISTRIBUTION_CLASSES = 24
# Inferno-like, transparent at 0: where the channel's input is not positive the image shows as is.
_MAP_SCALE = [[0.0, "rgba(0,0,4,0)"], [0.08, "rgba(87,16,110,0.45)"], [0.4, "rgba(188,55,84,0.6)"],
              [0.7, "rgba(249,142,9,0.7)"], [1.0, "rgba(252,255,164,0.8)"]]


def selectivity_depth(summary: pd.DataFrame, trend: dict | None = None, metrics: Sequence[str] = ("selectivity",)
                      ) -> go.Figure:
    """Median and quartiles across each block's channels of the per-channel selectivity (and/or ``"eta2"``),
    blocks in depth order; ``summary`` from :func:`senet_viz.analysis.channels.block_summary`, ``trend`` from
    :func:`senet_viz.analysis.channels.depth_trend` (said in the subtitle). Traces carry ``meta = {"metric",
    "part"}``."""
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing or summary.empty:
        raise ValueError(f"summary lacks column(s) {missing} or is empty; make it with channels.block_summary")
    table = summary.sort_values("order", kind="stable").reset_index(drop=True)
    models = sorted(set(map(str, table["model"])))
    if len(models) != 1:
        raise ValueError(f"summary holds {len(models)} models: {models}; draw one at a time")
    x = table["block"].astype(str).tolist()
    fig = go.Figure()
    for metric in metrics:
        if f"{metric}_median" not in table.columns:
            raise ValueError(f"unknown metric {metric!r}; valid: {sorted(_LABELS)}")
        color, label = _COLORS.get(metric, "#444444"), _LABELS.get(metric, metric)
        q25, q75 = table[f"{metric}_q25"].to_numpy(float), table[f"{metric}_q75"].to_numpy(float)
        fig.add_trace(go.Scatter(x=x, y=q75, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip",
                                 meta={"metric": metric, "part": "q75"}))
        fig.add_trace(go.Scatter(x=x, y=q25, mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=rgba(color, 0.18), name=f"{label}: quartiles",
                                 meta={"metric": metric, "part": "q25"}, hoverinfo="skip"))
        custom = np.column_stack([q25, q75, table["channels"].astype(str) if "channels" in table else [""] * len(x)])
        fig.add_trace(go.Scatter(x=x, y=table[f"{metric}_median"].to_numpy(float), mode="lines+markers",
                                 line={"color": color, "width": 2}, marker={"size": 8}, name=f"{label}: median",
                                 meta={"metric": metric, "part": "median"}, customdata=custom,
                                 hovertemplate="%{x}<br>median %{y:.3f}<br>quartiles %{customdata[0]:.3f}–"
                                               "%{customdata[1]:.3f}<br>%{customdata[2]} channels<extra></extra>"))
    single = "class_means_from" in table and (table["class_means_from"] == "single images").all()
    n_classes = int(table["n_classes"].max()) if "n_classes" in table else 0
    parts = [f"across each block's channels; class means over {n_classes} classes"]
    if single:
        parts.append("every class is ONE image: a 'class mean' is a single image")
    if trend is not None and np.isfinite(trend.get("rho", np.nan)):
        parts.append(f"Spearman ρ (median vs depth) = {trend['rho']:.2f}, p = {trend['p_value']:.3g}: "
                     f"{trend['verdict']}")
    if trend is not None and trend.get("left_out"):
        parts.append("left out of ρ: " + ", ".join(b["block"] for b in trend["left_out"]) + " (constant gate)")
    layout_title(fig, f"Class selectivity per SE channel by depth — {models[0]}", " · ".join(parts))
    fig.update_layout(legend={"title": {"text": ""}}, height=460)
    fig.update_xaxes(title_text="SE block (depth order)", type="category")
    fig.update_yaxes(title_text="per-channel index (0–1)", range=[-0.02, 1.02])
    return fig


def rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def channel_distribution(values: pd.DataFrame, model: str, block: str, channel: int, *,
                         max_classes: int = MAX_DISTRIBUTION_CLASSES, all_classes: Iterable[str] | None = None,
                         grouping: str = "labels") -> go.Figure:
    """One channel's gate per class: a box with every image as a point, classes sorted by mean gate (highest
    first), at most ``max_classes`` of them (the highest means; the subtitle says how many are left out), then
    "all" images. ``values``: one row per image with ``class`` and ``gate``."""
    if not {"class", "gate"} <= set(values.columns) or values.empty:
        raise ValueError("values need one row per image with 'class' and 'gate'")
    stats = values.groupby("class")["gate"].agg(["mean", "count"]).sort_values("mean", ascending=False,
                                                                                  kind="stable")
    shown = list(stats.index[:max_classes])
    colors = class_colors(set(map(str, stats.index)) | set(map(str, all_classes or [])))
    fig = go.Figure()
    for cls in [*shown, ALL_CLASS]:
        gates = values["gate"] if cls == ALL_CLASS else values.loc[values["class"] == cls, "gate"]
        n = len(gates)
        fig.add_trace(go.Box(y=gates.to_numpy(float), name=f"{cls} (n={n})", boxpoints="all", jitter=0.4,
                             pointpos=0, marker={"size": 4, "color": colors.get(str(cls), "#404040")},
                             line={"color": colors.get(str(cls), "#404040")}, boxmean=True,
                             meta={"class": str(cls)}, hovertemplate=f"{cls}<br>s = %{{y:.3f}}<extra></extra>"))
    left_out = len(stats) - len(shown)
    sub = f"one point per image, grouped by {grouping}; classes sorted by mean gate"
    if left_out > 0:
        sub += f"; the {len(shown)} classes with the highest mean of {len(stats)} ({left_out} left out)"
    layout_title(fig, f"{block} channel {channel}: gate per class — {model}", sub)
    fig.update_layout(showlegend=False, height=440)
    fig.update_yaxes(title_text="gate s", range=[-0.02, 1.02])
    fig.update_xaxes(tickangle=-35)
    return fig


def pregate_figure(images: Sequence[np.ndarray], maps: np.ndarray, captions: Sequence[str], title: str,
                   columns: int = 4) -> go.Figure:
    """Each image with the channel's SE-input map over it (positive part, one colour scale for every image, so
    strengths compare), ``columns`` per row; ``maps`` (N, H, W) at the images' size."""
    n = len(images)
    if n == 0 or len(maps) != n or len(captions) != n:
        raise ValueError(f"{n} images, {len(maps)} maps and {len(captions)} captions: need the same number, >= 1")
    cols = min(columns, n)
    rows = -(-n // cols)
    positive = np.clip(np.asarray(maps, np.float32), 0, None)
    peak = float(positive.max()) if positive.size else 0.0
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(captions), horizontal_spacing=0.02,
                        vertical_spacing=0.08)
    for i in range(n):
        r, c = i // cols + 1, i % cols + 1
        axis = i + 1
        fig.add_trace(go.Image(z=images[i], hoverinfo="skip"), row=r, col=c)
        fig.add_trace(go.Heatmap(z=positive[i], colorscale=_MAP_SCALE, zmin=0, zmax=peak if peak > 0 else 1,
                                 showscale=i == 0, meta={"image": i},
                                 colorbar={"title": {"text": "input"}},
                                 hovertemplate="x %{x}, y %{y}: %{z:.3f}<extra></extra>"), row=r, col=c)
        fig.update_xaxes(showticklabels=False, row=r, col=c)
        fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor=f"x{axis if axis > 1 else ''}",
                         row=r, col=c)
    layout_title(fig, title, "the channel's map of the SE block's input (what the squeeze pools), upsampled "
                              "bilinearly over the crop the model saw; positive part, one scale for all images")
    fig.update_layout(height=120 + 260 * rows)
    return fig
