"""Per-block indices (class specificity, saturation, ...) against depth, for one or two models."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from senet_viz.analysis.verdict_blocks import inert_of_row
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

CHANCE_INDICES = ("eta2", "spread", "saturation", "cross_class_corr", "selectivity_median")
"""The indices of :func:`senet_viz.analysis.chance.chance_table` (each has ``_chance``, ``_null_*``, ``_ci_*``)."""
_GAPPED = ("specificity", "spread", "eta2", "saturation", "cross_class_corr")


def chance_index(metric: str, method: str | None = None) -> str | None:
    """The chance table's index behind an ``indices`` column (``specificity`` is eta² or the spread, by its
    ``specificity_method``); None when the chance table has none."""
    if metric == "specificity":
        return "spread" if method == "spread" else "eta2"
    return metric if metric in CHANCE_INDICES else None


def constant_blocks(indices: pd.DataFrame) -> dict[str, str]:
    """Block -> why its class indices and saturation are not plotted: its gate is the same for every image
    (:func:`senet_viz.analysis.verdict_blocks.inert_of_row`: switched off, or constant)."""
    out = {}
    for _, row in indices.iterrows():
        inert = inert_of_row(row)
        if inert is not None:
            out[inert.block] = inert.reason
    return out


def _rgba(color: str, alpha: float) -> str:
    c = color.lstrip("#")
    return f"rgba({int(c[0:2], 16)},{int(c[2:4], 16)},{int(c[4:6], 16)},{alpha})"


def _fmt(v: float, spec: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def _chance_rows(table: pd.DataFrame, chance: pd.DataFrame | None, metric: str) -> dict[str, np.ndarray] | None:
    """The chance columns of ``metric`` aligned to ``table``'s blocks (NaN where unknown), or None."""
    if chance is None or chance.empty or "block" not in chance.columns:
        return None
    methods = table["specificity_method"] if "specificity_method" in table else pd.Series([None] * len(table))
    rows = chance.drop_duplicates("block").set_index("block").reindex(table["block"].astype(str))
    out: dict[str, np.ndarray] = {}
    for part in ("chance", "null_lo", "null_hi", "ci_lo", "ci_hi", "p"):
        vals = np.full(len(table), np.nan)
        for i, method in enumerate(methods):
            name = chance_index(metric, method)
            col = f"{name}_{part}" if name else None
            if part == "chance" and name == "eta2" and col not in rows.columns:
                col = "eta2_chance_exact"  # statistics alone: the exact expectation
            if col in rows.columns:
                vals[i] = float(pd.to_numeric(rows[col].iloc[i], errors="coerce"))
        out[part] = vals
    return out if any(np.isfinite(v).any() for v in out.values()) else None


def _segments(ok: np.ndarray) -> list[np.ndarray]:
    idx = np.flatnonzero(ok)
    return [s for s in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(s)] if len(idx) else []


def chance_caption(chance: pd.DataFrame | None) -> str:
    """"chance band: N label permutations, seed S; error bars: ..." for a chance table ("" when it has none)."""
    if chance is None or chance.empty or "n_permutations" not in chance.columns:
        return "chance level: exact expectation (no per-image gates: no band, no interval)" \
            if chance is not None and not chance.empty else ""
    # the row of a block that was permuted (a constant block, or one that cannot be told, has 0 permutations)
    first = chance.loc[pd.to_numeric(chance["n_permutations"], errors="coerce").fillna(0).idxmax()]
    level = float(first.get("level", 0.95))
    permuted = int(first["n_permutations"]) if pd.notna(first["n_permutations"]) else 0
    band = (f"shaded: chance band (central {level:.0%} of {permuted} label permutations, seed {int(first['seed'])}), "
            "dotted: its mean" if permuted else
            f"no chance band ({first.get('cannot_tell') or 'no permutations'})")
    return (f"{band}; error bars: {level:.0%} bootstrap interval over images "
            f"({int(first['n_bootstrap'])} Poisson resamples); n = {int(first['n_images'])} labelled images in "
            f"{int(first['n_classes'])} classes")


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


def _add_index(fig: go.Figure, x: np.ndarray, y: np.ndarray, table: pd.DataFrame, name: str, metric: str,
               color: str, dash: str, rows: dict[str, np.ndarray] | None) -> None:
    label = _METRIC_LABELS.get(metric, metric)
    n = len(table)
    custom = [table["block"].astype(str), table["stage"].astype(str),
              table["n_images"].astype(str) if "n_images" in table else np.full(n, "?"),
              table["n_classes"].astype(str) if "n_classes" in table else np.full(n, "?")]
    hover = (f"{name}<br>%{{customdata[0]}} (stage %{{customdata[1]}})<br>{label} = %{{y:.3f}}<br>"
             "%{customdata[3]} classes, %{customdata[2]} images")
    error = None
    if rows is not None:
        custom += [[_fmt(v) for v in rows["chance"]], [_fmt(v) for v in rows["null_lo"]],
                   [_fmt(v) for v in rows["null_hi"]], [_fmt(v) for v in rows["ci_lo"]],
                   [_fmt(v) for v in rows["ci_hi"]], [_fmt(v, ".3g") for v in rows["p"]]]
        hover += ("<br>95% interval %{customdata[7]}–%{customdata[8]}<br>chance %{customdata[4]} "
                  "(band %{customdata[5]}–%{customdata[6]}), p = %{customdata[9]}")
        lo, hi = rows["ci_lo"], rows["ci_hi"]
        if np.isfinite(lo).any():
            error = {"type": "data", "symmetric": False, "array": np.where(np.isfinite(y), hi - y, np.nan),
                     "arrayminus": np.where(np.isfinite(y), y - lo, np.nan), "color": color, "thickness": 1.5,
                     "width": 5}
        band_ok = np.isfinite(rows["null_lo"]) & np.isfinite(rows["null_hi"]) & np.isfinite(y)
        for j, seg in enumerate(_segments(band_ok)):
            half = 0.12 * (float(np.min(np.diff(x))) if len(x) > 1 else 1.0)  # a lone block: a short band
            xs = np.concatenate([x[seg] - half, x[seg][::-1] + half]) if len(seg) == 1 else \
                np.concatenate([x[seg], x[seg][::-1]])
            ys = np.concatenate([rows["null_hi"][seg], rows["null_lo"][seg][::-1]])
            fig.add_trace(go.Scatter(x=xs, y=ys, fill="toself", fillcolor=_rgba(color, 0.18), mode="lines",
                                     line={"width": 0}, hoverinfo="skip", legendgroup=f"band-{metric}",
                                     showlegend=j == 0, name=f"chance band — {label}",
                                     meta={"model": name, "metric": metric, "kind": "chance band"}))
        level = np.where(np.isfinite(y), rows["chance"], np.nan)
        if np.isfinite(level).any():
            fig.add_trace(go.Scatter(x=x, y=level, mode="lines", line={"color": color, "dash": "dot", "width": 1},
                                     name=f"chance level — {label}", hoverinfo="skip",
                                     meta={"model": name, "metric": metric, "kind": "chance level"}))
    fig.add_trace(go.Scatter(
        x=x, y=y, mode="lines+markers", line={"color": color, "dash": dash, "width": 2},
        marker={"size": 8, "symbol": "circle" if dash == "solid" else "diamond-open"},
        error_y=error, name=f"{label} — {name}", meta={"model": name, "metric": metric},
        customdata=np.column_stack(custom), hovertemplate=hover + "<extra></extra>"))


def depth_profile(
    indices: pd.DataFrame,
    second: pd.DataFrame | str | None = None,
    metrics: str | Iterable[str] = ("specificity", "saturation"),
    *,
    model: str | None = None,
    chance: pd.DataFrame | None = None,
) -> go.Figure:
    """Class specificity and saturation (or other ``indices`` columns) against depth, for one or two models.

    x is the block ``order`` with block names as tick labels; stages are shaded bands. ``second`` (another
    ``indices`` frame, or the name of a second model in ``indices``) is drawn dashed; when the two models have
    different numbers of SE blocks x becomes the relative depth (block position / (number of blocks − 1),
    0..1) and the axis title says so. Traces carry ``meta = {"model", "metric"}`` (chance traces also ``"kind"``:
    "chance band", "chance level"; the constant blocks' marks ``"kind": "constant"``).

    ``chance`` (the first model's :func:`senet_viz.analysis.chance.chance_table`, or its exact levels alone) adds,
    per index that has one, the chance band (shaded, ``null_lo``..``null_hi``), the chance level (dotted) and the
    bootstrap interval (error bars). A block whose gate is constant over the images (:func:`constant_blocks`) is a
    gap in the class indices and saturation, marked at the foot of the chart with the reason.
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
    for m, (name, table, dash) in enumerate(models):
        x = xpos(table)
        constant = constant_blocks(table)
        off = table["block"].astype(str).isin(constant).to_numpy()
        for k, metric in enumerate(metrics):
            color = _METRIC_COLORS.get(metric, PALETTE[k % len(PALETTE)])
            y = table[metric].to_numpy(dtype=float).copy()
            if metric in _GAPPED:
                y[off] = np.nan
            rows = _chance_rows(table, chance, metric) if m == 0 else None
            _add_index(fig, x, y, table, name, metric, color, dash, rows)
        if constant and any(g in metrics for g in _GAPPED):
            fig.add_trace(go.Scatter(
                x=x[off], y=np.zeros(int(off.sum())), mode="markers+text", text=["off"] * int(off.sum()),
                textposition="top center", marker={"symbol": "x-thin-open", "size": 11, "color": "#555555",
                                                   "line": {"width": 2}},
                name=f"constant gate: no class index — {name}", meta={"model": name, "metric": "", "kind": "constant"},
                customdata=[[b, constant[b]] for b in table["block"].astype(str)[off]],
                hovertemplate="%{customdata[0]}: %{customdata[1]}; its class indices and saturation are not "
                              "shown<extra></extra>"))
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
    if chance is not None and len(models) > 1:
        notes.append(f"chance shown for {name_a} only")
    what = " and ".join(_METRIC_LABELS.get(m, m) for m in metrics)
    caption = chance_caption(chance)
    layout_title(fig, f"{what[0].upper() + what[1:]} by depth — {title_models}<br>{blocks_line}",
                 "; ".join(notes) + (f"<br>{caption}" if caption else ""), top=140 if caption else 120)
    fig.update_layout(height=480, legend={"title": {"text": "index — model"}})
    return fig


def chance_index_table(indices: pd.DataFrame, chance: pd.DataFrame | None,
                       names: Iterable[str] = ("eta2", "spread", "saturation", "cross_class_corr")) -> pd.DataFrame:
    """Per block, each index beside its chance level, permutation p and 95% interval, and "above chance" only when
    it is ("yes", "no", "cannot tell: <reason>", or "unknown" without a chance table). The values are the
    statistics' own (``indices``); the chance columns come from ``chance`` (matched by block)."""
    base = ["block", "stage", "n_images", "n_classes"]
    out = indices[[c for c in base if c in indices.columns]].reset_index(drop=True).copy()
    rows = None
    if chance is not None and not chance.empty and "block" in chance.columns:
        rows = chance.drop_duplicates("block").set_index("block").reindex(out["block"].astype(str))
    constant = constant_blocks(indices.reset_index(drop=True))

    def col(name: str) -> np.ndarray:
        if rows is None or name not in rows.columns:
            return np.full(len(out), np.nan)
        return pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float)

    reasons = (rows["cannot_tell"].fillna("").astype(str).to_numpy() if rows is not None
               and "cannot_tell" in rows.columns else np.full(len(out), ""))
    for name in names:
        value = indices[name].to_numpy(dtype=float) if name in indices.columns else col(name)
        level = col(f"{name}_chance")
        if name == "eta2" and not np.isfinite(level).any():
            level = col("eta2_chance_exact")
        lo, hi, p = col(f"{name}_ci_lo"), col(f"{name}_ci_hi"), col(f"{name}_p")
        above = col(f"{name}_above_chance")
        out[name] = value
        out[f"{name} chance"] = level
        out[f"{name} p"] = p
        out[f"{name} 95% interval"] = [f"{a:.3f}–{b:.3f}" if np.isfinite(a) and np.isfinite(b) else ""
                                       for a, b in zip(lo, hi, strict=True)]
        if name == "saturation":
            continue  # does not depend on classes: no chance level to be above
        words = []
        for i, block in enumerate(out["block"].astype(str)):
            if block in constant:
                words.append(f"cannot tell: {constant[block]}")
            elif rows is None or f"{name}_p" not in rows.columns:
                words.append("unknown (needs per-image gates)" if rows is not None else "unknown")
            elif reasons[i]:
                words.append(f"cannot tell: {reasons[i]}")
            elif not np.isfinite(p[i]):
                words.append("cannot tell: not computable")
            else:
                words.append("yes" if above[i] == 1 else "no")
        out[f"{name} above chance"] = words
    return out
