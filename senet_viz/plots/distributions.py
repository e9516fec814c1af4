"""Distributions of gate values: per block and class (box or violin, from histograms), and one image's gates as
percentiles of its class's per-channel distributions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from senet_viz.analysis.stats_views import hist_quantile
from senet_viz.plots.common import (
    ALL_CLASS,
    BLOCK_COLUMNS,
    CHANNEL_COLUMNS,
    PAPER,
    block_table,
    blocks_text,
    class_counts,
    classes_text,
    frame_colors,
    layout_title,
    line_style,
    one_class_view,
    one_model,
    per_channel,
    real_classes,
    require_columns,
    resolve_blocks,
    resolve_classes,
    rgba,
)


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


def _block_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """Quartiles, Tukey whiskers (clipped to observed min/max), mean and pooled histogram of one class-block."""
    hist = _stack_hist(rows).sum(axis=0)
    q1, med, q3 = hist_quantile(hist, (0.25, 0.5, 0.75))
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
    require_columns(channels, CHANNEL_COLUMNS if "channel" in channels.columns else BLOCK_COLUMNS, "channels")
    frame, model = one_model(channels, model, "channels")
    table = block_table(frame)
    stages = sorted(int(s) for s in table["stage"].unique())
    if stage is not None and stage not in stages:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {stages}")
    if blocks is None:
        blocks = list(table["block"] if stage is None else table.loc[table["stage"] == stage, "block"])
    else:
        blocks = resolve_blocks(frame, blocks)
        if stage is not None:
            stage_of = dict(zip(table["block"], table["stage"], strict=True))
            outside = [b for b in blocks if stage_of[b] != stage]
            if outside:
                valid = list(table.loc[table["stage"] == stage, "block"])
                raise ValueError(f"block(s) {outside} are not in stage {stage}; its blocks: {valid}")
    if classes is None:
        shown = real_classes(frame) + ([ALL_CLASS] if ALL_CLASS in set(frame["class"]) else [])
    else:
        shown = resolve_classes(frame, classes)
    colors = frame_colors(frame, all_classes)
    sub = frame[frame["block"].isin(blocks) & frame["class"].isin(shown)]
    counts = class_counts(sub)
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
                    fillcolor=rgba(color, 0.35),
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
                    fillcolor=rgba(color, 0.45),
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
    where = f"stage {stage} ({blocks_text(blocks)})" if stage is not None else blocks_text(blocks)
    layout_title(
        fig,
        f"Distribution of gate values per SE block — {model}: {where}"
        f"<br>{classes_text(shown, counts)}",
        f"{how}. cf. {PAPER}, Fig. 6, 7",
    )
    fig.update_layout(height=500)
    return fig


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
    model, block, cls, colors, shown, sub, counts = one_class_view(channels, model, block, cls, all_classes,
                                                                    CHANNEL_COLUMNS)
    per = per_channel(sub, block, cls)
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
    hist = _stack_hist(per if within == cls else per_channel(sub, block, ALL_CLASS).reindex(per.index))
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
            line={"color": rgba(color, 0.5), "width": 1},
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
        go.Scatter(x=x, y=mean, mode="lines", line=line_style(cls, colors, 2), name=f"{label} mean", meta="class mean",
                   legendgroup=cls, hovertemplate=f"{cls} mean<br>channel %{{x}}<br>s = %{{y:.3f}}<extra></extra>"),
        row=2,
        col=1,
    )
    if len(shown) > 1:
        ref = per_channel(sub, block, ALL_CLASS)["mean"].reindex(x).to_numpy(dtype=float)
        fig.add_trace(
            go.Scatter(x=x, y=ref, mode="lines", line=line_style(ALL_CLASS, colors),
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
    layout_title(
        fig,
        f"Image {image_name} against class {label} — {model}: {block}<br>{classes_text(shown, counts)}",
        f"{one}percentile = CDF of {whose} per-channel histogram ({n_bins} bins over [0, 1], linear within a "
        f"bin); dashed 50, dotted 5/95; dashed dark-grey line = all images. cf. {PAPER}, Fig. 7",
        top=160,
    )
    fig.update_layout(height=620, legend={"title": {"text": ""}})
    return fig
