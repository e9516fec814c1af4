"""What every figure module shares: the all-class conventions, the class colours, the checks of the input frames
(unknown block / class / model names raise ``ValueError`` listing the valid ones) and the title layout."""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

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

INDEX_COLUMNS = ("model", "block", "stage", "order")

_MAX_TITLE_CLASSES = 8

_MAX_TITLE_BLOCKS = 6


def _saturated(color: str) -> bool:
    r, g, b = (int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    _, s, v = colorsys.rgb_to_hsv(r, g, b)
    return s >= 0.45 and v >= 0.3

# Plotly's default palette, then Dark24 without its greys and near-greys (they would be confused with "all").
PALETTE: tuple[str, ...] = tuple(
    dict.fromkeys(c.upper() for c in (*qualitative.Plotly, *qualitative.Dark24) if _saturated(c))
)


def class_colors(classes: Iterable[str]) -> dict[str, str]:
    """Map class names to colours, deterministically.

    Classes are sorted by name and take the palette in that order (cycling after ``len(PALETTE)`` classes), so
    the same set of classes always gets the same colours; the figures pass every class of the frame (not only the
    shown ones), so a class keeps its colour when the selection changes. ``"all"`` is always :data:`ALL_COLOR`
    and is always in the result.
    """
    names = sorted({str(c) for c in classes} - {ALL_CLASS})
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    colors[ALL_CLASS] = ALL_COLOR
    return colors


def frame_colors(frame: pd.DataFrame, all_classes: Iterable[str] | None) -> dict[str, str]:
    """Colours from every class of the statistics when given (bounded frames hold only some), else the frame's."""
    names = set(map(str, frame["class"].unique()))
    if all_classes is not None:
        names |= {str(c) for c in all_classes}
    return class_colors(names)


def rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def line_style(cls: str, colors: dict[str, str], width: float = 1.6) -> dict[str, Any]:
    if cls == ALL_CLASS:
        return {"color": ALL_COLOR, "dash": "dash", "width": width + 0.4}
    return {"color": colors[cls], "width": width}


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{what} frame is empty")


def one_model(frame: pd.DataFrame, model: str | None, what: str) -> tuple[pd.DataFrame, str]:
    """Rows of one model: ``model`` if given, else the frame's only model."""
    models = sorted(map(str, frame["model"].unique()))
    if model is None:
        if len(models) != 1:
            raise ValueError(f"{what} frame holds {len(models)} models; pass model= one of {models}")
        model = models[0]
    elif model not in models:
        raise ValueError(f"unknown model {model!r}; valid models: {models}")
    return frame[frame["model"] == model], model


def block_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per block (block, stage, order), in depth order."""
    table = frame[["block", "stage", "order"]].drop_duplicates("block")
    return table.sort_values(["order", "block"], kind="stable").reset_index(drop=True)


def resolve_blocks(frame: pd.DataFrame, blocks: str | Iterable[str] | None) -> list[str]:
    """Validate block names; return them unique and in depth order (all blocks when ``None``)."""
    table = block_table(frame)
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


def real_classes(frame: pd.DataFrame) -> list[str]:
    """Class names without ``"all"``, ordered by class_index (then name)."""
    cols = ["class", "class_index"] if "class_index" in frame.columns else ["class"]
    table = frame[cols].drop_duplicates("class")
    table = table[table["class"] != ALL_CLASS]
    table = table.sort_values(cols[::-1], kind="stable")
    return [str(c) for c in table["class"]]


def resolve_classes(frame: pd.DataFrame, classes: str | Iterable[str] | None) -> list[str]:
    """Validate class names (``"all"`` allowed when present); default: every real class."""
    present = set(map(str, frame["class"].unique()))
    valid = real_classes(frame) + ([ALL_CLASS] if ALL_CLASS in present else [])
    if classes is None:
        return real_classes(frame)
    wanted = [classes] if isinstance(classes, str) else [str(c) for c in classes]
    if not wanted:
        raise ValueError(f"no class chosen; valid classes: {valid}")
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; valid classes: {valid}")
    return list(dict.fromkeys(wanted))


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def class_counts(sub: pd.DataFrame) -> dict[str, int]:
    """Images per class (the largest ``count`` over the class's rows)."""
    return {str(k): int(v) for k, v in sub.groupby("class")["count"].max().items()}


def per_channel(sub: pd.DataFrame, block: str, cls: str) -> pd.DataFrame:
    rows = sub[(sub["block"] == block) & (sub["class"] == cls)]
    if rows["channel"].duplicated().any():
        raise ValueError(f"duplicate channel rows for block {block!r}, class {cls!r}")
    return rows.set_index("channel").sort_index()


def classes_text(classes: Sequence[str], counts: dict[str, int]) -> str:
    parts = [f"{c} (n={counts.get(c, 0)})" for c in classes]
    if len(parts) > _MAX_TITLE_CLASSES:
        parts = parts[:_MAX_TITLE_CLASSES] + [f"+{len(parts) - _MAX_TITLE_CLASSES} more classes"]
    return ", ".join(parts)


def blocks_text(blocks: Sequence[str]) -> str:
    if len(blocks) > _MAX_TITLE_BLOCKS:
        return f"{blocks[0]} … {blocks[-1]} ({len(blocks)} SE blocks)"
    return ", ".join(blocks)


def layout_title(fig: go.Figure, text: str, subtitle: str, top: int = 120) -> None:
    # Where plotly_white is plotly's default template already (the app sets it), a new figure carries it: assigning
    # it again would validate and copy the whole template, tens of milliseconds per figure.
    white = {} if pio.templates.default == "plotly_white" else {"template": "plotly_white"}
    fig.update_layout(
        title={"text": text, "x": 0.01, "xanchor": "left", "font": {"size": 16}, "subtitle": {"text": subtitle}},
        margin={"t": top, "l": 70, "r": 30, "b": 60},
        legend={"title": {"text": "class"}},
        **white,
    )


def one_class_view(channels: pd.DataFrame, model: str | None, block: str, cls: str,
                   all_classes: Iterable[str] | None = None, columns: Sequence[str] = MEAN_COLUMNS
                   ) -> tuple[str, str, str, dict[str, str], list[str], pd.DataFrame, dict[str, int]]:
    """Shared set-up of the one-class figures: ``(model, block, cls, colours, shown classes, rows, counts)``, the
    rows of ``block`` for ``cls`` and the all-class reference."""
    require_columns(channels, columns, "channels")
    frame, model = one_model(channels, model, "channels")
    (block,) = resolve_blocks(frame, [block])
    (cls,) = resolve_classes(frame, [cls])
    colors = frame_colors(frame, all_classes)
    shown = [cls] + ([ALL_CLASS] if cls != ALL_CLASS and ALL_CLASS in set(frame["class"]) else [])
    sub = frame[(frame["block"] == block) & frame["class"].isin(shown)]
    return model, block, cls, colors, shown, sub, class_counts(sub)
