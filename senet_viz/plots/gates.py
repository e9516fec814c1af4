"""Gates per channel: the paper's Fig. 6 (mean gate per channel and class, one panel per block), Fig. 7 (one class
with ±1 std) and the class × channel heatmap.

Fig. 6 and Fig. 7 take optional intervals of the class means (e.g. a 95% bootstrap interval,
:func:`senet_viz.analysis.chance.class_mean_intervals`) and draw them as error bars on the class's mean line: a
band per class would hide the other classes' lines in Fig. 6, and Fig. 7's band is already the ±1 std."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from senet_viz.plots.common import (
    ALL_CLASS,
    ALL_COLOR,
    GATE_AXIS,
    MEAN_COLUMNS,
    PAPER,
    block_table,
    blocks_text,
    class_colors,
    class_counts,
    classes_text,
    layout_title,
    line_style,
    one_class_view,
    one_model,
    per_channel,
    positive_int,
    require_columns,
    resolve_blocks,
    resolve_classes,
    rgba,
)

ClassMeans = tuple[Sequence[str], Sequence[int] | np.ndarray, np.ndarray]
"""``(labels, counts, means (K, C))`` of one block: what ``GateStats.class_means`` returns."""
Interval = tuple[np.ndarray, np.ndarray]
"""``(lo, hi)`` of a class mean per channel: two arrays over the same channels as the means."""
DEFAULT_INTERVAL_NOTE = "interval of the class mean"

_MAX_HEATMAP_ROWS_HIGH = 60  # past this many classes the heatmap stops growing in height and drops the tick labels


def sample_channels(channel_ids: Sequence[int] | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` channel ids drawn uniformly without replacement with ``np.random.default_rng(seed)``, sorted.

    The generator is fresh for every call, so a block always gets the same channels for a given seed whatever
    other blocks are shown. All ids (sorted) when ``n`` is at least their number.
    """
    ids = np.sort(np.asarray(channel_ids).ravel())
    n = positive_int(n, "n_channels")
    if n >= ids.size:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))


def paper_preset_blocks(frame: pd.DataFrame, model: str | None = None) -> list[str]:
    """The blocks of the paper's Fig. 6: the last SE block of every stage plus every block of the last stage.

    Works on the ``channels`` or the ``indices`` frame; the result is in depth order (for SE-ResNet-50:
    SE_2_3, SE_3_4, SE_4_6, SE_5_1, SE_5_2, SE_5_3).
    """
    require_columns(frame, ("model", "block", "stage", "order"), "block")
    frame, _ = one_model(frame, model, "block")
    table = block_table(frame)
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
    require_columns(channels, MEAN_COLUMNS, "channels")
    frame, model = one_model(channels, model, "channels")
    blocks = resolve_blocks(frame, paper_preset_blocks(frame) if blocks is None else blocks)
    chosen = resolve_classes(frame, classes)
    has_all = ALL_CLASS in set(frame["class"])
    shown = [c for c in chosen if c != ALL_CLASS] + ([ALL_CLASS] if has_all else [])
    sub = frame[frame["block"].isin(blocks) & frame["class"].isin(shown)]
    counts = class_counts(sub)
    means, channel_ids = {}, {}
    for b in blocks:
        ids = np.sort(sub.loc[sub["block"] == b, "channel"].unique())
        rows = [per_channel(sub, b, c)["mean"].reindex(ids).to_numpy(dtype=float) for c in shown]
        means[b] = (shown, [counts.get(c, 0) for c in shown], np.array(rows).reshape(len(shown), len(ids)))
        channel_ids[b] = ids
    palette = set(map(str, frame["class"].unique())) | {str(c) for c in (all_classes or ())}
    return fig6_matrix(means, model=model, n_channels=n_channels, seed=seed, all_channels=all_channels,
                       all_classes=palette, channel_ids=channel_ids)


def fig6_matrix(
    means: Mapping[str, ClassMeans],
    *,
    model: str,
    n_channels: int = 50,
    seed: int = 0,
    all_channels: bool = False,
    all_classes: Iterable[str] | None = None,
    channel_ids: Mapping[str, Sequence[int] | np.ndarray] | None = None,
    intervals: Mapping[str, Mapping[str, Interval]] | None = None,
    interval_note: str = DEFAULT_INTERVAL_NOTE,
) -> go.Figure:
    """:func:`fig6` from the class x channel means of each block, without a long frame: ``means`` maps each block
    (panels in this order, e.g. depth order) to ``(labels, counts, means)`` as
    ``stats.class_means(block, classes, include_all=True)`` gives them (``"all"``, the dashed reference, drawn
    last). ``channel_ids``: a block's column indices when the matrix holds only some channels (default 0..C-1).
    A class missing from a block is drawn as gaps there; its count is its largest over the blocks.

    ``intervals``: block -> class label -> ``(lo, hi)``, each over the same columns as the block's means matrix;
    drawn as error bars on that class's line (a NaN channel, or a class or block not given, gets none), and
    ``interval_note`` (e.g. "95% bootstrap interval of the class mean (200 resamples, seed 0)") is named in the
    subtitle when any is drawn."""
    if not means:
        raise ValueError("no block chosen")
    if not all_channels:
        positive_int(n_channels, "n_channels")
    counts: dict[str, int] = {}
    for block, (labels, block_counts, matrix) in means.items():
        z = np.asarray(matrix)
        if z.ndim != 2 or z.shape[0] != len(labels) or len(block_counts) != len(labels):
            raise ValueError(f"{block}: means must be (classes, channels) with one row and one count per class "
                             f"({len(labels)}), got shape {z.shape} and {len(block_counts)} counts")
        for label, n in zip(labels, block_counts, strict=True):
            counts[str(label)] = max(counts.get(str(label), 0), int(n))
    shown = [c for c in counts if c != ALL_CLASS] + ([ALL_CLASS] if ALL_CLASS in counts else [])
    colors = class_colors(set(shown) | {str(c) for c in (all_classes or ())})
    blocks = list(means)

    n_cols = min(3, len(blocks))
    n_rows = math.ceil(len(blocks) / n_cols)
    ids_by_block = {b: np.arange(np.shape(means[b][2])[1]) if channel_ids is None or b not in channel_ids
                    else np.asarray(channel_ids[b]) for b in blocks}
    picked_by_block = {b: ids if all_channels else sample_channels(ids, n_channels, seed)
                       for b, ids in ids_by_block.items()}
    titles = [f"{b} · {len(picked_by_block[b])} of {len(ids_by_block[b])} channels" for b in blocks]
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=titles,
        horizontal_spacing=0.06,
        vertical_spacing=0.16 if n_rows > 1 else 0.1,
    )
    drawn_intervals = False
    for i, block in enumerate(blocks):
        row, col = i // n_cols + 1, i % n_cols + 1
        picked = picked_by_block[block]
        columns = np.searchsorted(ids_by_block[block], picked) if channel_ids is not None else picked
        row_of = {str(c): r for r, c in enumerate(means[block][0])}
        matrix = np.asarray(means[block][2], dtype=float)
        block_intervals = (intervals or {}).get(block, {})
        for cls in shown:
            y = matrix[row_of[cls], columns] if cls in row_of else np.full(len(picked), np.nan)
            bars = _error_bars(y, block_intervals.get(cls), columns, matrix.shape[1], colors[cls], f"{block} {cls}")
            drawn_intervals |= bars is not None
            fig.add_trace(
                go.Scatter(
                    x=picked,
                    y=y,
                    mode="lines" if len(picked) > 60 else "lines+markers",
                    marker={"size": 4},
                    line=line_style(cls, colors),
                    name=f"{cls} (n={counts.get(cls, 0)})",
                    legendgroup=cls,
                    showlegend=i == 0,
                    meta={"block": block, "class": cls},
                    hovertemplate=f"{block}<br>{cls}<br>channel %{{x}}<br>mean s = %{{y:.3f}}<extra></extra>",
                    error_y=bars,
                ),
                row=row,
                col=col,
            )
    sampled = "all channels" if all_channels else f"{n_channels} channels per block sampled uniformly (seed {seed})"
    if drawn_intervals:
        sampled += f"; error bars: {interval_note}"
    fig.update_xaxes(title_text="channel index", row=n_rows)
    fig.update_yaxes(range=[-0.02, 1.02])
    for r in range(1, n_rows + 1):
        fig.update_yaxes(title_text=GATE_AXIS, row=r, col=1)
    layout_title(
        fig,
        f"Mean excitation per channel — {model}: {blocks_text(blocks)}<br>{classes_text(shown, counts)}",
        f"{sampled}; dashed dark-grey line = mean over all images. cf. {PAPER}, Fig. 6",
        top=160,
    )
    fig.update_layout(height=max(420, 300 * n_rows + 140))
    return fig


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
    interval: Interval | None = None,
    interval_note: str = DEFAULT_INTERVAL_NOTE,
) -> go.Figure:
    """One class's mean gate per channel with a filled ±1 std band, and the all-class mean for reference.

    Channels are sampled as in :func:`fig6`. The band is ``mean ± std`` as stored (not clipped to [0, 1]): the std
    comes from the streamed M2, so no histogram is needed (``stats.frame([block], [cls], hist=False)``).
    Traces carry ``meta`` = ``"upper"``, ``"lower"``, ``"mean"`` and ``"all"``. A class with one image has no
    within-class std: the band is left out (no ``"upper"`` / ``"lower"`` traces) and the subtitle says why.

    ``interval``: ``(lo, hi)`` of the class mean, each indexed by channel index (one value per channel of the
    block); drawn as error bars on the ``"mean"`` trace (none where NaN, e.g. a class with one image) and named in
    the subtitle by ``interval_note``.
    """
    model, block, cls, colors, shown, sub, counts = one_class_view(channels, model, block, cls, all_classes)
    ids = np.sort(sub["channel"].unique())
    picked = ids if all_channels else sample_channels(ids, n_channels, seed)
    per = per_channel(sub, block, cls).reindex(picked)
    mean = per["mean"].to_numpy(dtype=float)
    std = per["std"].to_numpy(dtype=float)
    color = colors[cls]
    label = f"{cls} (n={counts.get(cls, 0)})"
    has_band = counts.get(cls, 0) >= 2
    n_block = len(interval[0]) if interval is not None else 0
    if interval is not None and ids.size and n_block <= int(ids.max()):
        raise ValueError(f"interval: one value per channel of {block} (at least {int(ids.max()) + 1}), got {n_block}")
    bars = _error_bars(mean, interval, picked, n_block, color, cls)

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
                fillcolor=rgba(color if cls != ALL_CLASS else ALL_COLOR, 0.22),
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
            line=line_style(cls, colors, width=2),
            name=f"{label} mean",
            legendgroup=cls,
            meta="mean",
            customdata=np.column_stack([std]),
            hovertemplate=f"{cls}<br>channel %{{x}}<br>mean s = %{{y:.3f}}<br>std = %{{customdata[0]:.3f}}"
            "<extra></extra>",
            error_y=bars,
        )
    )
    if len(shown) > 1:
        ref = per_channel(sub, block, ALL_CLASS)["mean"].reindex(picked).to_numpy(dtype=float)
        fig.add_trace(
            go.Scatter(
                x=picked,
                y=ref,
                mode="lines",
                line=line_style(ALL_CLASS, colors),
                name=f"all images (n={counts.get(ALL_CLASS, 0)}) mean",
                legendgroup=ALL_CLASS,
                meta="all",
                hovertemplate="all images<br>channel %{x}<br>mean s = %{y:.3f}<extra></extra>",
            )
        )
    lo = np.nanmin(np.concatenate([[0.0], mean - std]))
    hi = np.nanmax(np.concatenate([[1.0], mean + std]))
    if bars is not None:
        lo = min(lo, float(np.nanmin(mean - np.asarray(bars["arrayminus"], dtype=float))))
        hi = max(hi, float(np.nanmax(mean + np.asarray(bars["array"], dtype=float))))
    sampled = "all channels" if all_channels else f"{len(picked)} of {len(ids)} channels sampled (seed {seed})"
    fig.update_xaxes(title_text="channel index")
    fig.update_yaxes(title_text=GATE_AXIS, range=[lo - 0.02, hi + 0.02])
    band = ("mean ± 1 std over the class's images" if has_band else
            f"mean only: the ±1 std band needs ≥ 2 images and class {cls} has {counts.get(cls, 0)}")
    if bars is not None:
        band += f"; error bars: {interval_note}"
    layout_title(
        fig,
        f"Excitation of class {label} — {model}: {block}<br>{classes_text(shown, counts)}",
        f"{band}, {sampled}; dashed dark-grey line = all images. cf. {PAPER}, Fig. 7",
    )
    fig.update_layout(height=460)
    return fig


def _error_bars(y: np.ndarray, interval: Interval | None, columns: np.ndarray, width: int, color: str,
                what: str) -> dict | None:
    """Plotly ``error_y`` of the points ``y`` (the ``columns`` of an interval over ``width`` channels), or None when
    there is no interval or it is NaN at every point."""
    if interval is None:
        return None
    lo, hi = (np.asarray(a, dtype=float).ravel() for a in interval)
    if lo.shape != hi.shape or lo.size != width:
        raise ValueError(f"{what}: the interval needs lo and hi over the {width} channels, got {lo.size} and {hi.size}")
    lo, hi = lo[columns], hi[columns]
    if not np.isfinite(lo).any():
        return None
    # error bars are distances from the mean; a NaN distance draws no bar at that channel
    return {"type": "data", "symmetric": False, "array": np.clip(hi - y, 0.0, None),
            "arrayminus": np.clip(y - lo, 0.0, None), "color": color, "thickness": 1, "width": 2}


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
    require_columns(channels, MEAN_COLUMNS, "channels")
    frame, model = one_model(channels, model, "channels")
    (block,) = resolve_blocks(frame, [block])
    shown = resolve_classes(frame, classes)
    sub = frame[(frame["block"] == block) & frame["class"].isin(shown)]
    counts = class_counts(sub)
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
        max_channels = positive_int(max_channels, "max_channels")
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
    layout_title(
        fig,
        f"Mean gate per class and channel — {model}: {block}<br>{classes_text(shown, count_of)}",
        f"colour = mean of s over the class's images (fixed scale 0–1). "
        f"cf. {PAPER}, Fig. 6 (all channels of one panel)",
    )
    rows = min(len(shown), _MAX_HEATMAP_ROWS_HIGH)
    fig.update_layout(height=max(320, 40 * rows + 200), legend={"title": {"text": ""}})
    return fig
