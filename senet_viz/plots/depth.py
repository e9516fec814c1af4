"""Per-block indices (class specificity, saturation, ...) against depth, for one or two models."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from senet_viz.plots.common import INDEX_COLUMNS, PALETTE, PAPER, blocks_text, layout_title, one_model, require_columns

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
    require_columns(indices, INDEX_COLUMNS, "indices")
    if isinstance(second, str):
        first, name_a = one_model(indices[indices["model"] != second], model, "indices")
        frame_b, name_b = one_model(indices, second, "indices")
    else:
        first, name_a = one_model(indices, model, "indices")
        frame_b, name_b = None, None
        if second is not None:
            require_columns(second, INDEX_COLUMNS, "second indices")
            frame_b, name_b = one_model(second, None, "second indices")
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
            color = _METRIC_COLORS.get(metric, PALETTE[k % len(PALETTE)])
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
    blocks_line = "; ".join(f"{n}: {blocks_text(list(t['block'].astype(str)))}" for n, t, _ in models)
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
    layout_title(fig, f"{what[0].upper() + what[1:]} by depth — {title_models}<br>{blocks_line}", "; ".join(notes))
    fig.update_layout(height=480, legend={"title": {"text": "index — model"}})
    return fig
